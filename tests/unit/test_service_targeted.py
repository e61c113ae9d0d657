"""Targeted audits (push events): only the named tags, with the same engine, state and dedup as the full run."""

from __future__ import annotations

from pathlib import Path

import pytest

from audit.app.audit import RunOptions
from audit.models import Notice, Verdict
from audit.records import WatchSettings
from tests.support.service_world import IMAGE, World, digest


@pytest.fixture
def world(tmp_path: Path) -> World:
    return World(tmp_path)


def named(*tags: str) -> frozenset[tuple[str, str]]:
    return frozenset((IMAGE, tag) for tag in tags)


def track_new_tags(world: World, *ignore: str) -> None:
    world.trust.put_watch_settings(
        WatchSettings(registry="registry.example.com", repository="org/app", track_new_tags=True, ignore=ignore)
    )


async def test_push_of_a_pinned_tag_with_a_new_digest_is_drift_and_only_that_tag_is_checked(world: World) -> None:
    world.record("1.0", "a")
    world.record("1.1", "b")
    world.serve("1.0", "9")
    world.serve("1.1", "b")
    code, findings = await world.run(tags=named("1.0"))
    assert code == 1
    assert [(f.tag, f.status, f.live_digest) for f in findings] == [("1.0", Verdict.DRIFT, digest("9"))]
    assert world.sleeps == [5.0]  # the usual re-verify happened
    assert {ref.tag for ref, _ in world.registry.observed} == {"1.0"}

    # The hourly run sees the same drift: same dedup key, no second alert.
    assert await world.run() == (1, [])


async def test_targeted_run_leaves_other_open_findings_alone(world: World) -> None:
    world.record("1.0", "a")
    world.record("1.1", "b")
    world.serve("1.0", "a")
    world.serve("1.1", "9")
    _, findings = await world.run()
    assert [f.tag for f in findings] == ["1.1"]
    before = world.state.load_all()[(IMAGE, "1.1")]

    assert await world.run(tags=named("1.0")) == (0, [])
    assert world.state.load_all()[(IMAGE, "1.1")] == before


async def test_push_of_an_unrecorded_tag_with_tracking_is_untracked_without_listing(world: World) -> None:
    track_new_tags(world)
    world.record("1.0", "a")
    world.serve("1.0", "a")
    world.serve("2.0", "c")
    # world.registry.tags is empty: listing would fail, so a targeted run must not list.
    report = await world.service().run(RunOptions(tags=named("2.0")))
    assert report.unlisted == {}
    assert [(f.tag, f.status, f.live_digest) for f in report.findings] == [("2.0", Verdict.UNTRACKED, digest("c"))]

    world.registry.tags[IMAGE] = ["1.0", "2.0"]
    assert await world.run() == (0, [])  # the hourly run adds no duplicate


async def test_named_tags_nobody_tracks_are_ignored(world: World) -> None:
    world.record("1.0", "a")
    world.serve("2.0", "c")
    report = await world.service().run(RunOptions(tags=named("2.0")))
    assert (report.checked, report.findings) == (0, [])
    assert world.registry.observed == []

    track_new_tags(world, "sha-*")
    world.serve("sha-0f00", "d")
    report = await world.service().run(RunOptions(tags=named("sha-0f00")))
    assert (report.checked, report.findings) == (0, [])


async def test_delete_of_a_tracked_tag_is_missing(world: World) -> None:
    world.record("1.0", "a")
    world.serve("1.0", None)
    code, findings = await world.run(tags=named("1.0"))
    assert code == 1
    assert [(f.tag, f.status) for f in findings] == [("1.0", Verdict.MISSING)]


async def test_delete_of_an_alerted_untracked_tag_resolves_it(world: World) -> None:
    track_new_tags(world)
    world.record("1.0", "a")
    world.serve("oops", "c")
    _, findings = await world.run(tags=named("oops"))
    assert [(f.tag, f.status) for f in findings] == [("oops", Verdict.UNTRACKED)]

    world.serve("oops", None)  # someone deleted the stray tag
    code, findings = await world.run(tags=named("oops"))
    assert code == 0
    assert [(f.tag, f.notice) for f in findings] == [("oops", Notice.RESOLVED)]


async def test_one_failing_named_tag_is_not_a_whole_registry_failure(world: World) -> None:
    world.record("1.0", "a")
    world.record("1.1", "b")
    world.registry.failing[(IMAGE, "1.0")] = "http 503"
    # In a full run every tag of the registry failing alerts at once; a targeted run of one tag proves nothing.
    code, findings = await world.run(tags=named("1.0"))
    assert (code, findings) == (3, [])


async def test_tags_and_repositories_intersect(world: World) -> None:
    world.record("1.0", "a")
    world.serve("1.0", "9")
    report = await world.service().run(RunOptions(tags=named("1.0"), repositories=frozenset({"ghcr.io/other/repo"})))
    assert report.checked == 0
