"""The record use case over in-memory ports: evidence kept, the record rules applied, pypi: releases keyed by file."""

from __future__ import annotations

import pytest

from audit.app.record import (
    Evidence,
    Provenance,
    manifest_evidence,
    record_images,
    record_release,
    resolve_image,
    resolve_release,
)
from audit.errors import PackageIndexError, RegistryError, TrustConflictError
from audit.models import Digest, ImageRef, MediaType, MovingMode, RecordOutcome
from audit.packages import IndexFile, PackageSpec, ProjectPage, parse_filename
from tests.support.memory_ports import MemoryManifest, MemoryManifests, MemoryTrustStore
from tests.support.service_world import ScriptedRegistry
from tests.support.store_builders import digest, trusted, watch

CI = Provenance(source="https://ci.example.com/run/7", recorded_by="ci-bot", commit="0123abc")
APP = "ghcr.io/org/app"


def pinned(tag: str, char: str) -> ImageRef:
    return ImageRef.parse(f"{APP}:{tag}@{digest(char)}")


def record(store: MemoryTrustStore, *refs: ImageRef, provenance: Provenance = CI) -> list[tuple[RecordOutcome, str]]:
    evidence = [Evidence()] * len(refs)
    return [(r.outcome, r.pinned.familiar) for r in record_images(store, list(refs), evidence, provenance)]


def test_a_new_tag_is_created_with_its_provenance_and_the_same_digest_again_is_unchanged() -> None:
    store = MemoryTrustStore()
    assert record(store, pinned("1.0", "a")) == [(RecordOutcome.CREATED, f"{APP}:1.0@{digest('a')}")]
    assert record(store, pinned("1.0", "a")) == [(RecordOutcome.UNCHANGED, f"{APP}:1.0@{digest('a')}")]
    item = store.trusted[(APP, "1.0")]
    assert (item.source, item.commit, item.recorded_by) == ("https://ci.example.com/run/7", "0123abc", "ci-bot")
    assert store.writes == [f"record {APP}:1.0"]


def test_a_pinned_tag_with_another_digest_is_refused_and_nothing_changes() -> None:
    store = MemoryTrustStore(trusted("1.0", "a"))
    with pytest.raises(TrustConflictError):
        record(store, pinned("1.0", "b"))
    assert store.trusted[(APP, "1.0")].digest == digest("a")
    assert store.writes == []


def test_a_replace_with_a_reason_keeps_the_old_record_as_history() -> None:
    store = MemoryTrustStore(trusted("1.0", "a"))
    replacing = Provenance(source=CI.source, recorded_by="ops", replace=True, reason="rebuilt, TICKET-9")
    assert record(store, pinned("1.0", "b"), provenance=replacing)[0][0] is RecordOutcome.REPLACED
    assert store.trusted[(APP, "1.0")].reason == "rebuilt, TICKET-9"
    assert [old.digest for old in store.history(APP, "1.0")] == [digest("a")]


def test_a_tag_declared_moving_appends() -> None:
    store = MemoryTrustStore(trusted("latest", "a"))
    store.put_watch_settings(watch(moving={"latest": MovingMode.LATEST_RECORDED}))
    assert record(store, pinned("latest", "b"))[0][0] is RecordOutcome.APPENDED


def test_records_are_written_one_at_a_time_so_a_conflict_stops_at_its_reference() -> None:
    store = MemoryTrustStore(trusted("2.0", "a"))
    written = []
    with pytest.raises(TrustConflictError):
        for result in record_images(store, [pinned("1.0", "c"), pinned("2.0", "c")], [Evidence()] * 2, CI):
            written.append(result.outcome)
    assert written == [RecordOutcome.CREATED]
    assert (APP, "1.0") in store.trusted


async def test_the_evidence_of_an_index_keeps_its_platforms_and_a_single_manifest_none() -> None:
    platforms = {"linux/amd64": digest("e")}
    manifests = MemoryManifests(
        {
            digest("a"): MemoryManifest(MediaType.OCI_INDEX, platforms),
            digest("b"): MemoryManifest(MediaType.DOCKER_MANIFEST, {"ignored": digest("f")}),
        }
    )
    found = await manifest_evidence(manifests, [pinned("1.0", "a"), pinned("1.1", "b")])
    assert found == [Evidence(MediaType.OCI_INDEX, platforms), Evidence(MediaType.DOCKER_MANIFEST, None)]
    assert [ref.tag for ref in manifests.asked] == [None, None]  # asked by digest: a tag cannot mislead


