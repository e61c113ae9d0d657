"""The audit feeds its checks from the trust snapshot as pages arrive, through a fixed set of workers."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

from audit.adapters.file_store import FileStateStore, FileTrustStore
from audit.app.audit import AuditService, RunOptions
from audit.drift import AlertPolicy
from audit.models import Digest, ImageRef, LiveStatus, Observation
from audit.ports import PackageIndex
from audit.records import TrustedImage, TrustSnapshot, WatchSettings
from tests.support.package_world import FakeIndex
from tests.support.package_world import trusted as package_record
from tests.support.service_world import T0, RecordingAlerts, ScriptedRegistry, digest

REGISTRY = "registry.example.com"


def record(repository: str, tag: str, char: str = "a") -> TrustedImage:
    return TrustedImage(
        registry=REGISTRY,
        repository=repository,
        tag=tag,
        digest=digest(char),
        source="https://ci.example.com/runs/1",
        recorded_at=T0,
    )


class PagedTrust(FileTrustStore):
    """A trust store whose snapshot comes in pages; the second page waits until a check of the first ran."""

    def __init__(self, path: Path, pages: list[TrustSnapshot]) -> None:
        super().__init__(path)
        self.pages = pages
        for page in pages:
            for item in page.trusted:
                self.record(item)  # for the reads besides the snapshot (history, digests ever recorded)
        self.first_checked = threading.Event()
        self.second_page_waited = False

    def snapshot_pages(self) -> Iterator[TrustSnapshot]:
        for number, page in enumerate(self.pages):
            if number == 1:
                # a Scan page that takes a while: the checks of page one must not wait for it
                self.second_page_waited = self.first_checked.wait(timeout=30)
            yield page


class CountingRegistry(ScriptedRegistry):
    def __init__(self, trust: PagedTrust | None = None) -> None:
        super().__init__()
        self.trust = trust
        self.in_flight = 0
        self.peak = 0

    async def observe(self, ref: ImageRef, *, expected: Digest | None = None, platforms: bool = False) -> Observation:
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            await asyncio.sleep(0)
            if self.trust is not None:
                self.trust.first_checked.set()
            return await super().observe(ref, expected=expected, platforms=platforms)
        finally:
            self.in_flight -= 1


def service(
    tmp_path: Path,
    trust: FileTrustStore,
    registry: ScriptedRegistry,
    workers: int = 8,
    packages: PackageIndex | None = None,
) -> AuditService:
    async def no_sleep(seconds: float) -> None:
        return None

    return AuditService(
        trust,
        FileStateStore(tmp_path / "state.json"),
        registry,
        RecordingAlerts(),
        alert_policy=AlertPolicy(),
        clock=lambda: T0,
        sleep=no_sleep,
        packages=packages,
        max_in_flight=workers,
    )


async def test_checks_start_at_the_first_page_and_settings_from_a_later_page_still_apply(tmp_path: Path) -> None:
    first = [record("org/app", "1.0"), record("org/app", "latest", "b")]
    moving = WatchSettings(registry=REGISTRY, repository="org/app", moving={"latest": "any-trusted"})
    later = TrustSnapshot([record("org/lib", "2.0")], [moving])
    trust = PagedTrust(tmp_path / "trust.json", [TrustSnapshot(first, []), later])
    registry = CountingRegistry(trust)
    for item in (*first, *later.trusted):
        registry.served[(item.image, item.tag)] = item.digest
    registry.served[(f"{REGISTRY}/org/app", "latest")] = digest("a")  # latest moved to the 1.0 release

    report = await service(tmp_path, trust, registry).run(RunOptions(dry_run=True))

    assert trust.second_page_waited  # page two was read only after a check of page one had run
    assert [(r.ref.repository, r.ref.tag, r.verdict.value) for r in report.results] == [
        ("org/app", "1.0", "match"),
        ("org/app", "latest", "match"),  # any-trusted came with page two, and was applied
        ("org/lib", "2.0", "match"),
    ]


async def test_a_fixed_set_of_workers_checks_every_tag(tmp_path: Path) -> None:
    records = [record(f"org/app{n % 7}", f"1.{n}") for n in range(120)]
    trust = PagedTrust(tmp_path / "trust.json", [TrustSnapshot(records[:50], []), TrustSnapshot(records[50:], [])])
    trust.first_checked.set()
    registry = CountingRegistry()
    for item in records:
        registry.served[(item.image, item.tag)] = item.digest

    report = await service(tmp_path, trust, registry, workers=5).run(RunOptions(dry_run=True))

    assert report.by_verdict == {"match": 120}
    assert len(registry.observed) == 120
    assert registry.peak == 5


async def test_the_remaining_time_guard_still_stops_new_checks(tmp_path: Path) -> None:
    records = [record("org/app", f"1.{n}") for n in range(30)]
    trust = PagedTrust(tmp_path / "trust.json", [TrustSnapshot(records, [])])
    registry = CountingRegistry()
    started = [0]

    def budget() -> bool:
        started[0] += 1
        return started[0] <= 10

    audit = service(tmp_path, trust, registry, workers=4)
    audit._should_start = budget  # the guard the handler passes in
    report = await audit.run(RunOptions(dry_run=True))
    assert report.checked == 10
    assert len(report.unreached) == 20
    assert all(o[0].tag for o in registry.observed)
    assert {r.observation.status for r in report.results} == {LiveStatus.MISSING}


async def test_a_targeted_run_on_pages_checks_only_the_named_tags_and_lists_nothing(tmp_path: Path) -> None:
    app = f"{REGISTRY}/org/app"
    tracking = WatchSettings(registry=REGISTRY, repository="org/app", track_new_tags=True)
    first = TrustSnapshot([record("org/app", "1.0"), record("org/app", "1.1", "b")], [])
    later = TrustSnapshot([record("org/lib", "2.0")], [tracking])  # the settings arrive with the last page
    trust = PagedTrust(tmp_path / "trust.json", [first, later])
    trust.first_checked.set()
    registry = CountingRegistry()
    registry.served[(app, "1.0")] = digest("a")
    registry.served[(app, "2.0-new")] = digest("c")
    registry.tags[app] = ["1.0", "1.1", "2.0-new", "3.0"]  # listing would add 3.0: a targeted run never lists

    named = frozenset({(app, "1.0"), (app, "2.0-new")})
    report = await service(tmp_path, trust, registry).run(RunOptions(tags=named, dry_run=True))

    assert sorted(ref.tag or "" for ref, _ in registry.observed) == ["1.0", "2.0-new"]
    assert [(r.ref.repository, r.ref.tag, r.verdict.value) for r in report.results] == [
        ("org/app", "1.0", "match"),
        ("org/app", "2.0-new", "untracked"),  # unrecorded, checked because page two says org/app tracks new tags
    ]
    assert report.unlisted == {}


async def test_package_records_on_several_pages_all_reach_the_package_path(tmp_path: Path) -> None:
    wheel, sdist = "demo_pkg-1.0-py3-none-any.whl", "demo_pkg-1.0.tar.gz"
    image = record("org/app", "1.0")
    first = TrustSnapshot([image, package_record(wheel, "wheel")], [])
    later = TrustSnapshot([package_record(sdist, "sdist")], [])
    trust = PagedTrust(tmp_path / "trust.json", [first, later])
    trust.first_checked.set()
    registry = CountingRegistry()
    registry.served[(image.image, image.tag)] = image.digest
    index = FakeIndex()
    index.serve(wheel, "stolen")
    index.serve(sdist, "sdist")

    report = await service(tmp_path, trust, registry, packages=index).run(RunOptions(dry_run=True))

    assert [ref.image for ref, _ in registry.observed] == [image.image]  # package files never go to a registry
    assert {r.ref.tag: r.verdict.value for r in report.results} == {"1.0": "match", wheel: "drift", sdist: "match"}
