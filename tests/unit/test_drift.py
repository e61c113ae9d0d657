"""The pure decision core: verdicts, untracked tags, alert state transitions and the findings they produce."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from audit.drift import (
    PINNED,
    AlertPolicy,
    Decision,
    PlatformChanges,
    TagPolicy,
    decide,
    finding_for,
    is_referrer_tag,
    judge,
    platform_changes,
    policy_for,
    untracked_tags,
)
from audit.models import Digest, ImageRef, LiveStatus, MediaType, MovingMode, Notice, Observation, Verdict, iso_utc
from audit.platforms import Platform
from audit.records import TagState, TrustedImage, WatchSettings
from audit.verdicts import check_verdict

NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)
DAY = timedelta(days=1)
REF = ImageRef.parse("openzaak/open-zaak:1.3.5")
POLICY = AlertPolicy()
LATEST = TagPolicy(MovingMode.LATEST_RECORDED)
ANY = TagPolicy(MovingMode.ANY_TRUSTED)


def d(n: int) -> Digest:
    return Digest(algorithm="sha256", hex=f"{n:064x}")


def trusted(
    digest: Digest | None = None,
    *,
    platforms: dict[str, Digest] | None = None,
    media_type: MediaType | None = None,
) -> TrustedImage:
    return TrustedImage(
        registry=REF.registry,
        repository=REF.repository,
        tag="1.3.5",
        digest=digest or d(1),
        platforms=platforms,
        media_type=media_type,
        source="https://ci.example/runs/7",
        commit="abc123",
        recorded_at=NOW - 30 * DAY,
    )


def earlier(digest: Digest, days_ago: int = 60) -> TrustedImage:
    """A record this tag had before (as TrustReader.history returns it)."""
    return trusted(digest).model_copy(update={"recorded_at": NOW - days_ago * DAY})


def observed(
    digest: Digest | None = None,
    *,
    status: LiveStatus = LiveStatus.FOUND,
    platforms: dict[str, Digest] | None = None,
    media_type: MediaType | None = None,
    reason: str | None = None,
) -> Observation:
    return Observation(
        ref=REF,
        status=status,
        live_digest=digest if status is LiveStatus.FOUND or digest else None,
        platforms=platforms,
        media_type=media_type,
        reason=reason,
        checked_at=NOW,
    )


def missing(reason: str | None = None) -> Observation:
    return observed(status=LiveStatus.MISSING, reason=reason)


def unverifiable(reason: str = "HTTP 503 from the registry", digest: Digest | None = None) -> Observation:
    return observed(digest, status=LiveStatus.UNVERIFIABLE, reason=reason)


# --------------------------------------------------------------------------------------------------- policies


def test_policy_for_defaults_to_pinned() -> None:
    assert policy_for(None, "latest") == PINNED
    settings = WatchSettings(
        registry=REF.registry, repository=REF.repository, moving={"latest": MovingMode.ANY_TRUSTED}
    )
    assert policy_for(settings, "1.3.5").pinned
    assert policy_for(settings, "latest") == ANY
    assert policy_for(settings, "latest").needs_all_trusted
    assert not LATEST.needs_all_trusted
    assert str(PINNED) == "pinned" and str(ANY) == "moving (any-trusted)"


def test_policy_for_takes_exact_tags_not_patterns() -> None:
    with pytest.raises(ValidationError, match="invalid moving tag"):  # a pattern is not a tag name
        WatchSettings(registry=REF.registry, repository=REF.repository, moving={"1.*": MovingMode.LATEST_RECORDED})
    settings = WatchSettings(registry=REF.registry, repository=REF.repository, moving={"1": MovingMode.LATEST_RECORDED})
    assert policy_for(settings, "1.3").pinned


@pytest.mark.parametrize(("interval", "after"), [(timedelta(0), 3), (timedelta(seconds=-1), 3), (DAY, 0)])
def test_alert_policy_rejects_nonsense(interval: timedelta, after: int) -> None:
    with pytest.raises(ValueError, match="must be"):
        AlertPolicy(reminder_interval=interval, unverifiable_after=after)


# --------------------------------------------------------------------------------------------------- judge


@dataclass(frozen=True)
class JudgeCase:
    name: str
    trusted: TrustedImage | None
    observation: Observation
    policy: TagPolicy
    verdict: Verdict
    reason_part: str | None = None
    ever: frozenset[Digest] = frozenset()
    history: tuple[Digest, ...] = ()


JUDGE_CASES = [
    JudgeCase("pinned same digest", trusted(), observed(d(1)), PINNED, Verdict.MATCH),
    JudgeCase("pinned other digest", trusted(), observed(d(2)), PINNED, Verdict.DRIFT, "CI recorded"),
    JudgeCase("latest-recorded same", trusted(), observed(d(1)), LATEST, Verdict.MATCH),
    JudgeCase("latest-recorded other", trusted(), observed(d(2)), LATEST, Verdict.DRIFT, "latest recorded"),
    JudgeCase(
        "latest-recorded rollback",
        trusted(),
        observed(d(2)),
        LATEST,
        Verdict.DRIFT,
        "rolled back to the digest recorded for this tag on",
        history=(d(2),),
    ),
    JudgeCase("pinned rollback", trusted(), observed(d(2)), PINNED, Verdict.DRIFT, "rollback", history=(d(2),)),
    JudgeCase(
        "any-trusted known",
        trusted(),
        observed(d(2)),
        ANY,
        Verdict.MATCH,
        "trusted earlier",
        ever=frozenset({d(2)}),
    ),
    JudgeCase("any-trusted via history", trusted(), observed(d(2)), ANY, Verdict.MATCH, history=(d(2),)),
    JudgeCase(
        "any-trusted unknown",
        trusted(),
        observed(d(3)),
        ANY,
        Verdict.DRIFT,
        "never recorded",
        ever=frozenset({d(2)}),
    ),
    JudgeCase("any-trusted same", trusted(), observed(d(1)), ANY, Verdict.MATCH),
    JudgeCase("missing", trusted(), missing("manifest unknown"), PINNED, Verdict.MISSING, "manifest unknown"),
    JudgeCase("missing, no reason", trusted(), missing(), PINNED, Verdict.MISSING, "no manifest"),
    JudgeCase("unverifiable", trusted(), unverifiable("HTTP 429"), PINNED, Verdict.UNVERIFIABLE, "HTTP 429"),
    JudgeCase(
        "unverifiable even with the trusted digest",
        trusted(),
        unverifiable("digest header and body disagree", d(1)),
        ANY,
        Verdict.UNVERIFIABLE,
        "disagree",
        ever=frozenset({d(1)}),
    ),
    JudgeCase("found without digest", trusted(), observed(None), PINNED, Verdict.UNVERIFIABLE, "without a digest"),
    JudgeCase("untracked found", None, observed(d(1)), PINNED, Verdict.UNTRACKED, "no trusted digest"),
    JudgeCase("untracked vanished", None, missing(), PINNED, Verdict.UNVERIFIABLE),
    JudgeCase("untracked unverifiable", None, unverifiable(), PINNED, Verdict.UNVERIFIABLE),
    JudgeCase(
        "trusted child inside live index",
        trusted(d(10)),
        observed(d(2), platforms={"linux/amd64": d(10)}, media_type=MediaType.OCI_INDEX),
        PINNED,
        Verdict.DRIFT,
        "linux/amd64 child of the live index",
    ),
    JudgeCase(
        "live is a child of the trusted index",
        trusted(d(1), platforms={"linux/amd64": d(10), "linux/arm64": d(11)}, media_type=MediaType.OCI_INDEX),
        observed(d(11), media_type=MediaType.OCI_MANIFEST),
        PINNED,
        Verdict.DRIFT,
        "serves the linux/arm64 child",
    ),
    JudgeCase(
        "index replaced by a single manifest",
        trusted(d(1), media_type=MediaType.DOCKER_LIST),
        observed(d(2), media_type=MediaType.DOCKER_MANIFEST),
        PINNED,
        Verdict.DRIFT,
        "single-platform manifest is served",
    ),
]


@pytest.mark.parametrize("case", JUDGE_CASES, ids=lambda c: c.name)
def test_judge(case: JudgeCase) -> None:
    history = [earlier(digest) for digest in case.history]
    judgement = judge(case.trusted, case.observation, policy=case.policy, ever_trusted=case.ever, history=history)
    assert judgement.verdict is case.verdict
    if case.reason_part is None:
        assert case.verdict is not Verdict.DRIFT  # a drift always explains itself
    else:
        assert judgement.reason is not None and case.reason_part in judgement.reason


def test_judge_summarises_platform_changes_of_an_index_drift() -> None:
    record = trusted(
        d(1),
        platforms={"linux/amd64": d(10), "linux/arm64": d(11), "linux/s390x": d(12)},
        media_type=MediaType.OCI_INDEX,
    )
    live = observed(
        d(2),
        platforms={"linux/amd64": d(20), "linux/arm64": d(11), "linux/riscv64": d(13)},
        media_type=MediaType.OCI_INDEX,
    )
    judgement = judge(record, live)
    assert judgement.verdict is Verdict.DRIFT
    assert judgement.platform_changes == PlatformChanges(
        changed=("linux/amd64",), added=("linux/riscv64",), removed=("linux/s390x",)
    )
    assert judgement.reason is not None
    assert "changed linux/amd64; added linux/riscv64; removed linux/s390x" in judgement.reason


def test_judge_has_no_platform_summary_when_a_side_is_unknown() -> None:
    judgement = judge(trusted(d(1)), observed(d(2), platforms={"linux/amd64": d(10)}))
    assert judgement.platform_changes is None


def test_a_drift_back_to_an_earlier_record_names_when_that_digest_was_recorded() -> None:
    history = [earlier(d(2), days_ago=90), earlier(d(3), days_ago=60), earlier(d(2), days_ago=45)]
    judgement = judge(trusted(d(1)), observed(d(2)), history=history)
    assert judgement.verdict is Verdict.DRIFT
    recorded = iso_utc(NOW - 45 * DAY)  # the latest time the tag had that digest
    assert judgement.reason == (
        f"serves {d(2).short}, CI recorded {d(1).short}; rolled back to the digest recorded for this tag on "
        f"{recorded} (a deliberate rollback, or a stale mirror?)"
    )
    assert (
        judge(trusted(d(1)), observed(d(4)), history=history).reason == f"serves {d(4).short}, CI recorded {d(1).short}"
    )


def test_an_unknown_media_type_on_either_side_claims_no_single_platform_manifest() -> None:
    # A stored record may carry a media type we do not know: it reads as unknown, never stops the judgement.
    stored = trusted(d(1)).model_dump(mode="json") | {"media_type": "application/vnd.example.list+json"}
    unknown_record = TrustedImage.model_validate(stored)
    for record, live in (
        (unknown_record, observed(d(2), media_type=MediaType.OCI_MANIFEST)),
        (trusted(d(1), media_type=MediaType.OCI_INDEX), observed(d(2))),
    ):
        judgement = judge(record, live)
        assert judgement.verdict is Verdict.DRIFT
        assert judgement.reason == f"serves {d(2).short}, CI recorded {d(1).short}"


def test_index_drift_with_identical_children_says_so() -> None:
    children = {"linux/amd64": d(10)}
    judgement = judge(trusted(d(1), platforms=children), observed(d(2), platforms=dict(children)))
    assert judgement.platform_changes == PlatformChanges()
    assert judgement.reason is not None and "no platform changed" in judgement.reason


digests = st.integers(min_value=1, max_value=6).map(d)
policies = st.sampled_from([PINNED, LATEST, ANY])


@given(
    trusted_digest=digests,
    live=digests,
    status=st.sampled_from(list(LiveStatus)),
    policy=policies,
    ever=st.frozensets(digests, max_size=4),
    history=st.lists(digests, max_size=3),
)
def test_judge_properties(
    trusted_digest: Digest,
    live: Digest,
    status: LiveStatus,
    policy: TagPolicy,
    ever: frozenset[Digest],
    history: list[Digest],
) -> None:
    judgement = judge(
        trusted(trusted_digest),
        observed(live, status=status),
        policy=policy,
        ever_trusted=ever,
        history=[earlier(digest) for digest in history],
    )
    if status is LiveStatus.UNVERIFIABLE:
        assert judgement.verdict is Verdict.UNVERIFIABLE  # never a match on something not established
    elif status is LiveStatus.MISSING:
        assert judgement.verdict is Verdict.MISSING
    elif live == trusted_digest or (policy is ANY and (live in ever or live in history)):
        assert judgement.verdict is Verdict.MATCH
    else:
        assert judgement.verdict is Verdict.DRIFT  # a swapped image is never missed
        assert judgement.reason


def test_platform_changes_needs_both_sides() -> None:
    assert platform_changes(None, {"linux/amd64": d(1)}) is None
    assert platform_changes({"linux/amd64": d(1)}, None) is None
    assert not PlatformChanges().any


# --------------------------------------------------------------------------------------------------- check


INDEX = {"linux/amd64": d(10), "linux/arm64": d(11)}


@pytest.mark.parametrize(
    ("observation", "pin", "platform", "verdict", "reason_part"),
    [
        (observed(d(1)), None, None, Verdict.RESOLVED, None),
        (observed(d(1)), d(1), None, Verdict.MATCH, None),
        (observed(d(1)), d(2), None, Verdict.DRIFT, "pinned"),
        (missing("manifest unknown"), d(1), None, Verdict.MISSING, "manifest unknown"),
        (missing(), None, None, Verdict.MISSING, "no manifest"),
        (unverifiable("HTTP 401"), d(1), None, Verdict.UNVERIFIABLE, "HTTP 401"),
        (unverifiable("HTTP 401", d(1)), d(1), None, Verdict.UNVERIFIABLE, "HTTP 401"),
        (observed(None), d(1), None, Verdict.UNVERIFIABLE, "without a digest"),
        (observed(d(1), platforms=INDEX), d(10), None, Verdict.DRIFT, "--platform linux/amd64"),
        (observed(d(1), platforms=INDEX), None, "linux/arm64", Verdict.RESOLVED, "linux/arm64 child"),
        (observed(d(1), platforms=INDEX), d(11), "linux/arm64", Verdict.MATCH, None),
        (observed(d(1), platforms=INDEX), d(1), "linux/arm64", Verdict.MATCH, "index itself"),
        (observed(d(1), platforms=INDEX), d(10), "linux/arm64", Verdict.DRIFT, "linux/arm64 child is"),
        (
            observed(d(1), platforms=INDEX),
            d(10),
            "linux/s390x",
            Verdict.UNVERIFIABLE,
            "platform linux/s390x is not in the index (it has linux/amd64, linux/arm64)",
        ),
        # Docker Hub's official images say arm64 + v8; `docker pull --platform linux/arm64` takes that child.
        (observed(d(1), platforms={"linux/arm64/v8": d(12)}), d(12), "linux/arm64", Verdict.MATCH, "linux/arm64/v8"),
        (observed(d(1), platforms=INDEX), d(11), "linux/arm64/v8", Verdict.MATCH, "linux/arm64 child"),
        (observed(d(1), platforms={"linux/arm/v7": d(13)}), None, "linux/arm", Verdict.RESOLVED, "linux/arm/v7"),
        (
            observed(d(1), media_type=MediaType.OCI_MANIFEST),
            d(1),
            "linux/amd64",
            Verdict.UNVERIFIABLE,
            "not a multi-platform index",
        ),
        (
            observed(d(1), media_type=MediaType.OCI_INDEX),
            None,
            "linux/amd64",
            Verdict.UNVERIFIABLE,
            "platforms of the index were not read",
        ),
        (missing(), d(1), "linux/amd64", Verdict.MISSING, None),
    ],
)
def test_check_verdict(
    observation: Observation,
    pin: Digest | None,
    platform: str | None,
    verdict: Verdict,
    reason_part: str | None,
) -> None:
    got, reason = check_verdict(observation, pin, Platform.parse(platform) if platform else None)
    assert got is verdict
    if reason_part is not None:
        assert reason is not None and reason_part in reason


# ------------------------------------------------------------------------------------------------- untracked

SIG = "sha256-" + "ab" * 32


@pytest.mark.parametrize(
    ("listed", "tracked", "ignore", "expected"),
    [
        (["1.0", "1.1", "latest"], {"1.0"}, (), ["1.1", "latest"]),
        (["b", "a", "a"], set(), (), ["a", "b"]),
        (["1.0", "nightly-1", "nightly-2", "pr-7"], set(), ("nightly-*", "pr-?"), ["1.0"]),
        ([f"{SIG}.sig", f"{SIG}.att", f"{SIG}.sbom", SIG, "1.0"], set(), (), ["1.0"]),
        (
            ["sha256-abc.sig", "sha256-" + "AB" * 32 + ".sig"],
            set(),
            (),
            ["sha256-" + "AB" * 32 + ".sig", "sha256-abc.sig"],
        ),
        (["Latest", "latest"], set(), ("latest",), ["Latest"]),
        (["1.0"], {"1.0"}, (), []),
        ([], set(), ("*",), []),
    ],
)
def test_untracked_tags(listed: list[str], tracked: set[str], ignore: tuple[str, ...], expected: list[str]) -> None:
    settings = WatchSettings(registry=REF.registry, repository=REF.repository, track_new_tags=True, ignore=ignore)
    assert untracked_tags(listed, tracked, settings) == expected


@pytest.mark.parametrize(
    ("tag", "expected"),
    [
        (f"{SIG}.sig", True),
        (f"{SIG}.att", True),
        (SIG, True),
        ("sha512-" + "0" * 128 + ".sig", True),
        (f"{SIG}.tar", False),
        ("sha256-1234.sig", False),
        ("1.0", False),
    ],
)
def test_is_referrer_tag(tag: str, expected: bool) -> None:
    assert is_referrer_tag(tag) is expected


# --------------------------------------------------------------------------------------------------- decide


def step(
    previous: TagState | None,
    verdict: Verdict,
    digest: Digest | None = None,
    at: datetime = NOW,
    *,
    all_failed: bool = False,
    policy: AlertPolicy = POLICY,
) -> Decision:
    return decide(previous, verdict, digest, ref=REF, now=at, policy=policy, registry_all_failed=all_failed)


def run(steps: Sequence[tuple[Verdict, Digest | None, timedelta]], *, policy: AlertPolicy = POLICY) -> list[Decision]:
    """Apply verdicts in order, saving each new state (as a successful publish would)."""
    state: TagState | None = None
    decisions: list[Decision] = []
    for verdict, digest, offset in steps:
        decision = step(state, verdict, digest, NOW + offset, policy=policy)
        decisions.append(decision)
        state = decision.new_state
    return decisions


def notices(decisions: Sequence[Decision]) -> list[Notice | None]:
    return [decision.notice for decision in decisions]


def test_first_match_is_quiet_and_remembered() -> None:
    decision = step(None, Verdict.MATCH, d(1))
    assert decision.notice is None
    state = decision.new_state
    assert (state.registry, state.repository, state.tag) == (REF.registry, REF.repository, "1.3.5")
    assert (state.last_verdict, state.last_live_digest) == (Verdict.MATCH, d(1))
    assert state.first_seen == state.last_seen == NOW
    assert state.alerted_verdict is None and state.alert_count == 0


def test_match_again_keeps_first_seen_and_moves_last_seen() -> None:
    first, second = run([(Verdict.MATCH, d(1), timedelta(0)), (Verdict.MATCH, d(1), DAY)])
    assert second.notice is None
    assert second.new_state.first_seen == NOW
    assert second.new_state.last_seen == NOW + DAY
    assert first.new_state != second.new_state


def test_drift_alerts_once_reminds_later_and_resolves() -> None:
    decisions = run(
        [
            (Verdict.MATCH, d(1), timedelta(0)),
            (Verdict.DRIFT, d(2), HOUR),  # new problem
            (Verdict.DRIFT, d(2), 2 * HOUR),  # same problem: quiet
            (Verdict.DRIFT, d(2), HOUR + DAY - timedelta(seconds=1)),  # just before the interval
            (Verdict.DRIFT, d(2), HOUR + DAY),  # reminder exactly at the interval
            (Verdict.DRIFT, d(2), 2 * DAY),  # quiet again (interval counts from the reminder)
            (Verdict.DRIFT, d(3), 2 * DAY + HOUR),  # another digest: a new alert
            (Verdict.MATCH, d(1), 3 * DAY),  # back to the trusted digest
        ]
    )
    assert notices(decisions) == [
        None,
        Notice.NEW,
        None,
        None,
        Notice.REMINDER,
        None,
        Notice.NEW,
        Notice.RESOLVED,
    ]
    drift_state = decisions[4].new_state
    assert (drift_state.alerted_verdict, drift_state.alerted_digest) == (Verdict.DRIFT, d(2))
    assert drift_state.alert_count == 2 and drift_state.last_alerted == NOW + HOUR + DAY
    assert drift_state.first_seen == NOW + HOUR
    moved = decisions[6].new_state
    assert (moved.alerted_digest, moved.alert_count, moved.first_seen) == (d(3), 1, NOW + 2 * DAY + HOUR)
    resolved = decisions[7]
    assert resolved.resolved is Verdict.DRIFT
    assert resolved.new_state.alerted_verdict is None and resolved.new_state.alerted_digest is None
    assert resolved.new_state.last_verdict is Verdict.MATCH


@pytest.mark.parametrize("problem", [Verdict.MISSING, Verdict.UNTRACKED])
def test_missing_and_untracked_alert_and_resolve(problem: Verdict) -> None:
    digest = d(5) if problem is Verdict.UNTRACKED else None
    decisions = run([(problem, digest, timedelta(0)), (problem, digest, HOUR), (Verdict.MATCH, d(5), 2 * HOUR)])
    assert notices(decisions) == [Notice.NEW, None, Notice.RESOLVED]
    assert decisions[0].new_state.alerted_verdict is problem
    assert decisions[2].resolved is problem


def test_missing_ignores_a_digest_passed_along() -> None:
    decisions = run([(Verdict.MISSING, d(1), timedelta(0)), (Verdict.MISSING, d(2), HOUR)])
    assert notices(decisions) == [Notice.NEW, None]
    assert decisions[1].new_state.alerted_digest is None


def test_no_longer_audited_closes_an_open_alert() -> None:
    decisions = run([(Verdict.UNTRACKED, d(5), timedelta(0)), (Verdict.NO_LONGER_AUDITED, None, HOUR)])
    assert notices(decisions) == [Notice.NEW, Notice.RESOLVED]
    assert decisions[1].new_state.alerted_verdict is None
    assert decisions[1].new_state.last_verdict is Verdict.NO_LONGER_AUDITED


def test_checks_resolved_is_no_verdict_of_an_audited_tag() -> None:
    with pytest.raises(ValueError, match="unexpected verdict"):
        run([(Verdict.RESOLVED, d(1), timedelta(0))])


def test_unverifiable_alerts_after_the_streak_then_reminds_then_resolves() -> None:
    decisions = run(
        [
            (Verdict.MATCH, d(1), timedelta(0)),
            (Verdict.UNVERIFIABLE, None, 1 * HOUR),
            (Verdict.UNVERIFIABLE, None, 2 * HOUR),
            (Verdict.UNVERIFIABLE, None, 3 * HOUR),  # third in a row: alert
            (Verdict.UNVERIFIABLE, None, 4 * HOUR),
            (Verdict.UNVERIFIABLE, None, 3 * HOUR + DAY),  # reminder
            (Verdict.MATCH, d(1), 3 * HOUR + DAY + HOUR),
        ]
    )
    assert notices(decisions) == [None, None, None, Notice.NEW, None, Notice.REMINDER, Notice.RESOLVED]
    streak = decisions[3].new_state
    assert streak.consecutive_unverifiable == 3
    assert (streak.last_verdict, streak.first_seen) == (Verdict.UNVERIFIABLE, NOW + HOUR)
    assert decisions[6].resolved is Verdict.UNVERIFIABLE
    assert decisions[6].new_state.consecutive_unverifiable == 0


def test_a_verified_run_breaks_the_unverifiable_streak() -> None:
    decisions = run(
        [
            (Verdict.UNVERIFIABLE, None, timedelta(0)),
            (Verdict.UNVERIFIABLE, None, HOUR),
            (Verdict.MATCH, d(1), 2 * HOUR),
            (Verdict.UNVERIFIABLE, None, 3 * HOUR),
            (Verdict.UNVERIFIABLE, None, 4 * HOUR),
        ]
    )
    assert notices(decisions) == [None, None, None, None, None]
    assert decisions[-1].new_state.consecutive_unverifiable == 2


def test_unverifiable_after_is_configurable() -> None:
    policy = AlertPolicy(unverifiable_after=1)
    assert step(None, Verdict.UNVERIFIABLE, policy=policy).notice is Notice.NEW


def test_whole_registry_failing_alerts_at_once() -> None:
    decision = step(None, Verdict.UNVERIFIABLE, all_failed=True)
    assert decision.notice is Notice.NEW
    assert decision.new_state.alerted_verdict is Verdict.UNVERIFIABLE
    again = step(decision.new_state, Verdict.UNVERIFIABLE, at=NOW + HOUR, all_failed=True)
    assert again.notice is None  # still the same open problem: no second NEW


def test_unverifiable_never_closes_nor_replaces_an_open_drift() -> None:
    decisions = run(
        [
            (Verdict.DRIFT, d(2), timedelta(0)),
            *[(Verdict.UNVERIFIABLE, None, n * HOUR) for n in range(1, 6)],
            (Verdict.UNVERIFIABLE, None, DAY),  # the drift reminder is due
            (Verdict.DRIFT, d(2), DAY + HOUR),  # visible again: same problem, no new alert
            (Verdict.MATCH, d(1), DAY + 2 * HOUR),
        ]
    )
    assert notices(decisions) == [
        Notice.NEW,
        None,
        None,
        None,
        None,
        None,
        Notice.REMINDER,
        None,
        Notice.RESOLVED,
    ]
    during = decisions[5].new_state
    assert (during.alerted_verdict, during.alerted_digest) == (Verdict.DRIFT, d(2))
    assert (during.last_verdict, during.last_live_digest, during.first_seen) == (Verdict.DRIFT, d(2), NOW)
    assert during.consecutive_unverifiable == 5
    assert decisions[7].new_state.first_seen == NOW  # the drift's age survives the blind spell
    assert decisions[7].new_state.consecutive_unverifiable == 0
    assert decisions[8].resolved is Verdict.DRIFT


def test_open_unverifiable_alert_gives_way_to_a_drift() -> None:
    decisions = run(
        [
            (Verdict.UNVERIFIABLE, None, timedelta(0)),
            (Verdict.UNVERIFIABLE, None, HOUR),
            (Verdict.UNVERIFIABLE, None, 2 * HOUR),
            (Verdict.DRIFT, d(2), 3 * HOUR),
        ]
    )
    assert notices(decisions) == [None, None, Notice.NEW, Notice.NEW]
    assert decisions[-1].new_state.alerted_verdict is Verdict.DRIFT


def test_missing_after_drift_is_a_new_alert() -> None:
    decisions = run([(Verdict.DRIFT, d(2), timedelta(0)), (Verdict.MISSING, None, HOUR)])
    assert notices(decisions) == [Notice.NEW, Notice.NEW]


def test_decide_refuses_mismatched_input() -> None:
    state = step(None, Verdict.MATCH, d(1)).new_state
    with pytest.raises(ValueError, match="given for"):
        decide(state, Verdict.MATCH, d(1), ref=REF.with_tag("other"), now=NOW)
    with pytest.raises(ValueError, match="tagged reference"):
        decide(None, Verdict.MATCH, d(1), ref=ImageRef.parse(f"nginx@{d(1)}"), now=NOW)


def test_failed_publish_means_the_same_notice_next_run() -> None:
    """Publish first, then save: when nothing was saved, the next run must alert again."""
    before = step(None, Verdict.MATCH, d(1)).new_state
    first_try = step(before, Verdict.DRIFT, d(2), NOW + HOUR)
    assert first_try.notice is Notice.NEW
    # publish failed: the service saved nothing, so the next run starts from `before` again
    retry = step(before, Verdict.DRIFT, d(2), NOW + 2 * HOUR)
    assert retry.notice is Notice.NEW
    # once saved, the same problem is quiet
    assert step(retry.new_state, Verdict.DRIFT, d(2), NOW + 3 * HOUR).notice is None


VERDICTS = [Verdict.MATCH, Verdict.DRIFT, Verdict.MISSING, Verdict.UNTRACKED, Verdict.UNVERIFIABLE]
runs = st.lists(
    st.tuples(
        st.sampled_from(VERDICTS),
        digests,
        st.integers(min_value=0, max_value=3 * 24 * 60).map(lambda m: timedelta(minutes=m)),
        st.booleans(),
    ),
    min_size=1,
    max_size=25,
)


Step = tuple[Verdict, Digest, timedelta, bool]


@dataclass(frozen=True)
class Replayed:
    previous: TagState | None
    at: datetime
    verdict: Verdict
    digest: Digest
    all_failed: bool
    decision: Decision

    def again(self, previous: TagState | None, at: datetime) -> Decision:
        return step(previous, self.verdict, self.digest, at, all_failed=self.all_failed)


def _history(steps: list[Step]) -> list[Replayed]:
    state: TagState | None = None
    at = NOW
    out: list[Replayed] = []
    for verdict, digest, gap, all_failed in steps:
        at += gap
        decision = step(state, verdict, digest, at, all_failed=all_failed)
        out.append(Replayed(state, at, verdict, digest, all_failed, decision))
        state = decision.new_state
    return out


@given(steps=runs)
def test_transition_invariants(steps: list[Step]) -> None:
    for item in _history(steps):
        previous, at, verdict, digest, decision = (
            item.previous,
            item.at,
            item.verdict,
            item.digest,
            item.decision,
        )
        state = decision.new_state
        was_open = previous.alerted_verdict if previous else None
        was_digest = previous.alerted_digest if previous else None
        assert state.last_seen == at and state.first_seen <= state.last_seen
        assert (state.alerted_verdict is None) == (state.alert_count == 0)
        assert (decision.resolved is not None) == (decision.notice is Notice.RESOLVED)
        if verdict is Verdict.MATCH:
            assert state.alerted_verdict is None  # a verified match closes everything
            assert (decision.notice is Notice.RESOLVED) == (was_open is not None)
            assert decision.resolved == was_open
            assert state.consecutive_unverifiable == 0
        elif verdict is Verdict.UNVERIFIABLE:
            streak = (previous.consecutive_unverifiable if previous else 0) + 1
            assert state.consecutive_unverifiable == streak
            assert decision.notice is not Notice.RESOLVED
            if was_open is not None:  # never lost, never replaced by "unverifiable"
                assert (state.alerted_verdict, state.alerted_digest) == (was_open, was_digest)
                assert decision.notice in (None, Notice.REMINDER)
            elif decision.notice is not None:
                assert decision.notice is Notice.NEW and state.alerted_verdict is Verdict.UNVERIFIABLE
                assert streak >= POLICY.unverifiable_after or item.all_failed
            else:
                assert streak < POLICY.unverifiable_after and not item.all_failed
        else:
            expected_digest = digest if verdict is not Verdict.MISSING else None
            assert (state.alerted_verdict, state.alerted_digest) == (verdict, expected_digest)  # never missed
            assert state.consecutive_unverifiable == 0
            same = (was_open, was_digest) == (verdict, expected_digest)
            assert (decision.notice is Notice.NEW) == (not same)
            assert decision.notice is not Notice.RESOLVED
        if decision.notice is Notice.REMINDER:
            assert previous is not None and previous.last_alerted is not None
            assert at - previous.last_alerted >= POLICY.reminder_interval
            assert state.alert_count == previous.alert_count + 1


@given(steps=runs, delay=st.integers(min_value=0, max_value=10 * 24 * 60).map(lambda m: timedelta(minutes=m)))
def test_unsaved_notices_come_back(steps: list[Step], delay: timedelta) -> None:
    """Any notice not saved (a failed publish) is produced again by a later run from the same state."""
    for item in _history(steps):
        if item.decision.notice is None:
            continue
        later = item.again(item.previous, item.at + delay)
        assert later.notice is item.decision.notice
        assert later.resolved is item.decision.resolved


@given(steps=runs)
def test_saved_state_never_repeats_a_notice_at_once(steps: list[Step]) -> None:
    """Saving after publishing makes the same verdict at the same moment quiet (no duplicate alerts)."""
    for item in _history(steps):
        if item.verdict is Verdict.UNVERIFIABLE and not item.decision.notice:
            continue  # one more blind run may legitimately complete a streak
        assert item.again(item.decision.new_state, item.at).notice is None


# --------------------------------------------------------------------------------------------------- findings


def test_finding_for_a_new_drift() -> None:
    record = trusted(d(1), platforms={"linux/amd64": d(10)})
    live = observed(d(2), platforms={"linux/amd64": d(20)}, media_type=MediaType.OCI_INDEX)
    judgement = judge(record, live)
    decision = step(None, judgement.verdict, live.live_digest)
    assert decision.notice is not None
    finding = finding_for(record, live, judgement.verdict, judgement.reason, decision.new_state, decision.notice)
    assert finding.reference == "openzaak/open-zaak:1.3.5"
    assert (finding.registry, finding.repository, finding.tag) == (REF.registry, REF.repository, "1.3.5")
    assert (finding.status, finding.notice, finding.alert_verdict) == (Verdict.DRIFT, Notice.NEW, "drift")
    assert (finding.trusted_digest, finding.live_digest) == (d(1), d(2))
    assert finding.reason == judgement.reason
    assert (finding.source, finding.commit, finding.recorded_at) == (
        record.source,
        "abc123",
        record.recorded_at,
    )
    assert finding.first_seen == NOW and finding.checked_at == NOW
    assert finding.platforms == {"linux/amd64": d(20)} and finding.trusted_platforms == {"linux/amd64": d(10)}


def test_finding_for_a_resolution_names_what_was_resolved() -> None:
    opened = step(None, Verdict.DRIFT, d(2)).new_state
    decision = step(opened, Verdict.MATCH, d(1), NOW + HOUR)
    assert decision.notice is Notice.RESOLVED
    finding = finding_for(
        trusted(),
        observed(d(1)),
        Verdict.MATCH,
        None,
        decision.new_state,
        decision.notice,
        resolved=decision.resolved,
    )
    assert (finding.status, finding.alert_verdict, finding.live_digest) == (Verdict.MATCH, "resolved", d(1))
    assert finding.reason == "drift resolved: the registry serves a trusted digest"


def test_finding_for_a_drift_reminded_while_unverifiable() -> None:
    opened = step(None, Verdict.DRIFT, d(2)).new_state
    decision = step(opened, Verdict.UNVERIFIABLE, None, NOW + DAY)
    assert decision.notice is Notice.REMINDER
    finding = finding_for(
        trusted(),
        unverifiable("HTTP 503"),
        Verdict.UNVERIFIABLE,
        "HTTP 503",
        decision.new_state,
        decision.notice,
    )
    assert (finding.status, finding.live_digest, finding.alert_verdict) == (Verdict.DRIFT, d(2), "drift")
    assert finding.reason is not None and "could not verify" in finding.reason and "HTTP 503" in finding.reason
    assert finding.first_seen == NOW


def test_finding_for_an_unverifiable_streak_and_an_untracked_tag() -> None:
    decisions = run([(Verdict.UNVERIFIABLE, None, n * HOUR) for n in range(3)])
    last = decisions[-1]
    assert last.notice is Notice.NEW
    finding = finding_for(
        trusted(), unverifiable("HTTP 429"), Verdict.UNVERIFIABLE, "HTTP 429", last.new_state, last.notice
    )
    assert finding.status is Verdict.UNVERIFIABLE and finding.live_digest is None
    assert finding.reason == "HTTP 429 (3 runs in a row)"
    assert finding.first_seen == NOW

    untracked = step(None, Verdict.UNTRACKED, d(7))
    assert untracked.notice is Notice.NEW
    finding = finding_for(
        None, observed(d(7)), Verdict.UNTRACKED, "no trusted digest", untracked.new_state, untracked.notice
    )
    assert (finding.status, finding.live_digest, finding.trusted_digest) == (Verdict.UNTRACKED, d(7), None)
    assert finding.source is None and finding.recorded_at is None
