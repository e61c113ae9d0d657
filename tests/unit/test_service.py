"""The audit use case over its ports: file stores on tmp_path, a scripted registry, a recording alert channel."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path

import pytest

from audit.adapters.file_store import FileRunLease, FileStateStore
from audit.app.audit import EXIT_STEPPED_ASIDE, RunOptions
from audit.errors import PublishError, StoreError
from audit.models import MovingMode, Notice, Verdict
from audit.ports import LeaseClaim
from audit.records import TagState, WatchSettings
from tests.support.service_world import IMAGE, World, digest


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


# --------------------------------------------------------------------------------------------------- each alert once


async def test_a_partial_publish_remembers_what_was_accepted_and_resends_only_the_rest(world: World) -> None:
    for tag in ("1.0", "1.1", "1.2"):
        world.record(tag, "a")
    world.serve("1.0", "e")
    world.serve("1.1", "e")
    world.serve("1.2", "a")
    world.alerts.reject_tags = {"1.1"}
    with pytest.raises(PublishError):
        await world.service().run()
    saved = world.state.load_all()
    # The accepted alert and the quiet tag are remembered; the rejected alert's tag keeps its old (no) state.
    assert sorted(tag for _, tag in saved) == ["1.0", "1.2"]

    world.alerts.reject_tags = set()
    _, findings = await world.run()
    assert [(f.tag, f.notice) for f in findings] == [("1.1", Notice.NEW)]
    assert await world.run() == (1, [])


class BrokenState(FileStateStore):
    """The save after a successful publish fails (throttled beyond every retry, or the process died)."""

    def save(self, changed: Sequence[TagState]) -> None:
        raise StoreError("BatchWriteItem throttled")


async def test_a_repeat_after_a_lost_save_carries_the_same_finding_ids(world: World, tmp_path: Path) -> None:
    world.record("1.0", "a")
    world.record("1.1", "b")
    world.serve("1.0", "e")
    world.serve("1.1", None)
    world.state = BrokenState(tmp_path / "state.json")
    with pytest.raises(StoreError):
        await world.service().run()
    first = world.alerts.last

    world.state = FileStateStore(tmp_path / "state.json")
    world.clock.now += timedelta(hours=1)
    _, again = await world.run()
    assert [f.finding_id for f in again] == [f.finding_id for f in first]
    assert all(f.finding_id for f in again) and len({f.finding_id for f in again}) == 2


async def test_reminders_and_recurrences_get_ids_of_their_own(world: World) -> None:
    world.record("1.0", "a")
    world.serve("1.0", "e")
    ids: list[str | None] = []
    _, findings = await world.run()
    ids += [f.finding_id for f in findings]
    for _ in range(2):
        world.clock.now += timedelta(hours=25)
        _, findings = await world.run()
        assert [f.notice for f in findings] == [Notice.REMINDER]
        ids += [f.finding_id for f in findings]
    world.serve("1.0", "a")
    _, findings = await world.run()
    ids += [f.finding_id for f in findings]
    world.serve("1.0", "e")  # the same drift comes back
    _, findings = await world.run()
    assert [f.notice for f in findings] == [Notice.NEW]
    ids += [f.finding_id for f in findings]
    assert len(ids) == 5 and len(set(ids)) == 5


async def test_a_run_steps_aside_while_another_holds_the_lease(world: World, tmp_path: Path) -> None:
    world.record("1.0", "a")
    world.serve("1.0", "e")
    other = FileRunLease(tmp_path / "state.json")
    assert other.acquire("other-run").acquired
    report = await world.service(lease=FileRunLease(tmp_path / "state.json")).run()
    assert report.worst_exit_code() == EXIT_STEPPED_ASIDE == 5
    assert report.stepped_aside is not None and "other-run" in report.stepped_aside.holder
    assert world.registry.observed == [] and world.alerts.runs == [] and world.state.load_all() == {}

    # A dry run needs no lease.
    dry = await world.service(lease=FileRunLease(tmp_path / "state.json")).run(RunOptions(dry_run=True))
    assert dry.stepped_aside is None and [f.status for f in dry.findings] == [Verdict.DRIFT]

    other.release("other-run")
    lease = FileRunLease(tmp_path / "state.json")
    report = await world.service(lease=lease).run()
    assert report.worst_exit_code() == 1 and len(world.alerts.runs) == 1
    assert lease.acquire("next-run").acquired  # released at the end of the run


class ExpiringLease:
    """A lease that is granted, then found taken over when the run renews it before publishing."""

    def __init__(self) -> None:
        self.released: list[str] = []

    def acquire(self, owner: str) -> LeaseClaim:
        return LeaseClaim(acquired=True, holder=owner)

    def renew(self, owner: str) -> bool:
        return False

    def release(self, owner: str) -> None:
        self.released.append(owner)


async def test_a_run_whose_lease_was_taken_over_publishes_and_saves_nothing(world: World) -> None:
    world.record("1.0", "a")
    world.serve("1.0", "e")
    lease = ExpiringLease()
    report = await world.service(lease=lease).run()
    assert report.worst_exit_code() == EXIT_STEPPED_ASIDE
    assert [f.status for f in report.findings] == [Verdict.DRIFT]  # decided, but the lease holder sends it
    assert world.alerts.runs == [] and world.state.load_all() == {}
    assert lease.released == [report.run_id]
