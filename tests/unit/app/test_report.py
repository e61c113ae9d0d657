"""The report use case: the releases in scope, their evidence rows, and live verdicts judged like the audit."""

from __future__ import annotations

from datetime import timedelta

from audit.app.report import (
    NOT_AUDITED,
    ReportScope,
    evidence_rows,
    gather_evidence,
    incident_report,
    live_verdicts,
)
from audit.incident_report import ReleaseVerdict
from audit.models import ImageRef, LiveStatus, MovingMode, Observation, Verdict
from tests.support.memory_ports import MemoryStateStore, MemoryTrustStore
from tests.support.store_builders import RECORDED_AT, digest, state, trusted, watch


def test_the_scope_selects_repositories_and_an_inclusive_window_sorted_by_recording_time() -> None:
    store = MemoryTrustStore(
        trusted("1.2", "c", minutes=20),
        trusted("1.0", "a", minutes=0),
        trusted("1.1", "b", minutes=10),
        trusted("9.0", "d", minutes=10, repository="org/other"),
    )
    scope = ReportScope(
        repositories={"ghcr.io/org/app"},
        recorded_since=RECORDED_AT + timedelta(minutes=10),
        recorded_until=RECORDED_AT + timedelta(minutes=20),
    )
    evidence = gather_evidence(store, None, scope)
    assert [record.tag for record in evidence.records] == ["1.1", "1.2"]
    assert evidence.states == {}


def test_a_row_shows_the_last_audit_or_that_none_checked_it() -> None:
    store = MemoryTrustStore(trusted("1.0", "a"), trusted("1.1", "b"))
    audited = state("1.0", last_verdict=Verdict.DRIFT, last_live_digest=digest("e"))
    audit_state = MemoryStateStore(audited)
    rows = evidence_rows(gather_evidence(store, audit_state, ReportScope()))
    assert audit_state.saves == []  # a report never saves audit state
    assert [(r["tag"], r["status"], r["live_digest"], r["since"]) for r in rows] == [
        ("1.0", "drift", str(digest("e")), "2024-05-01T12:00:00.123456Z"),
        ("1.1", NOT_AUDITED, None, None),
    ]


class Serving:
    """Serves one digest per tag."""

    def __init__(self, served: dict[str, str]) -> None:
        self.served = served

    async def observe(self, ref: ImageRef, *, expected: object = None, platforms: bool = False) -> Observation:
        return Observation(ref=ref, status=LiveStatus.FOUND, live_digest=digest(self.served[ref.tag or ""]))

    async def list_tags(self, *args: object, **kwargs: object) -> object:
        raise AssertionError("a report lists no tags")


async def test_live_verdicts_follow_the_audit_rules_for_moving_tags() -> None:
    store = MemoryTrustStore(trusted("latest", "a"), trusted("1.0", "b"))
    store.record(trusted("latest", "c"), moving=True)  # "a" goes to history
    store.put_watch_settings(watch(moving={"latest": MovingMode.ANY_TRUSTED}))
    evidence = gather_evidence(store, None, ReportScope())
    live = await live_verdicts(Serving({"latest": "a", "1.0": "d"}), store, evidence.records)  # type: ignore[arg-type]
    verdicts = {tag: verdict for (_, tag), (_, verdict, _) in live.items()}
    assert verdicts == {"latest": Verdict.MATCH, "1.0": Verdict.DRIFT}
    report = incident_report(evidence, ReportScope(), live=live)
    assert report.live
    assert [row.verdict for row in report.rows] == [ReleaseVerdict.CHANGED, ReleaseVerdict.VERIFIED]
