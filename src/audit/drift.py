"""The pure decision core: a tag's verdict, untracked tags, and whether a run alerts, reminds or resolves.

No I/O and no clock reads (the service passes time in), so every rule is a table-testable function.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING

from audit.config import DEFAULT_REMINDER_INTERVAL, DEFAULT_UNVERIFIABLE_AFTER
from audit.models import Digest, ImageRef, LiveStatus, MovingMode, Notice, Observation, Verdict, iso_utc
from audit.packages import IndexFile, ProjectPage, parse_filename
from audit.reference import is_valid_tag, rejected_tag_key
from audit.verdicts import Judgement, established, is_index, is_single, platform_of

if TYPE_CHECKING:  # the records are pydantic models, built only by the run's decisions (imported there)
    from audit.records import Finding, TagState, TrustedImage, WatchSettings

# cosign signatures/attestations/SBOMs and the OCI 1.1 referrers fallback tag: `<alg>-<hex>[.sig|.att|.sbom]`.
_REFERRER_TAG_RE = re.compile(r"^(?:sha256-[0-9a-f]{64}|sha512-[0-9a-f]{128})(?:\.(?:sig|att|sbom))?$")

#: Verdicts that say "something is wrong with this tag" once established by a verified run.
PROBLEM_VERDICTS = frozenset({Verdict.DRIFT, Verdict.MISSING, Verdict.UNTRACKED})
#: Verdicts that close an open alert: the tag verifies again, or it left the audit.
CLEARING_VERDICTS = frozenset({Verdict.MATCH, Verdict.NO_LONGER_AUDITED})
# Only these verdicts are about a particular live digest; the others are remembered without one.
_DIGEST_VERDICTS = frozenset({Verdict.MATCH, Verdict.DRIFT, Verdict.UNTRACKED})


# --------------------------------------------------------------------------------------------------- policies


@dataclass(frozen=True, slots=True)
class TagPolicy:
    """How a tag may change: pinned (`moving is None`) or moving under a MovingMode."""

    moving: MovingMode | None = None

    @property
    def pinned(self) -> bool:
        return self.moving is None

    @property
    def needs_all_trusted(self) -> bool:
        """Whether judge() needs every digest ever recorded for the repository (`ever_trusted`)."""
        return self.moving is MovingMode.ANY_TRUSTED

    def __str__(self) -> str:
        return "pinned" if self.moving is None else f"moving ({self.moving.value})"


PINNED = TagPolicy()


def policy_for(settings: WatchSettings | None, tag: str) -> TagPolicy:
    """The policy of one tag: moving only when the repository settings name it exactly (no patterns)."""
    if settings is None:
        return PINNED
    return TagPolicy(moving=settings.moving.get(tag))


@dataclass(frozen=True, slots=True)
class AlertPolicy:
    """When to remind about an open problem, and how many unverifiable runs in a row make an alert."""

    reminder_interval: timedelta = DEFAULT_REMINDER_INTERVAL
    unverifiable_after: int = DEFAULT_UNVERIFIABLE_AFTER

    def __post_init__(self) -> None:
        # A zero interval would remind on every run; zero runs would alert on a single network blip.
        if self.reminder_interval <= timedelta(0):
            raise ValueError("reminder_interval must be positive")
        if self.unverifiable_after < 1:
            raise ValueError("unverifiable_after must be at least 1")


DEFAULT_ALERT_POLICY = AlertPolicy()


# --------------------------------------------------------------------------------------------------- judging


@dataclass(frozen=True, slots=True)
class PlatformChanges:
    """How the children of a multi-platform index differ between the trusted and the live index."""

    changed: tuple[str, ...] = ()
    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()

    @property
    def any(self) -> bool:
        return bool(self.changed or self.added or self.removed)

    def describe(self) -> str:
        if not self.any:
            return "no platform changed (only the index itself differs)"
        parts = [
            f"{label} {', '.join(names)}"
            for label, names in (("changed", self.changed), ("added", self.added), ("removed", self.removed))
            if names
        ]
        return "; ".join(parts)


def platform_changes(trusted: Mapping[str, Digest] | None, live: Mapping[str, Digest] | None) -> PlatformChanges | None:
    """Compare two platform → child digest maps; None when either side is unknown."""
    if trusted is None or live is None:
        return None
    return PlatformChanges(
        changed=tuple(sorted(p for p in trusted.keys() & live.keys() if trusted[p] != live[p])),
        added=tuple(sorted(live.keys() - trusted.keys())),
        removed=tuple(sorted(trusted.keys() - live.keys())),
    )


def judge(
    trusted: TrustedImage | None,
    observation: Observation,
    *,
    policy: TagPolicy = PINNED,
    ever_trusted: Collection[Digest] = frozenset(),
    history: Sequence[TrustedImage] = (),
) -> Judgement:
    """Compare what the registry serves with the trusted record.

    - UNVERIFIABLE observations stay unverifiable: nothing that was not established is ever a match.
    - MISSING is missing; for a tag nobody recorded (`trusted is None`) it is unverifiable instead, since a
      listed tag without a manifest says nothing about trust.
    - FOUND: equal digests match under every policy. Otherwise a pinned or `latest-recorded` tag drifts;
      an `any-trusted` tag matches when the live digest is in `ever_trusted` (or this tag's `history`).
    - A drift back to a digest in `history` (this tag's earlier records; the audit passes them only for a
      drift) says so: "rolled back to the digest recorded on …".
    - A trusted index digest and a live child digest (or the reverse) are never called a match: the tag did
      change what it names, and the reason says how to fix a record that named a platform digest.
    """
    if trusted is None and observation.status is LiveStatus.MISSING:
        return Judgement(Verdict.UNVERIFIABLE, observation.reason or "a listed tag has no manifest")
    live = established(observation, missing="the registry has no manifest for this tag")
    if isinstance(live, Judgement):
        return live
    if trusted is None:
        return Judgement(Verdict.UNTRACKED, "no trusted digest recorded for this tag")
    if live == trusted.digest:
        return Judgement(Verdict.MATCH)
    earlier = _latest_record_of(live, history)
    if policy.moving is MovingMode.ANY_TRUSTED and (live in ever_trusted or earlier is not None):
        return Judgement(
            Verdict.MATCH, f"moving tag (any-trusted): {live.short} was trusted earlier in this repository"
        )
    changes = platform_changes(trusted.platforms, observation.platforms)
    return Judgement(
        Verdict.DRIFT,
        _drift_reason(trusted, observation=observation, live=live, policy=policy, earlier=earlier, changes=changes),
        changes,
    )


def _drift_reason(
    trusted: TrustedImage,
    *,
    observation: Observation,
    live: Digest,
    policy: TagPolicy,
    earlier: TrustedImage | None,
    changes: PlatformChanges | None,
) -> str:
    if policy.moving is MovingMode.ANY_TRUSTED:
        parts = [f"moving tag (any-trusted): {live.short} was never recorded for this repository"]
    elif policy.moving is MovingMode.LATEST_RECORDED:
        parts = [f"moving tag (latest-recorded): serves {live.short}, latest recorded {trusted.digest.short}"]
    else:
        parts = [f"serves {live.short}, CI recorded {trusted.digest.short}"]
    if earlier is not None:
        parts.append(
            f"rolled back to the digest recorded for this tag on {iso_utc(earlier.recorded_at)} "
            "(a deliberate rollback, or a stale mirror?)"
        )
    live_child = platform_of(trusted.digest, observation.platforms)
    served_child = platform_of(live, trusted.platforms)
    if live_child is not None:
        parts.append(
            f"the trusted digest is the {live_child} child of the live index; if CI recorded a platform "
            "digest, record the index digest instead"
        )
    elif served_child is not None:
        parts.append(
            f"the registry serves the {served_child} child of the trusted index (re-pushed as one platform, "
            "or the registry ignored the Accept header)"
        )
    elif is_index(trusted.media_type) and is_single(observation.media_type):
        parts.append("an index was recorded but a single-platform manifest is served")
    if changes is not None:
        parts.append(f"platforms: {changes.describe()}")
    return "; ".join(parts)


def _latest_record_of(digest: Digest, history: Sequence[TrustedImage]) -> TrustedImage | None:
    """The most recent earlier record of the tag with this digest, if it ever had it."""
    matching = [record for record in history if record.digest == digest]
    return max(matching, key=lambda record: record.recorded_at) if matching else None


# --------------------------------------------------------------------------------------------------- tags


def is_referrer_tag(tag: str) -> bool:
    """cosign `.sig`/`.att`/`.sbom` tags and OCI referrers fallback tags: artefacts about images."""
    return _REFERRER_TAG_RE.match(tag) is not None


def untracked_tags(listed: Sequence[str], trusted_tags: Collection[str], settings: WatchSettings) -> list[str]:
    """Tags the registry lists that nobody recorded, minus ignore globs and referrer tags; sorted, unique.

    Patterns match case-sensitively (tags are case-sensitive). Whether to list tags at all is the caller's
    decision (`settings.track_new_tags`).
    """
    return sorted(
        {
            tag
            for tag in listed
            if tag not in trusted_tags
            and not is_referrer_tag(tag)
            and not any(fnmatchcase(tag, pattern) for pattern in settings.ignore)
        }
    )


# --------------------------------------------------------------------------------------------------- deciding


@dataclass(frozen=True, slots=True)
class Decision:
    """The state to save for a tag after this run, and the notice to publish first (if any).

    `resolved` names the problem a RESOLVED notice closes (the new state no longer holds it). `yank_notice` is
    the notice of a package file's yank (see `decide_yank`), which comes on top of the verdict's notice.
    """

    new_state: TagState
    notice: Notice | None = None
    resolved: Verdict | None = None
    yank_notice: Notice | None = None


def decide(
    previous: TagState | None,
    verdict: Verdict,
    live_digest: Digest | None,
    *,
    ref: ImageRef,
    now: datetime,
    policy: AlertPolicy = DEFAULT_ALERT_POLICY,
    registry_all_failed: bool = False,
) -> Decision:
    """Advance one tag's state by this run's verdict and say whether to alert.

    - An open alert is the pair (alerted_verdict, alerted_digest). A problem verdict (drift, missing,
      untracked) that differs from it opens a NEW alert (a drift to another digest is a new alert); the same
      problem again is quiet until `reminder_interval` has passed since the last notice (REMINDER).
    - MATCH (or NO_LONGER_AUDITED: the tag left the audit) closes an open alert with a RESOLVED notice.
    - UNVERIFIABLE counts `consecutive_unverifiable`. It never closes nor replaces an open drift, missing or
      untracked alert: that problem stays the tag's status (last_verdict, its digest and first_seen are kept)
      and keeps its reminders, because an unverified run proves nothing. With no open problem, the tag's
      status becomes unverifiable and a NEW alert goes out once the streak reaches `unverifiable_after`, or at
      once when every tag of the registry failed (credentials or network, not one tag).
    - first_seen changes only when the status (verdict, digest) changes; last_seen is always `now`.

    Publish-then-save is safe: the result depends only on the arguments, so when a publish fails and
    nothing is saved, the next run computes the same notice again from the same previous state.
    """
    from audit.records import TagState  # noqa: PLC0415 - pydantic: not on check's path

    if ref.tag is None:
        raise ValueError(f"decide needs a tagged reference, not {ref}")
    if previous is not None and previous.key != (ref.image, ref.tag):
        raise ValueError(f"state of {previous.image}:{previous.tag} given for {ref.image}:{ref.tag}")
    digest = live_digest if verdict in _DIGEST_VERDICTS else None
    open_verdict = previous.alerted_verdict if previous is not None else None
    open_digest = previous.alerted_digest if previous is not None else None

    if verdict is Verdict.UNVERIFIABLE:
        return _decide_unverifiable(
            previous, ref=ref, tag=ref.tag, now=now, policy=policy, registry_all_failed=registry_all_failed
        )

    if previous is not None and (previous.last_verdict, previous.last_live_digest) == (verdict, digest):
        first_seen = previous.first_seen
    else:
        first_seen = now
    state = TagState(
        registry=ref.registry,
        repository=ref.repository,
        tag=ref.tag,
        last_verdict=verdict,
        last_live_digest=digest,
        first_seen=first_seen,
        last_seen=now,
        last_alerted=previous.last_alerted if previous is not None else None,
        alert_count=previous.alert_count if previous is not None else 0,
        consecutive_unverifiable=0,
        alerted_verdict=open_verdict,
        alerted_digest=open_digest,
        # Only decide_yank moves the yank part of a package file's state.
        yank_notified=previous.yank_notified if previous is not None else None,
        yank_notice_at=previous.yank_notice_at if previous is not None else None,
    )

    if verdict in CLEARING_VERDICTS:
        if open_verdict is None:
            return Decision(state)
        closed = state.model_copy(
            update={"alerted_verdict": None, "alerted_digest": None, "last_alerted": now, "alert_count": 0}
        )
        return Decision(closed, Notice.RESOLVED, resolved=open_verdict)

    if verdict not in PROBLEM_VERDICTS:
        raise ValueError(f"unexpected verdict {verdict!r} for an audited tag")
    if previous is not None and (open_verdict, open_digest) == (verdict, digest):
        return _remind_if_due(previous, state, now, policy)
    opened = state.model_copy(
        update={"alerted_verdict": verdict, "alerted_digest": digest, "last_alerted": now, "alert_count": 1}
    )
    return Decision(opened, Notice.NEW)


def _decide_unverifiable(
    previous: TagState | None,
    *,
    ref: ImageRef,
    tag: str,
    now: datetime,
    policy: AlertPolicy,
    registry_all_failed: bool,
) -> Decision:
    from audit.records import TagState  # noqa: PLC0415 - pydantic: not on check's path

    streak = (previous.consecutive_unverifiable if previous is not None else 0) + 1
    open_verdict = previous.alerted_verdict if previous is not None else None
    if previous is not None and open_verdict is not None and open_verdict is not Verdict.UNVERIFIABLE:
        # An open problem outlives runs that cannot see the tag: keep it as the status, keep reminding.
        kept = previous.model_copy(update={"last_seen": now, "consecutive_unverifiable": streak})
        return _remind_if_due(previous, kept, now, policy)

    continuing = previous is not None and previous.last_verdict is Verdict.UNVERIFIABLE
    state = TagState(
        registry=ref.registry,
        repository=ref.repository,
        tag=tag,
        last_verdict=Verdict.UNVERIFIABLE,
        last_live_digest=None,
        first_seen=previous.first_seen if previous is not None and continuing else now,
        last_seen=now,
        last_alerted=previous.last_alerted if previous is not None else None,
        alert_count=previous.alert_count if previous is not None else 0,
        consecutive_unverifiable=streak,
        alerted_verdict=open_verdict,
        alerted_digest=None,
        # Only decide_yank moves the yank part of a package file's state.
        yank_notified=previous.yank_notified if previous is not None else None,
        yank_notice_at=previous.yank_notice_at if previous is not None else None,
    )
    if previous is not None and open_verdict is Verdict.UNVERIFIABLE:
        return _remind_if_due(previous, state, now, policy)
    if streak >= policy.unverifiable_after or registry_all_failed:
        opened = state.model_copy(
            update={"alerted_verdict": Verdict.UNVERIFIABLE, "last_alerted": now, "alert_count": 1}
        )
        return Decision(opened, Notice.NEW)
    return Decision(state)


def _remind_if_due(previous: TagState, state: TagState, now: datetime, policy: AlertPolicy) -> Decision:
    last = previous.last_alerted
    if last is not None and now - last < policy.reminder_interval:
        return Decision(state)
    reminded = state.model_copy(update={"last_alerted": now, "alert_count": previous.alert_count + 1})
    return Decision(reminded, Notice.REMINDER)


def decide_yank(decision: Decision, yanked: str | None, *, now: datetime) -> Decision:
    """Advance the yank part of a recorded package file's state by what its index lists now (PEP 592).

    `yanked` is the reason the index gives ("" for none), None when it lists the file un-yanked. Call it only
    when the index listed the recorded file: a run that did not see the listing (index down, file gone) leaves
    the yank part as `decide` carried it over.

    A yank is news once: a NEW notice when the index starts serving the file yanked, nothing while it stays
    yanked (whatever reason it gives later: a yank has no reminders), a RESOLVED notice when the file is served
    un-yanked again. The verdict part is untouched: a yanked file that matches stays a match, and an open drift
    or missing alert stays open with its own notices.
    """
    state = decision.new_state
    if yanked is not None and state.yank_notified is None:
        update: dict[str, str | datetime | None] = {"yank_notified": yanked, "yank_notice_at": now}
        return replace(decision, new_state=state.model_copy(update=update), yank_notice=Notice.NEW)
    if yanked is None and state.yank_notified is not None:
        update = {"yank_notified": None, "yank_notice_at": now}
        return replace(decision, new_state=state.model_copy(update=update), yank_notice=Notice.RESOLVED)
    return decision


# --------------------------------------------------------------------------------------------------- findings


def finding_for(  # noqa: PLR0917 - the service passes the six facts positionally
    trusted: TrustedImage | None,
    observation: Observation,
    verdict: Verdict,
    reason: str | None,
    state: TagState,
    notice: Notice,
    *,
    resolved: Verdict | None = None,
    yanked: str | None = None,
) -> Finding:
    """The alertable fact behind a notice; `state` is the decision's new state, `resolved` its `resolved`,
    `yanked` what a package index says about the file's yank now (PEP 592; None for images).

    NEW and REMINDER findings report the open problem (state.alerted_*). When this run was unverifiable but
    an older problem is still open, the finding reports that problem with its last seen digest and says the
    tag could not be verified now. RESOLVED findings carry this run's verdict (usually match).
    """
    from audit.records import Finding  # noqa: PLC0415 - pydantic: not on check's path

    ref = ImageRef(registry=state.registry, repository=state.repository, tag=state.tag)
    status = verdict
    live = observation.live_digest if verdict in _DIGEST_VERDICTS else None
    first_seen: datetime | None = state.first_seen
    if notice is Notice.RESOLVED:
        what = resolved.value if resolved is not None else "the alert"
        because = reason or ("the registry serves a trusted digest" if verdict is Verdict.MATCH else "")
        reason = f"{what} resolved: {because}" if because else f"{what} resolved"
    else:
        status = state.alerted_verdict or verdict
        live = state.alerted_digest
        if status is not verdict:
            unverified = reason or "no reason given"
            reason = f"still open from an earlier run; this run could not verify the tag: {unverified}"
        elif status is Verdict.UNVERIFIABLE and state.consecutive_unverifiable > 1:
            reason = f"{reason or 'no digest established'} ({state.consecutive_unverifiable} runs in a row)"
        if state.last_verdict is not status:
            first_seen = None
    return Finding(
        reference=ref.familiar,
        registry=ref.registry,
        repository=ref.repository,
        tag=ref.tag,
        trusted_digest=trusted.digest if trusted is not None else None,
        live_digest=live,
        status=status,
        reason=reason,
        checked_at=observation.checked_at,
        platforms=observation.platforms,
        trusted_platforms=trusted.platforms if trusted is not None else None,
        source=trusted.source if trusted is not None else None,
        commit=trusted.commit if trusted is not None else None,
        recorded_at=trusted.recorded_at if trusted is not None else None,
        first_seen=first_seen,
        notice=notice,
        yanked=yanked,
    )


def yank_finding_for(
    trusted: TrustedImage, observation: Observation, previous: TagState | None, decision: Decision
) -> Finding:
    """The notice behind `decision.yank_notice`: the index started (NEW) or stopped (RESOLVED) serving a recorded
    package file yanked. Its status is YANKED whatever the file's verdict, which has findings of its own."""
    from audit.records import Finding  # noqa: PLC0415 - pydantic: not on check's path

    notice = decision.yank_notice
    if notice is None:
        raise ValueError("yank_finding_for needs a decision with a yank notice")
    state = decision.new_state
    ref = ImageRef(registry=state.registry, repository=state.repository, tag=state.tag)
    if notice is Notice.RESOLVED:
        was = previous.yank_notified if previous is not None else None
        reason = f"yank resolved: the index serves the file un-yanked again (it was yanked: {was or 'no reason given'})"
        yanked = None
    else:
        yanked = state.yank_notified
        reason = f"the index serves this recorded file yanked (PEP 592): {yanked or 'no reason given'}"
    return Finding(
        reference=ref.familiar,
        registry=ref.registry,
        repository=ref.repository,
        tag=ref.tag,
        trusted_digest=trusted.digest,
        live_digest=observation.live_digest if observation.status is LiveStatus.FOUND else None,
        status=Verdict.YANKED,
        reason=reason,
        checked_at=observation.checked_at,
        source=trusted.source,
        commit=trusted.commit,
        recorded_at=trusted.recorded_at,
        first_seen=state.yank_notice_at if notice is Notice.NEW else None,
        notice=notice,
        yanked=yanked,
    )


def with_finding_id(finding: Finding, previous: TagState | None) -> Finding:
    """The finding with its stable id: a hash of the facts that make this notice this notice.

    Run-independent on purpose (no run id, no check time, no reason text): a run that published and then
    died before saving state is followed by a run that decides the same notice from the same previous state,
    and it gets the same id, so a subscriber can drop it. `previous.last_alerted` (the time of the tag's
    previous notice) tells apart what would otherwise look alike: the second reminder from the first, and a
    drift that comes back after it was resolved from its first occurrence.
    """
    # A yank notice has its own clock: a yank that comes back after it was resolved gets an id of its own.
    last = None
    if previous is not None:
        last = previous.yank_notice_at if finding.status is Verdict.YANKED else previous.last_alerted
    before = last.isoformat() if last else ""
    facts = (
        "finding/v1",
        finding.notice.value,
        finding.alert_verdict.value,
        finding.status.value,
        finding.registry,
        finding.repository,
        finding.tag or "",
        str(finding.trusted_digest) if finding.trusted_digest else "",
        str(finding.live_digest) if finding.live_digest else "",
        before,
    )
    digest = hashlib.sha256("\x1f".join(facts).encode()).hexdigest()
    return finding.model_copy(update={"finding_id": digest[:32]})


# --------------------------------------------------------------------------------------------------- packages


@dataclass(frozen=True, slots=True)
class PackageCheck:
    """One package file to judge in a run: a recorded file (with what the index lists for it, if anything),
    or a file the index lists that nobody recorded (`untracked_reason` says why it is reported)."""

    ref: ImageRef
    trusted: TrustedImage | None
    served: IndexFile | None
    untracked_reason: str | None = None


#: A page may list thousands of files nobody recorded; report this many per project, then say how many more.
MAX_UNTRACKED_PER_PROJECT = 100
#: Names that fit no wheel/sdist grammar, reported per project (each under a key derived from its hash).
MAX_INVALID_PER_PROJECT = 10


def plan_package_checks(
    registry: str,
    project: str,
    recorded: Sequence[TrustedImage],
    page: ProjectPage,
    *,
    track_new_releases: bool,
    max_untracked: int = MAX_UNTRACKED_PER_PROJECT,
) -> tuple[list[PackageCheck], int]:
    """Pair recorded files with the page's files; pick the unrecorded ones worth reporting.

    A file nobody recorded is reported when it belongs to a recorded release (someone added a wheel to it), or,
    with new-release tracking, when its release was never recorded. Returns the checks and how many untracked
    files were left out beyond `max_untracked`.
    """
    served = {file.filename: file for file in page.files}
    recorded_names = {record.tag for record in recorded}
    releases = {parsed.release for record in recorded if (parsed := parse_filename(record.tag)) is not None}
    checks = [PackageCheck(record.ref, record, served.get(record.tag)) for record in recorded]
    base = ImageRef(registry=registry, repository=project)
    untracked: list[PackageCheck] = []
    for file in sorted(page.files, key=lambda f: f.filename):
        if file.filename in recorded_names:
            continue
        other = "" if file.name.project == project else f" (its name says project {file.name.project})"
        if file.name.release in releases:
            why = f"a file in recorded release {file.name.version} that CI did not record{other}"
        elif track_new_releases:
            why = f"release {file.name.version} was never recorded{other}"
        else:
            continue
        # A filename that is no valid tag (over 128 characters, an epoch '!' or local '+') is keyed by its hash.
        key = file.filename if is_valid_tag(file.filename) else rejected_tag_key(file.filename)
        untracked.append(PackageCheck(base.with_tag(key), None, file, why))
    for invalid in page.invalid[:MAX_INVALID_PER_PROJECT]:
        key = "invalid-filename-" + hashlib.sha256(invalid.encode()).hexdigest()[:16]
        why = f"the index lists a file named {invalid}, which is no wheel or sdist filename"
        untracked.append(PackageCheck(base.with_tag(key), None, None, why))
    left_out = max(0, len(untracked) - max_untracked)
    return [*checks, *untracked[:max_untracked]], left_out


def package_verdict(check: PackageCheck, observation: Observation, *, truncated: bool = False) -> Judgement:
    """The verdict of one package file: recorded files as `judge` (pinned: a filename never moves), unrecorded
    ones UNTRACKED. A recorded file absent from a truncated page is UNVERIFIABLE, never MISSING."""
    if check.trusted is None:
        return Judgement(Verdict.UNTRACKED, check.untracked_reason)
    if truncated and observation.status is LiveStatus.MISSING:
        return Judgement(Verdict.UNVERIFIABLE, "the page lists more files than are read: cannot say it is gone")
    judgement = judge(check.trusted, observation)
    if check.served is not None and check.served.yanked is not None:
        yanked = f"release yanked ({check.served.yanked or 'no reason given'})"
        reason = f"{judgement.reason}; {yanked}" if judgement.reason else yanked
        return Judgement(judgement.verdict, reason)
    return judgement
