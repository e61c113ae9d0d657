"""The audit use case against hostile registry data: one bad tag or repository is a finding, never the end."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import httpx
import pytest

from audit.adapters.file_store import FileTrustStore
from audit.app.audit import TAG_LIST_CAP_KEY, AuditService, RunOptions, RunReport
from audit.models import ImageRef, Notice, Observation, RejectedTag, RejectedWatch, TagListing, Verdict
from audit.records import Finding, TrustSnapshot, WatchSettings
from audit.reference import rejected_tag_key
from tests.support.service_world import IMAGE, World
from tests.unit.registry.fakes import REGISTRY, FakeRegistry, image_manifest, make_client

OTHER = "registry.example.com/org/other"
HOSTILE = ["v1\x1b]0;pwned\x07", "v4';id;echo'", "x" * 1100]


class HostileRegistry:
    """Wraps a world's scripted registry: listings as given, and chosen tags/repositories that blow up."""

    def __init__(self, world: World) -> None:
        self.inner = world.registry
        self.listings: dict[str, TagListing] = {}
        self.exploding_tags: set[str] = set()
        self.exploding_lists: set[str] = set()
        self.guards: list[Callable[[], bool] | None] = []

    async def observe(self, ref: ImageRef, **kwargs: object) -> Observation:
        if ref.tag in self.exploding_tags:
            raise httpx.InvalidURL("Invalid non-printable ASCII character in URL, '\\x1b' at position 42")
        return await self.inner.observe(ref, **kwargs)  # type: ignore[arg-type]

    async def list_tags(
        self,
        registry: str,
        repository: str,
        *,
        max_tags: int,
        should_continue: Callable[[], bool] | None = None,
    ) -> TagListing:
        self.guards.append(should_continue)
        image = f"{registry}/{repository}"
        if image in self.exploding_lists:
            raise ValueError("attacker text \x1b[2J in an exception")
        if image in self.listings:
            return self.listings[image]
        return await self.inner.list_tags(registry, repository, max_tags=max_tags, should_continue=should_continue)


def service(world: World, registry: object, *, max_tags: int = 10_000) -> AuditService:
    return world.service(registry, max_tags_per_repository=max_tags)


async def run(world: World, registry: object, **kwargs: int) -> tuple[RunReport, list[Finding]]:
    before = len(world.alerts.runs)
    report = await service(world, registry, **kwargs).run(RunOptions())
    world.clock.now += timedelta(hours=1)
    return report, (world.alerts.last if len(world.alerts.runs) > before else [])


def watch(image: str = IMAGE) -> WatchSettings:
    registry, _, repository = image.partition("/")
    return WatchSettings(registry=registry, repository=repository, track_new_tags=True)


def rejected(*names: str) -> tuple[RejectedTag, ...]:
    return tuple(RejectedTag(rejected_tag_key(name), name[:160]) for name in names)


@pytest.fixture
def world(tmp_path: Path) -> World:
    world = World(tmp_path)
    world.record("1.0", "a")
    world.serve("1.0", "a")
    return world