async def test_a_digest_the_registry_does_not_serve_is_refused_with_the_registrys_reason() -> None:
    failure = RegistryError("cannot fetch the manifest of ghcr.io/org/app@sha256:...: http 404")
    failure.reason = "http 404 (manifest unknown)"
    with pytest.raises(RegistryError) as raised:
        await manifest_evidence(MemoryManifests({}, failure), [pinned("1.0", "a")])
    assert raised.value.message == (
        f"cannot read {APP}@{digest('a')} from the registry to record it: http 404 (manifest unknown)"
    )
    assert "--offline" in raised.value.hint


async def test_a_registry_error_without_a_reason_is_shown_by_its_message() -> None:
    with pytest.raises(RegistryError, match=r"to record it: no route to host$"):
        await manifest_evidence(MemoryManifests({}, RegistryError("no route to host")), [pinned("1.0", "a")])


async def test_resolve_pins_the_tag_to_what_the_registry_serves_now() -> None:
    registry = ScriptedRegistry()
    registry.served[(APP, "1.0")] = digest("c")
    assert await resolve_image(registry, ImageRef.parse(f"{APP}:1.0")) == pinned("1.0", "c")
    with pytest.raises(RegistryError, match=r"^cannot resolve ghcr.io/org/app:2.0: tag not found$"):
        await resolve_image(registry, ImageRef.parse(f"{APP}:2.0"))


# --------------------------------------------------------------------------------------------------- pypi:

WHEEL = parse_filename("demo_pkg-1.0-py3-none-any.whl")
SDIST = parse_filename("demo_pkg-1.0.tar.gz")
OTHER = parse_filename("demo_pkg-1.1.tar.gz")
INDEX = "https://pypi.example.com/simple"


class Index:
    def __init__(self, files: list[IndexFile], served: dict[str, str]) -> None:
        self.files = files
        self.served = served

    async def project_page(self, index_url: str, project: str) -> ProjectPage:
        return ProjectPage(project, tuple(self.files))

    async def file_digest(self, index_url: str, file: IndexFile) -> Digest:
        return digest(self.served[file.filename])


def test_a_release_is_recorded_file_by_file_under_the_index_and_project() -> None:
    assert WHEEL is not None and SDIST is not None
    store = MemoryTrustStore()
    spec = PackageSpec("demo-pkg", "1.0")
    results = list(record_release(store, INDEX, spec, [(WHEEL, digest("a")), (SDIST, digest("b"))], CI))
    assert [r.outcome for r in results] == [RecordOutcome.CREATED, RecordOutcome.CREATED]
    keys = sorted(store.trusted)
    assert [tag for _, tag in keys] == ["demo_pkg-1.0-py3-none-any.whl", "demo_pkg-1.0.tar.gz"]
    assert {image for image, _ in keys} == {results[0].item.image}
    assert results[0].item.repository == "demo-pkg"


async def test_first_adoption_hashes_the_release_files_the_index_serves() -> None:
    assert WHEEL is not None and OTHER is not None
    index = Index([IndexFile(WHEEL, "w", digest("a")), IndexFile(OTHER, "o", digest("c"))], {WHEEL.filename: "a"})
    resolved = await resolve_release(index, INDEX, PackageSpec("demo-pkg", "1.0"))
    assert resolved == [(WHEEL, digest("a"))]


async def test_an_index_that_lists_one_hash_and_serves_other_bytes_is_not_adopted() -> None:
    assert WHEEL is not None
    index = Index([IndexFile(WHEEL, "w", digest("a"))], {WHEEL.filename: "b"})
    with pytest.raises(PackageIndexError, match=r"the index lists .* but serves bytes hashing to"):
        await resolve_release(index, INDEX, PackageSpec("demo-pkg", "1.0"))


async def test_a_release_the_index_does_not_have_is_an_error() -> None:
    with pytest.raises(PackageIndexError, match=r"serves no file of demo-pkg==2\.0"):
        await resolve_release(Index([], {}), INDEX, PackageSpec("demo-pkg", "2.0"))
