"""The client against 67 manifests real registries served, byte for byte (`../shared/real-manifests`).

Every manifest a real `docker-registry` accepts is pushed to one and observed there; every manifest is also served
by a small static registry on loopback, once with `Docker-Content-Digest` and once without, so the digest is
checked on both paths. The digest must always be sha256 of exactly the served bytes, indexes must list the
platforms a pull would see, and schema 1 must be unverifiable with the advice to re-push.
"""

from __future__ import annotations

import csv
import json
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar, override

import pytest

from audit.adapters.registry import RegistryClient, RegistrySettings
from audit.adapters.registry.manifest import SCHEMA1_REASON
from audit.models import SCHEMA1_MEDIA_TYPES, Digest, ImageRef, LiveStatus, MediaType
from tests.support.local_registry import LocalRegistry
from tests.support.pusher import PushError

pytestmark = pytest.mark.integration

CORPUS = Path(__file__).resolve().parents[2].parent / "shared" / "real-manifests"


@dataclass(frozen=True)
class Entry:
    name: str
    body: bytes
    content_type: str
    digest: Digest

    @property
    def schema1(self) -> bool:
        return self.content_type in SCHEMA1_MEDIA_TYPES

    @property
    def tag(self) -> str:
        return "c-" + self.name.replace(".", "-")[:120]


def _load() -> list[Entry]:
    if not CORPUS.is_dir():
        return []
    with (CORPUS / "MANIFEST.tsv").open(newline="") as table:
        rows = list(csv.DictReader(table, delimiter="\t"))
    entries = []
    for row in rows:
        body = (CORPUS / row["file"]).read_bytes()
        entries.append(Entry(row["name"], body, row["content_type"], Digest.of(body)))
    return entries


ENTRIES = _load()
IDS = [entry.name for entry in ENTRIES]


def test_the_corpus_has_all_67_manifests() -> None:
    assert len(ENTRIES) == 67, f"expected the real-manifests corpus at {CORPUS}"
    assert sum(entry.schema1 for entry in ENTRIES) == 6


# --- a real docker-registry -----------------------------------------------------------------------------------


def _blob(digest: str) -> bytes | None:
    path = CORPUS / "blobs" / "sha256" / digest.removeprefix("sha256:")
    return path.read_bytes() if digest.startswith("sha256:") and path.is_file() else None


def _push_tree(registry: LocalRegistry, repository: str, body: bytes, media_type: str, reference: str) -> None:
    """Push what the manifest refers to (blobs, child manifests) from the corpus, then the manifest itself."""
    document = json.loads(body)
    descriptors = [document.get("config"), *(document.get("layers") or [])]
    for descriptor in descriptors:
        if isinstance(descriptor, dict) and (content := _blob(str(descriptor.get("digest")))) is not None:
            registry.pusher.push_blob(repository, content)
    for child in document.get("manifests") or []:
        digest = str(child.get("digest"))
        content = _blob(digest) or next((e.body for e in ENTRIES if str(e.digest) == digest), None)
        if content is not None:
            _push_tree(registry, repository, content, str(child.get("mediaType")), digest)
    registry.pusher.push_manifest(repository, reference, body, media_type)


@pytest.fixture(scope="module")
def pushed(registry: LocalRegistry) -> dict[str, Entry]:
    """The corpus entries the real registry accepted, pushed under one tag each."""
    accepted: dict[str, Entry] = {}
    for entry in ENTRIES:
        if entry.schema1:
            continue
        try:
            _push_tree(registry, "corpus/real", entry.body, entry.content_type, entry.tag)
        except PushError:
            continue  # distribution 2.8 refuses manifests whose blobs or children the corpus does not hold
        accepted[entry.name] = entry
    return accepted


@pytest.fixture
async def client(registry: LocalRegistry) -> AsyncIterator[RegistryClient]:
    async with RegistryClient(RegistrySettings(insecure_registries=frozenset({registry.host}))) as client:
        yield client


async def test_a_real_registry_serves_each_accepted_manifest_under_its_own_digest(
    registry: LocalRegistry, pushed: dict[str, Entry], client: RegistryClient
) -> None:
    assert len(pushed) >= 40  # 41 here; fewer means the push helper lost its way, not the client

    for entry in pushed.values():
        reference = ImageRef.parse(registry.reference("corpus/real", entry.tag))
        observation = await client.observe(reference, expected=entry.digest, platforms=True)
        assert observation.status is LiveStatus.FOUND, (entry.name, observation.reason)
        assert observation.live_digest == entry.digest, entry.name
        is_index = MediaType(entry.content_type).is_index
        assert (observation.platforms is not None) == is_index, entry.name


# --- a static registry: with and without Docker-Content-Digest ----------------------------------------------


class _Static(BaseHTTPRequestHandler):
    """`/v2/<with|without>/corpus/manifests/<tag>` from the corpus, bytes as stored, nothing else."""

    by_tag: ClassVar[dict[str, Entry]] = {}

    def _answer(self, body: bool) -> None:
        parts = self.path.split("/")
        entry = self.by_tag.get(parts[-1]) if len(parts) == 6 and parts[4] == "manifests" else None
        if self.path == "/v2/":
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if entry is None:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Type", entry.content_type)
        self.send_header("Content-Length", str(len(entry.body)))
        if parts[2] == "with":
            self.send_header("Docker-Content-Digest", str(entry.digest))
        self.end_headers()
        if body:
            self.wfile.write(entry.body)

    def do_HEAD(self) -> None:
        self._answer(body=False)

    def do_GET(self) -> None:
        self._answer(body=True)

    @override
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def static_registry() -> Iterator[str]:
    _Static.by_tag = {entry.tag: entry for entry in ENTRIES}
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Static)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("header", ["with", "without"])
@pytest.mark.parametrize("entry", ENTRIES, ids=IDS)
async def test_every_manifest_digest_is_sha256_of_the_served_bytes(
    static_registry: str, entry: Entry, header: str
) -> None:
    reference = ImageRef.parse(f"{static_registry}/{header}/corpus:{entry.tag}")
    async with RegistryClient(RegistrySettings(insecure_registries=frozenset({static_registry}))) as client:
        observation = await client.observe(reference, platforms=True)

    if entry.schema1:
        assert observation.status is LiveStatus.UNVERIFIABLE
        assert observation.reason == SCHEMA1_REASON
        return
    assert observation.status is LiveStatus.FOUND, observation.reason
    assert observation.live_digest == entry.digest
    assert observation.media_type == entry.content_type