async def test_an_exploding_tag_is_unverifiable_and_the_audit_goes_on(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    world.record("1.1", "b")
    world.serve("1.1", "b")
    registry = HostileRegistry(world)
    registry.exploding_tags.add("1.1")

    report, _ = await run(world, registry)

    verdicts = {result.ref.tag: (result.verdict, result.reason) for result in report.results}
    assert verdicts == {
        "1.0": (Verdict.MATCH, None),
        "1.1": (Verdict.UNVERIFIABLE, "internal error (InvalidURL)"),
    }
    assert report.worst_exit_code() == 3
    assert "InvalidURL" in caplog.text and "\x1b" not in caplog.text  # the type is logged, not attacker text


async def test_an_exploding_tag_list_is_that_repositorys_problem_only(world: World) -> None:
    world.trust.put_watch_settings(watch(OTHER))
    world.trust.put_watch_settings(watch(IMAGE))
    world.registry.tags[IMAGE] = ["1.0", "2.0"]
    world.serve("2.0", "c")
    registry = HostileRegistry(world)
    registry.exploding_lists.add(OTHER)

    report, findings = await run(world, registry)

    assert report.unlisted == {OTHER: "internal error while listing tags (ValueError)"}
    assert [(f.tag, f.status) for f in findings] == [("2.0", Verdict.UNTRACKED)]


async def test_names_outside_the_grammar_are_untracked_findings_alerted_once(world: World) -> None:
    world.trust.put_watch_settings(watch())
    registry = HostileRegistry(world)
    registry.listings[IMAGE] = TagListing(("1.0",), rejected(*HOSTILE), len(HOSTILE))

    report, findings = await run(world, registry)

    assert sorted((f.tag, f.status, f.notice) for f in findings) == sorted(
        (rejected_tag_key(name), Verdict.UNTRACKED, Notice.NEW) for name in HOSTILE
    )
    for finding in findings:
        assert finding.tag is not None and finding.tag.startswith("#invalid-tag-") and len(finding.tag) <= 128
        assert finding.reason is not None and "outside the tag grammar" in finding.reason
    assert world.registry.observed == [(ImageRef.parse(f"{IMAGE}:1.0"), False)]  # no hostile name was asked
    assert report.worst_exit_code() == 0  # untracked is news, not drift; nothing unverifiable

    _, again = await run(world, registry)
    assert again == []  # deduplicated by the bounded key, like any finding

    registry.listings[IMAGE] = TagListing(("1.0",))
    _, gone = await run(world, registry)
    assert sorted((f.tag, f.notice) for f in gone) == sorted(
        (rejected_tag_key(name), Notice.RESOLVED) for name in HOSTILE
    )


async def test_the_cap_is_one_unverifiable_finding_alerted_once(world: World) -> None:
    world.trust.put_watch_settings(watch())
    registry = HostileRegistry(world)
    registry.listings[IMAGE] = TagListing(("1.0",), stopped="cap")

    alerted: list[Finding] = []
    for _ in range(5):
        report, findings = await run(world, registry, max_tags=1)
        alerted.extend(findings)
        assert report.worst_exit_code() == 3
        assert report.unlisted == {IMAGE: "tag list not fully read: the cap of 1 names was reached"}

    [finding] = alerted  # after DIGEST_AUDIT_UNVERIFIABLE_AFTER runs, then quiet until the reminder
    assert (finding.tag, finding.status, finding.notice) == (TAG_LIST_CAP_KEY, Verdict.UNVERIFIABLE, Notice.NEW)
    assert "DIGEST_AUDIT_MAX_TAGS_PER_REPOSITORY" in (finding.reason or "")


async def test_a_capped_list_does_not_resolve_untracked_alerts_it_did_not_see(world: World) -> None:
    world.trust.put_watch_settings(watch())
    world.serve("2.0", "c")
    registry = HostileRegistry(world)
    registry.listings[IMAGE] = TagListing(("1.0", "2.0"))
    _, findings = await run(world, registry)
    assert [(f.tag, f.notice) for f in findings] == [("2.0", Notice.NEW)]

    registry.listings[IMAGE] = TagListing(("1.0",), stopped="cap")
    _, findings = await run(world, registry, max_tags=1)
    assert findings == []  # 2.0 may well still be there, beyond the cap


async def test_listing_gets_the_run_guard_and_a_stop_is_reported(world: World) -> None:
    world.trust.put_watch_settings(watch())
    registry = HostileRegistry(world)
    registry.listings[IMAGE] = TagListing(("1.0",), stopped="time")

    report, _ = await run(world, registry)

    assert registry.guards == [world.should_start]
    assert report.unlisted == {IMAGE: "tag list not fully read: time ran out after 1 names"}
    assert report.worst_exit_code() == 3


async def test_endless_slow_pagination_stops_at_the_remaining_time_guard(world: World) -> None:
    """The real client behind the service: a registry that pages forever is cut off by the run's guard."""
    registry = FakeRegistry(host=REGISTRY)
    registry.push("org/app", "v0", image_manifest())

    def endless(request: httpx.Request) -> httpx.Response | None:
        if not request.url.path.endswith("/tags/list"):
            return None
        page = int(request.url.params.get("page", "0"))
        link = f'</v2/org/app/tags/list?n=1000&page={page + 1}>; rel="next"'
        return httpx.Response(200, headers={"Link": link}, json={"name": "org/app", "tags": [f"p{page}"]})

    registry.hooks.append(endless)
    world.trust.put_watch_settings(WatchSettings(registry=REGISTRY, repository="org/app", track_new_tags=True))
    world.budget = 40  # the guard says "stop" after 40 questions, as a Lambda's remaining time would
    async with make_client(registry) as client:
        report, _ = await run(world, client)

    pages = [r for r in registry.requests if r.url.path.endswith("/tags/list") and r.url.host == REGISTRY]
    # Checks of tracked tags start at the first trust page, before the listing, and ask the guard first.
    checks = len(world.trust.load_all())
    # the first page, then one per "go on" left of the 40, then the guard said stop
    assert len(pages) == 1 + 40 - checks
    assert report.unlisted[f"{REGISTRY}/org/app"].startswith("tag list not fully read: time ran out")


class StoreWithABadWatchEntry(FileTrustStore):
    """A trust store whose table holds watch settings someone wrote by hand (see the DynamoDB test for the real one)."""

    def load_snapshot(self) -> TrustSnapshot:
        trusted, settings, _ = super().load_snapshot()
        return TrustSnapshot(trusted, settings, [RejectedWatch("Not A Host!/org/app", "registry: invalid")])


async def test_invalid_watch_settings_stored_by_hand_are_one_warning(
    world: World, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The store hands back what failed validation; the audit reports it and goes on (exit 3, not 2)."""
    world.trust = StoreWithABadWatchEntry(tmp_path / "trust.json")
    with caplog.at_level(logging.WARNING):
        report = await service(world, world.registry).run(RunOptions())
    assert [result.verdict for result in report.results] == [Verdict.MATCH]
    assert report.unlisted == {"Not A Host!/org/app": "invalid watch settings, not used: registry: invalid"}
    assert report.worst_exit_code() == 3
    assert "invalid watch settings" in caplog.text


async def test_a_trusted_record_with_a_tag_outside_the_grammar_is_unverifiable_never_queried(world: World) -> None:
    """Such a record can only be written by hand (the stores refuse it); it is reported, and alerted like any
    unverifiable tag once it stays so (its state key is a bounded hash, so the streak is remembered)."""
    bad = "v9;id\x1b[2J" + "x" * 1100
    trusted = world.trust.load_all()[0]
    document = json.loads(world.trust.path.read_text())
    document["trusted"].append({**trusted.model_dump(mode="json"), "tag": bad})
    world.trust.path.write_text(json.dumps(document))

    alerted: list[Finding] = []
    for _ in range(3):
        report, findings = await run(world, world.registry)
        alerted.extend(findings)
    verdicts = {result.ref.tag: result.verdict for result in report.results}
    assert verdicts == {"1.0": Verdict.MATCH, rejected_tag_key(bad): Verdict.UNVERIFIABLE}
    assert [ref.tag for ref, _ in world.registry.observed] == ["1.0"] * 3
    [finding] = alerted  # after DIGEST_AUDIT_UNVERIFIABLE_AFTER runs in a row
    assert finding.status is Verdict.UNVERIFIABLE and "fix or delete it" in (finding.reason or "")
