"""PEP 592 yanks of recorded package files: a notice once, a resolved notice when lifted, never a problem."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path

import pytest

from audit import alerts, drift
from audit.adapters.file_store import FileStateStore
from audit.errors import PackageIndexError, PublishError
from audit.models import ImageRef, LiveStatus, Notice, Observation, Verdict
from audit.records import Finding, TagState
from tests.support.package_world import REGISTRY, SDIST, WHEEL, World, digest, released_world, trusted
from tests.support.service_world import T0

REF = ImageRef(registry=REGISTRY, repository="demo-pkg", tag=WHEEL)
KEY = (f"{REGISTRY}/demo-pkg", WHEEL)


@pytest.fixture
def world(tmp_path: Path) -> World:
    return released_world(tmp_path)


def yank_findings(findings: Sequence[Finding]) -> list[tuple[str | None, Notice, str | None]]:
    return [(f.tag, f.notice, f.yanked) for f in findings if f.status is Verdict.YANKED]


# --------------------------------------------------------------------------------------------------- the decision


def matched(previous: TagState | None) -> drift.Decision:
    return drift.decide(previous, Verdict.MATCH, digest("wheel"), ref=REF, now=T0)


def test_a_first_yank_is_a_notice_the_next_run_is_quiet_and_an_unyank_resolves_it() -> None:
    first = drift.decide_yank(matched(None), "broken metadata", now=T0)
    assert (first.notice, first.yank_notice) == (None, Notice.NEW)  # the verdict part stays a quiet match
    assert (first.new_state.yank_notified, first.new_state.yank_notice_at) == ("broken metadata", T0)

    later = T0 + timedelta(days=3)
    again = drift.decide_yank(drift.decide(first.new_state, Verdict.MATCH, digest("wheel"), ref=REF, now=later),
                              "broken metadata", now=later)  # fmt: skip
    assert again.yank_notice is None
    assert again.new_state.yank_notice_at == T0  # no reminders for a yank, whatever the interval

    reworded = drift.decide_yank(again, "another reason", now=later)
    assert reworded.yank_notice is None and reworded.new_state.yank_notified == "broken metadata"

    lifted = drift.decide_yank(drift.decide(again.new_state, Verdict.MATCH, digest("wheel"), ref=REF, now=later),
                               None, now=later)  # fmt: skip
    assert lifted.yank_notice is Notice.RESOLVED
    assert (lifted.new_state.yank_notified, lifted.new_state.yank_notice_at) == (None, later)

    assert drift.decide_yank(matched(lifted.new_state), None, now=later).yank_notice is None


def test_a_yank_without_a_reason_is_a_notice_too() -> None:
    decision = drift.decide_yank(matched(None), "", now=T0)
    assert (decision.yank_notice, decision.new_state.yank_notified) == (Notice.NEW, "")
    assert drift.decide_yank(matched(decision.new_state), "", now=T0).yank_notice is None


@pytest.mark.parametrize("verdict", [Verdict.UNVERIFIABLE, Verdict.MISSING, Verdict.DRIFT, Verdict.MATCH])
def test_decide_carries_the_yank_part_over_whatever_the_verdict(verdict: Verdict) -> None:
    yanked = drift.decide_yank(matched(None), "bad", now=T0).new_state
    decision = drift.decide(yanked, verdict, digest("other"), ref=REF, now=T0 + timedelta(hours=1))
    assert (decision.new_state.yank_notified, decision.new_state.yank_notice_at) == ("bad", T0)
    assert decision.yank_notice is None


def test_yank_findings_say_what_happened_and_get_ids_of_their_own() -> None:
    record = trusted(WHEEL, "wheel")
    observation = Observation(ref=REF, status=LiveStatus.FOUND, live_digest=digest("wheel"))
    first = drift.decide_yank(matched(None), "CVE-2026-1", now=T0)
    new = drift.with_finding_id(drift.yank_finding_for(record, observation, None, first), None)
    assert (new.status, new.notice, new.yanked, new.alert_verdict) == (
        Verdict.YANKED,
        Notice.NEW,
        "CVE-2026-1",
        "yanked",
    )
    assert new.reason == "the index serves this recorded file yanked (PEP 592): CVE-2026-1"
    assert (new.trusted_digest, new.live_digest, new.first_seen) == (digest("wheel"), digest("wheel"), T0)

    later = T0 + timedelta(days=1)
    lift = drift.decide_yank(matched(first.new_state), None, now=later)
    resolved = drift.with_finding_id(
        drift.yank_finding_for(record, observation, first.new_state, lift), first.new_state
    )
    assert (resolved.notice, resolved.alert_verdict, resolved.yanked) == (Notice.RESOLVED, "resolved", None)
    assert resolved.reason == "yank resolved: the index serves the file un-yanked again (it was yanked: CVE-2026-1)"

    # Yanked again later: the same facts as the first notice but another id (the yank clock moved).
    even_later = later + timedelta(days=1)
    back = drift.decide_yank(matched(lift.new_state), "CVE-2026-1", now=even_later)
    renewed = drift.with_finding_id(drift.yank_finding_for(record, observation, lift.new_state, back), lift.new_state)
    assert len({new.finding_id, resolved.finding_id, renewed.finding_id}) == 3
    # The same notice decided again from the same state (a run that died before saving) keeps its id.
    assert drift.with_finding_id(drift.yank_finding_for(record, observation, None, first), None) == new

    with pytest.raises(ValueError, match="yank notice"):
        drift.yank_finding_for(record, observation, None, matched(None))


# --------------------------------------------------------------------------------------------------- in a run


async def test_a_yanked_matching_file_is_notified_once_exit_zero_and_resolved_when_unyanked(world: World) -> None:
    world.index.serve(WHEEL, "wheel", yanked="broken \x1b[31mmetadata")  # as the adapter hands it over: data
    code, verdicts = await world.run()
    assert (code, verdicts) == (0, {WHEEL: Verdict.MATCH, SDIST: Verdict.MATCH})
    assert yank_findings(world.alerts.last) == [(WHEEL, Notice.NEW, "broken \x1b[31mmetadata")]
    assert len(world.alerts.last) == 1
    assert FileStateStore(world.state.path).load_all()[KEY].yank_notified == "broken \x1b[31mmetadata"

    world.clock.now += timedelta(days=2)  # past the reminder interval: a yank still gets no reminder
    code, _ = await world.run()
    assert code == 0
    assert len(world.alerts.runs) == 1

    world.index.error = PackageIndexError("the simple page of demo-pkg: HTTP 503")
    world.clock.now += timedelta(hours=1)
    assert (await world.run())[0] == 3
    assert all(f.status is not Verdict.YANKED for f in world.alerts.last)  # an unread page lifts nothing
    assert FileStateStore(world.state.path).load_all()[KEY].yank_notified == "broken \x1b[31mmetadata"

    world.index.error = None
    world.index.serve(WHEEL, "wheel")
    world.clock.now += timedelta(hours=1)
    code, _ = await world.run()
    assert code == 0
    assert yank_findings(world.alerts.last) == [(WHEEL, Notice.RESOLVED, None)]
    assert FileStateStore(world.state.path).load_all()[KEY].yank_notified is None
    runs = len(world.alerts.runs)
    await world.run()
    assert len(world.alerts.runs) == runs


async def test_a_yanked_file_that_drifted_gets_the_drift_alert_and_the_yank_notice(world: World) -> None:
    world.index.serve(WHEEL, "stolen", yanked="")
    code, verdicts = await world.run()
    assert (code, verdicts[WHEEL]) == (1, Verdict.DRIFT)  # the yank takes nothing away from the drift
    by_verdict = {f.alert_verdict.value: f for f in world.alerts.last}
    assert set(by_verdict) == {"drift", "yanked"}
    assert by_verdict["drift"].yanked == ""  # the drift finding says what the index says about the yank
    assert "release yanked (no reason given)" in (by_verdict["drift"].reason or "")


class RejectingYanks:
    """Alerts whose yank messages SNS does not accept (a partial publish)."""

    def __init__(self) -> None:
        self.runs: list[list[Finding]] = []

    def publish(self, run_id: str, findings: Sequence[Finding], *, total_tags: int) -> int:
        accepted = tuple(f for f in findings if f.status is not Verdict.YANKED)
        self.runs.append(list(findings))
        if len(accepted) < len(findings):
            raise PublishError("1 alert message was not published", delivered=accepted)
        return len(findings)


async def test_a_yank_notice_that_was_not_accepted_is_sent_again_with_the_same_id(world: World) -> None:
    world.index.serve(WHEEL, "wheel", yanked="bad")
    world.index.files = [f for f in world.index.files if f.filename != SDIST]  # a missing alert in the same run
    rejecting = RejectingYanks()
    world.alerts = rejecting  # type: ignore[assignment]
    with pytest.raises(PublishError):
        await world.run()
    saved = FileStateStore(world.state.path).load_all()
    assert saved[(KEY[0], SDIST)].alerted_verdict is Verdict.MISSING  # its message was accepted: remembered
    assert KEY not in saved  # the wheel's only notice was not accepted: nothing about it is remembered
    [first] = [f for f in rejecting.runs[0] if f.status is Verdict.YANKED]

    with pytest.raises(PublishError):
        await world.run()
    [again] = [f for f in rejecting.runs[1] if f.status is Verdict.YANKED]
    assert (again.tag, again.notice, again.finding_id) == (WHEEL, Notice.NEW, first.finding_id)


# --------------------------------------------------------------------------------------------------- the alert


def yank_finding(reason: str, notice: Notice = Notice.NEW) -> Finding:
    record = trusted(WHEEL, "wheel")
    observation = Observation(ref=REF, status=LiveStatus.FOUND, live_digest=digest("wheel"))
    first = drift.decide_yank(matched(None), reason, now=T0)
    finding = drift.yank_finding_for(record, observation, None, first)
    if notice is Notice.RESOLVED:
        lift = drift.decide_yank(matched(first.new_state), None, now=T0)
        finding = drift.yank_finding_for(record, observation, first.new_state, lift)
    return drift.with_finding_id(finding, None)


def test_the_yank_notice_is_an_info_message_in_the_package_section_with_the_next_steps() -> None:
    [message] = alerts.render("run1", [yank_finding("broken\x1b[2J\u202emetadata\nBcc: x")], total_tags=2)
    assert message.subject == f"YANKED: pypi:https://pypi.example.com/simple/demo-pkg/{WHEEL} (1 of 2 tags)"
    assert (message.attributes["verdict"], message.attributes["severity"], message.attributes["notice"]) == (
        "yanked",
        "info",
        "new",
    )
    email = message.protocol("email")
    assert "\x1b" not in email and "\u202e" not in email
    assert "  Yanked:          broken\\x1b[2J\\u202emetadata\\x0aBcc: x" in email
    assert "serves these recorded files yanked (PEP 592)" in email
    assert "Check who yanked the release and why" in email
    assert "If nobody on the team yanked it" in email and "Rotate the index upload token" in email
    assert f"sha256sum digest-audit-check/{WHEEL}" in email  # confirm by hand, as for any package finding
    assert "restore:" not in email and "accept:" not in email  # nothing to restore: the file still matches
    for protocol in ("default", "https"):
        assert "\x1b" not in message.protocol(protocol) and "\u202e" not in message.protocol(protocol)
    [machine] = json.loads(message.protocol("sqs"))["findings"]
    assert (machine["status"], machine["notice"], machine["yanked"]) == (
        "yanked",
        "new",
        "broken\x1b[2J\u202emetadata\nBcc: x",  # exact JSON, as `check --json`
    )


def test_an_unyank_travels_with_the_resolved_notices_and_image_findings_keep_their_fields() -> None:
    [message] = alerts.render("run1", [yank_finding("", Notice.RESOLVED)], total_tags=2)
    assert (message.attributes["verdict"], message.attributes["severity"]) == ("resolved", "info")
    assert "(it was yanked: no reason given)" in message.protocol("email")
    [machine] = json.loads(message.protocol("sqs"))["findings"]
    assert (machine["status"], machine["notice"], machine["yanked"]) == ("yanked", "resolved", None)

    image = Finding(
        reference="org/app:1.0", registry="registry.example.com", repository="org/app", tag="1.0",
        trusted_digest=digest("a"), live_digest=digest("b"), status=Verdict.DRIFT, reason=None, checked_at=T0,
    )  # fmt: skip
    assert "yanked" not in alerts.machine_finding(image)
