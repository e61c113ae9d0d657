"""The audit use case over its ports: file stores on tmp_path, a scripted registry, a recording alert channel."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from audit.adapters.file_store import FileStateStore, FileTrustStore
from audit.drift import AlertPolicy
from audit.errors import PublishError, RegistryError
from audit.models import (
    Digest,
    Finding,
    ImageRef,
    LiveStatus,
    MovingMode,
    Notice,
    Observation,
    TagListing,
    TrustedImage,
    Verdict,
    WatchSettings,
)
from audit.service import AuditService, RunOptions

T0 = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)
IMAGE = "registry.example.com/org/app"


def digest(char: str) -> Digest:
    return Digest.parse("sha256:" + char * 64)


class ScriptedRegistry:
    """Serves digests from a dict; tags listed per repository; counts what was asked."""

    def __init__(self) -> None:
        self.served: dict[tuple[str, str], Digest | None] = {}
        self.failing: dict[tuple[str, str], str] = {}
        self.tags: dict[str, list[str]] = {}
        self.observed: list[tuple[ImageRef, bool]] = []
        self.on_observe: list[object] = []

    async def observe(self, ref: ImageRef, *, expected: Digest | None = None, platforms: bool = False) -> Observation:
        self.observed.append((ref, platforms))
        key = (ref.image, ref.tag or "")
        if key in self.failing:
            return Observation(ref=ref, status=LiveStatus.UNVERIFIABLE, reason=self.failing[key])
        live = self.served.get(key)
        if live is None:
            return Observation(ref=ref, status=LiveStatus.MISSING, reason="tag not found")
        return Observation(ref=ref, status=LiveStatus.FOUND, live_digest=live, confirmed_by_content=True)

    async def list_tags(
        self,
        registry: str,
        repository: str,
        *,
        max_tags: int,
        should_continue: Callable[[], bool] | None = None,
    ) -> TagListing:
        image = f"{registry}/{repository}"
        if image not in self.tags:
            raise RegistryError(f"cannot list tags of {image}: http 503")
        return TagListing(tuple(self.tags[image]))


class RecordingAlerts:
    def __init__(self) -> None:
        self.runs: list[list[Finding]] = []
        self.fail = False

    def publish(self, run_id: str, findings: Sequence[Finding], *, total_tags: int) -> int:
        if self.fail:
            raise PublishError("cannot publish to topic arn:aws:sns:eu-west-1:1:alerts")
        self.runs.append(list(findings))
        return len(findings)

    @property
    def last(self) -> list[Finding]:
        return self.runs[-1]


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


class World:
    def __init__(self, tmp_path: Path) -> None:
        self.trust = FileTrustStore(tmp_path / "trust.json")
        self.state = FileStateStore(tmp_path / "state.json")
        self.registry = ScriptedRegistry()
        self.alerts = RecordingAlerts()
        self.clock = Clock()
        self.sleeps: list[float] = []
        self.started = 0
        self.budget: int | None = None

    def record(self, tag: str, char: str, *, moving: bool = False) -> None:
        item = TrustedImage(
            registry="registry.example.com",
            repository="org/app",
            tag=tag,
            digest=digest(char),
            source=f"https://ci.example.com/runs/{tag}",
            commit="abc123",
            recorded_at=self.clock(),
        )
        self.trust.record(item, moving=moving)

    def serve(self, tag: str, char: str | None) -> None:
        self.registry.served[(IMAGE, tag)] = digest(char) if char else None

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)

    def should_start(self) -> bool:
        self.started += 1
        return self.budget is None or self.started <= self.budget

    def service(self, **overrides: object) -> AuditService:
        return AuditService(
            self.trust,
            self.state,
            self.registry,
            self.alerts,
            alert_policy=AlertPolicy(reminder_interval=timedelta(hours=24), unverifiable_after=3),
            reverify_delay=5.0,
            clock=self.clock,
            sleep=self.sleep,
            should_start=self.should_start,
        )

    async def run(self, **options: object) -> tuple[int, list[Finding]]:
        before = len(self.alerts.runs)
        report = await self.service().run(RunOptions(**options))  # type: ignore[arg-type]
        findings = self.alerts.last if len(self.alerts.runs) > before else []
        return report.worst_exit_code(), findings


@pytest.fixture
def world(tmp_path: Path) -> World:
    return World(tmp_path)


async def test_drift_is_alerted_once_reminded_then_resolved(world: World) -> None:
    world.record("1.0", "a")
    world.record("1.1", "b")
    world.serve("1.0", "a")
    world.serve("1.1", "b")
    assert await world.run() == (0, [])

    world.serve("1.1", "e")  # the swap
    code, findings = await world.run()
    assert code == 1
    assert [(f.tag, f.status, f.notice, f.live_digest) for f in findings] == [
        ("1.1", Verdict.DRIFT, Notice.NEW, digest("e"))
    ]
    assert findings[0].trusted_digest == digest("b")
    assert findings[0].source == "https://ci.example.com/runs/1.1"
    assert world.sleeps == [5.0]  # re-verified before alerting

    world.clock.now += timedelta(hours=1)
    assert await world.run() == (1, [])  # no duplicate
    assert world.sleeps == [5.0]  # an alerted drift with the same digest is not re-verified every run

    world.clock.now += timedelta(hours=24)
    _, findings = await world.run()
    assert [(f.tag, f.notice) for f in findings] == [("1.1", Notice.REMINDER)]

    world.serve("1.1", "b")
    code, findings = await world.run()
    assert code == 0
    assert [(f.tag, f.status, f.notice) for f in findings] == [("1.1", Verdict.MATCH, Notice.RESOLVED)]


async def test_failed_publish_saves_nothing_and_next_run_alerts_again(world: World) -> None:
    world.record("1.0", "a")
    world.serve("1.0", "f")
    world.alerts.fail = True
    with pytest.raises(PublishError):
        await world.service().run()
    assert world.state.load_all() == {}

    world.alerts.fail = False
    _, findings = await world.run()
    assert [(f.tag, f.notice) for f in findings] == [("1.0", Notice.NEW)]


async def test_dry_run_publishes_and_saves_nothing(world: World) -> None:
    world.record("1.0", "a")
    world.serve("1.0", "f")
    report = await world.service().run(RunOptions(dry_run=True))
    assert [f.status for f in report.findings] == [Verdict.DRIFT]
    assert world.alerts.runs == []
    assert world.state.load_all() == {}


async def test_recorder_race_is_not_a_false_alarm(world: World) -> None:
    """CI pushes and records while the audit runs: the re-check reads the new record consistently."""
    world.record("latest", "a", moving=True)
    world.serve("latest", "c")
    original_sleep = world.sleep

    async def ci_records_during_the_delay(seconds: float) -> None:
        world.record("latest", "c", moving=True)
        await original_sleep(seconds)

    world.sleep = ci_records_during_the_delay  # type: ignore[method-assign]
    code, findings = await world.run()
    assert (code, findings) == (0, [])


async def test_missing_tag_and_recovery(world: World) -> None:
    world.record("1.0", "a")
    world.serve("1.0", None)
    code, findings = await world.run()
    assert code == 1
    assert [(f.status, f.reason) for f in findings] == [(Verdict.MISSING, "tag not found")]


async def test_unverifiable_is_alerted_after_three_runs_unless_registry_is_down(world: World) -> None:
    world.record("1.0", "a")
    world.record("1.1", "b")
    world.serve("1.0", "a")
    world.serve("1.1", "b")
    world.registry.failing[(IMAGE, "1.1")] = "http 503"
    assert await world.run() == (3, [])
    assert await world.run() == (3, [])
    _, findings = await world.run()
    assert [(f.tag, f.status, f.reason) for f in findings] == [
        ("1.1", Verdict.UNVERIFIABLE, "http 503 (3 runs in a row)")
    ]

    world.registry.failing.clear()
    _, findings = await world.run()
    assert [(f.tag, f.notice) for f in findings] == [("1.1", Notice.RESOLVED)]

    # Every tag of the registry failing (expired credentials) is alerted at once.
    world.registry.failing[(IMAGE, "1.0")] = "auth failed"
    world.registry.failing[(IMAGE, "1.1")] = "auth failed"
    code, findings = await world.run()
    assert code == 3
    assert sorted(str(f.tag) for f in findings) == ["1.0", "1.1"]
    assert all(f.reason and f.reason.startswith("auth failed") for f in findings)


async def test_moving_tag_any_trusted(world: World) -> None:
    world.trust.put_watch_settings(
        WatchSettings(registry="registry.example.com", repository="org/app", moving={"latest": MovingMode.ANY_TRUSTED})
    )
    world.record("1.0", "a")
    world.record("1.1", "b")
    world.record("latest", "b", moving=True)
    world.serve("1.0", "a")
    world.serve("1.1", "b")
    world.serve("latest", "a")  # points at an older recorded release: fine
    assert await world.run() == (0, [])
    world.serve("latest", "9")  # an image no CI run recorded
    code, findings = await world.run()
    assert code == 1
    assert [(f.tag, f.status) for f in findings] == [("latest", Verdict.DRIFT)]


async def test_untracked_tags_respect_ignore_and_resolve_when_recorded(world: World) -> None:
    world.trust.put_watch_settings(
        WatchSettings(registry="registry.example.com", repository="org/app", track_new_tags=True, ignore=("sha-*",))
    )
    world.record("1.0", "a")
    world.serve("1.0", "a")
    world.serve("1.2", "c")
    world.serve("sha-0f00", "d")
    sig = "sha256-" + "0" * 64 + ".sig"
    world.registry.tags[IMAGE] = ["1.0", "1.2", "sha-0f00", sig]
    code, findings = await world.run()
    assert code == 0  # untracked is news, not a failure
    assert [(f.tag, f.status, f.live_digest) for f in findings] == [("1.2", Verdict.UNTRACKED, digest("c"))]

    world.record("1.2", "c")
    _, findings = await world.run()
    assert [(f.tag, f.notice) for f in findings] == [("1.2", Notice.RESOLVED)]


async def test_unlisted_repository_is_reported_and_does_not_resolve_untracked(world: World) -> None:
    world.trust.put_watch_settings(
        WatchSettings(registry="registry.example.com", repository="org/app", track_new_tags=True)
    )
    world.record("1.0", "a")
    world.serve("1.0", "a")
    world.serve("2.0", "c")
    world.registry.tags[IMAGE] = ["1.0", "2.0"]
    _, findings = await world.run()
    assert [f.tag for f in findings] == ["2.0"]

    del world.registry.tags[IMAGE]  # listing fails now
    report = await world.service().run()
    assert report.unlisted == {IMAGE: f"cannot list tags of {IMAGE}: http 503"}
    assert report.findings == []
    assert report.worst_exit_code() == 3


async def test_vanished_untracked_tag_is_resolved(world: World) -> None:
    world.trust.put_watch_settings(
        WatchSettings(registry="registry.example.com", repository="org/app", track_new_tags=True)
    )
    world.record("1.0", "a")
    world.serve("1.0", "a")
    world.serve("oops", "c")
    world.registry.tags[IMAGE] = ["1.0", "oops"]
    await world.run()
    world.registry.tags[IMAGE] = ["1.0"]  # someone deleted the stray tag
    _, findings = await world.run()
    assert [(f.tag, f.notice) for f in findings] == [("oops", Notice.RESOLVED)]


async def test_remaining_time_guard_reports_unreached_never_match(world: World) -> None:
    for index in range(5):
        world.record(f"1.{index}", "a")
        world.serve(f"1.{index}", "a")
    world.budget = 2
    report = await world.service().run()
    assert report.checked == 2
    assert len(report.unreached) == 3
    assert report.worst_exit_code() == 3
    assert Verdict.MATCH.value not in {ref.tag for ref in report.unreached}
    assert len(world.state.load_all()) == 2  # unreached tags keep their previous state


async def test_repository_subset(world: World) -> None:
    world.record("1.0", "a")
    world.serve("1.0", "f")
    report = await world.service().run(RunOptions(repositories=frozenset({"ghcr.io/other/repo"})))
    assert report.checked == 0
    assert world.registry.observed == []


async def test_state_is_not_rewritten_when_nothing_changed(world: World, tmp_path: Path) -> None:
    world.record("1.0", "a")
    world.serve("1.0", "a")
    first = await world.service().run()
    assert first.states_saved == 1
    world.clock.now += timedelta(hours=1)
    second = await world.service().run()
    assert second.states_saved == 0
    world.clock.now += timedelta(hours=24)
    third = await world.service().run()
    assert third.states_saved == 1  # last_seen refreshed once a day
