"""Fills a registry with N repositories x M tags of all four manifest kinds, tampers a few, writes trust.

Seeding reuses blobs: each repository gets one base image per kind (config, layer, children), and every tag
is a copy of its kind's manifest with a distinct annotation, so each tag has its own digest for one PUT.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, get_args

from audit.adapters.dynamodb_store import BATCH_LIMIT, trusted_image_to_item
from audit.models import Digest, MediaType, Verdict
from audit.records import TrustedImage
from tests.support.local_registry import LocalRegistry
from tests.support.pusher import ImageKind, PushedImage, Pusher

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient
    from mypy_boto3_dynamodb.type_defs import WriteRequestTypeDef

KINDS: tuple[ImageKind, ...] = get_args(ImageKind.__value__)
ANNOTATION = "org.digest-audit.bench.tag"
SEED_WORKERS = 8


@dataclass(frozen=True, slots=True)
class BenchImage:
    """One seeded tag: what was recorded as trusted and what the auditor should conclude about it."""

    repository: str
    tag: str
    kind: ImageKind
    trusted_digest: str
    media_type: MediaType
    expected: Verdict

    def reference(self, host: str, *, pinned: bool = True) -> str:
        text = f"{host}/{self.repository}:{self.tag}"
        return f"{text}@{self.trusted_digest}" if pinned else text


@dataclass(frozen=True)
class Workload:
    images: tuple[BenchImage, ...]
    repositories: int
    tags_per_repository: int
    seed_seconds: float

    @property
    def size(self) -> int:
        return len(self.images)

    def expected_verdicts(self) -> dict[tuple[str, str], Verdict]:
        return {(image.repository, image.tag): image.expected for image in self.images}

    def expected_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for image in self.images:
            counts[image.expected.value] = counts.get(image.expected.value, 0) + 1
        return counts


def repository_name(index: int) -> str:
    return f"bench/app-{index:04d}"


def tag_name(index: int) -> str:
    return f"v{index:04d}"


def _annotated(base: PushedImage, label: str) -> bytes:
    document = json.loads(base.manifest)
    document["annotations"] = {ANNOTATION: label}
    return json.dumps(document, indent=3).encode("utf-8")


class _Pushers:
    """One Pusher per seeding thread (each owns an httpx.Client); all closed with the registry."""

    def __init__(self, registry: LocalRegistry) -> None:
        self._registry = registry
        self._local = threading.local()
        self._lock = threading.Lock()

    def get(self) -> Pusher:
        pusher: Pusher | None = getattr(self._local, "pusher", None)
        if pusher is None:
            with self._lock:  # new_pusher appends to a shared list
                pusher = self._registry.new_pusher()
            self._local.pusher = pusher
        return pusher


@dataclass(frozen=True, slots=True)
class _Plan:
    repository: str
    tags: int
    tampered: frozenset[int]  # tag indices re-pushed with new bytes after being trusted
    deleted: frozenset[int]  # tag indices whose manifest is deleted after being trusted


def _seed_repository(pushers: _Pushers, plan: _Plan) -> list[BenchImage]:
    pusher = pushers.get()
    repository = plan.repository
    bases = {kind: pusher.push_image(repository, None, kind, seed=f"{repository}/{kind}") for kind in KINDS}
    images: list[BenchImage] = []
    for index in range(plan.tags):
        tag = tag_name(index)
        kind = KINDS[index % len(KINDS)]
        base = bases[kind]
        digest = pusher.push_manifest(repository, tag, _annotated(base, f"{repository}:{tag}"), base.media_type)
        expected = Verdict.MATCH
        if index in plan.tampered:  # what a moved tag looks like: same kind, new bytes, new digest
            pusher.push_manifest(repository, tag, _annotated(base, f"{repository}:{tag} tampered"), base.media_type)
            expected = Verdict.DRIFT
        elif index in plan.deleted:
            pusher.delete_manifest(repository, digest)
            expected = Verdict.MISSING
        images.append(BenchImage(repository, tag, kind, digest, base.media_type, expected))
    return images


def _plans(repositories: int, tags: int, tamper: int, delete: int) -> list[_Plan]:
    """Tampered and deleted tags spread over repositories and (through the tag index) over kinds."""
    tampered: set[tuple[int, int]] = set()
    deleted: set[tuple[int, int]] = set()
    for number in range(tamper):
        tampered.add((number * repositories // tamper, number % tags))
    for number in range(delete):
        spot = ((number * repositories // delete + 1) % repositories, tags - 1 - (number % tags))
        if spot not in tampered:
            deleted.add(spot)
    return [
        _Plan(
            repository_name(repo),
            tags,
            frozenset(tag for r, tag in tampered if r == repo),
            frozenset(tag for r, tag in deleted if r == repo),
        )
        for repo in range(repositories)
    ]


def seed_registry(registry: LocalRegistry, repositories: int, tags: int, *, tamper: int, delete: int) -> Workload:
    """Push everything (trusted digests are the first pushes), then tamper and delete a known few tags."""
    started = time.perf_counter()
    pushers = _Pushers(registry)
    with ThreadPoolExecutor(SEED_WORKERS) as pool:
        seeded = list(
            pool.map(lambda plan: _seed_repository(pushers, plan), _plans(repositories, tags, tamper, delete))
        )
    images = tuple(image for batch in seeded for image in batch)
    return Workload(images, repositories, tags, time.perf_counter() - started)


# --- trust -------------------------------------------------------------------------------------------------


def trusted_records(workload: Workload, host: str, *, recorded_at: datetime | None = None) -> list[TrustedImage]:
    moment = recorded_at or datetime.now(UTC)
    return [
        TrustedImage(
            registry=host,
            repository=image.repository,
            tag=image.tag,
            digest=Digest.parse(image.trusted_digest),
            media_type=image.media_type.value,
            source="bench",
            recorded_at=moment,
        )
        for image in workload.images
    ]


def write_trust_file(path: Path, records: Iterable[TrustedImage]) -> Path:
    """The JSON export format, which is a valid `--trust-file` (written directly: seeding is not measured)."""
    document = {
        "schema_version": 1,
        "trusted": [record.model_dump(mode="json", exclude_none=True) for record in records],
        "history": [],
    }
    path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    return path


def write_references(path: Path, workload: Workload, host: str) -> Path:
    path.write_text("".join(f"{image.reference(host)}\n" for image in workload.images), encoding="utf-8")
    return path


def seed_dynamodb(client: DynamoDBClient, table: str, records: Sequence[TrustedImage]) -> None:
    """Current trust items as the store writes them (revision 1), in BatchWriteItem chunks."""
    requests: list[WriteRequestTypeDef] = []
    for record in records:
        item = trusted_image_to_item(record)
        item["revision"] = {"N": "1"}
        requests.append({"PutRequest": {"Item": item}})
    for start in range(0, len(requests), BATCH_LIMIT):
        pending = requests[start : start + BATCH_LIMIT]
        while pending:
            response = client.batch_write_item(RequestItems={table: pending})
            pending = list(response.get("UnprocessedItems", {}).get(table, []))  # type: ignore[arg-type]
