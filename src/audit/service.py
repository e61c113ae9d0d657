"""The audit use case: compare every tracked tag with what its registry serves, alert once, then remember.

Order of effects is the safety argument: decisions are computed from the previous state, alerts are published,
and only after a successful publish is the new state saved. If the process dies or publishing fails anywhere
before the save, the next run starts from the same previous state and makes the same decisions again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from audit import drift
from audit.config import DEFAULT_MAX_TAGS_PER_REPOSITORY, ENV_MAX_TAGS
from audit.errors import RegistryError
from audit.models import (
    Digest,
    Finding,
    ImageRef,
    LiveStatus,
    Observation,
    TagListing,
    TagState,
    TrustedImage,
    TrustSnapshot,
    Verdict,
    WatchSettings,
    utcnow,
)
from audit.ports import Alerts, Registry, StateStore, TrustStore
from audit.reference import PSEUDO_TAG_PREFIX, is_valid_tag, rejected_tag_key
from audit.untrusted import printable
from audit.workers import drain

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunOptions:
    repositories: frozenset[str] | None = None  # only these `registry/repository` images; None = all
    dry_run: bool = False  # decide and report, but publish and save nothing


@dataclass(frozen=True)
class TagResult:
    """The outcome for one tag in one run (tracked or untracked)."""

    ref: ImageRef
    trusted: TrustedImage | None
    observation: Observation
    verdict: Verdict
    reason: str | None


@dataclass
class RunReport:
    run_id: str
    started_at: datetime
    results: list[TagResult] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    alerts_published: int = 0
    unreached: list[ImageRef] = field(default_factory=list)
    unlisted: dict[str, str] = field(default_factory=dict)  # image -> why its tags could not be listed
    states_saved: int = 0
    duration_ms: int = 0

    @property
    def checked(self) -> int:
        return len(self.results)

    @property
    def by_verdict(self) -> dict[str, int]:
        return dict(Counter(result.verdict.value for result in self.results))

    @property
    def unverifiable(self) -> list[TagResult]:
        return [r for r in self.results if r.verdict is Verdict.UNVERIFIABLE]

    def worst_exit_code(self) -> int:
        verdicts = {r.verdict for r in self.results}
        if verdicts & {Verdict.DRIFT, Verdict.MISSING}:
            return 1
        if Verdict.UNVERIFIABLE in verdicts or self.unreached or self.unlisted:
            return 3
        return 0


#: The state key of "this repository's tag list was cut at the cap" (never a valid tag, see reference.tag_key).
TAG_LIST_CAP_KEY = f"{PSEUDO_TAG_PREFIX}tag-list-cap"


@dataclass(frozen=True)
class _Target:
    ref: ImageRef
    trusted: TrustedImage | None
    settings: WatchSettings | None
    preset: tuple[Verdict, str] | None = None  # decided without asking the registry (a name it must not be asked)


class AuditService:
    """Runs one audit against the ports; knows nothing about DynamoDB, SNS or HTTP."""

    def __init__(
        self,
        trust: TrustStore,
        state: StateStore,
        registry: Registry,
        alerts: Alerts,
        *,
        alert_policy: drift.AlertPolicy,
        reverify_delay: float = 5.0,
        clock: Callable[[], datetime] = utcnow,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        should_start: Callable[[], bool] = lambda: True,
        max_in_flight: int = 64,
        max_tags_per_repository: int = DEFAULT_MAX_TAGS_PER_REPOSITORY,
    ) -> None:
        self._trust = trust
        self._state = state
        self._registry = registry
        self._alerts = alerts
        self._policy = alert_policy
        self._reverify_delay = reverify_delay
        self._clock = clock
        self._sleep = sleep
        self._should_start = should_start
        # A fixed set of workers (memory stays flat at any size) that admits each check through the
        # remaining-time guard; the registry client bounds and adapts requests per host on its own.
        self._max_in_flight = max_in_flight
        self._max_tags = max_tags_per_repository
        self._ever_trusted: dict[str, frozenset[Digest]] = {}

    async def run(self, options: RunOptions | None = None) -> RunReport:
        options = options or RunOptions()
        started = time.monotonic()
        self._ever_trusted = {}
        report = RunReport(run_id=uuid.uuid4().hex, started_at=self._clock())
        # The previous state is needed only to decide: it is read while the checks run, once the trust snapshot
        # is in (two big Scans at once would add their peaks).
        previous_read: list[asyncio.Future[dict[tuple[str, str], TagState]]] = []

        def read_previous() -> None:
            previous_read.append(asyncio.ensure_future(asyncio.to_thread(self._state.load_all)))

        try:
            targets, results, report.unreached, report.unlisted = await self._check_all(options, read_previous)
        except BaseException:
            for pending in previous_read:
                pending.cancel()
            await asyncio.gather(*previous_read, return_exceptions=True)
            raise
        previous = await previous_read[0] if previous_read else self._state.load_all()

        results = await self._reverify(results, {t.ref: t for t in targets}, previous)
        report.results = results

        decisions = self._decide(results, previous)
        decisions += self._close_vanished(previous, targets, report, options)
        report.findings = [finding for finding, _ in decisions if finding is not None]
        changed = [state for _, state in decisions if state is not None]

        if not options.dry_run:
            if report.findings:
                report.alerts_published = self._alerts.publish(report.run_id, report.findings, total_tags=len(results))
            # Only after every alert went out: a failed publish raised above and nothing was saved.
            self._state.save(changed)
            report.states_saved = len(changed)
        report.duration_ms = int((time.monotonic() - started) * 1000)
        return report

    async def _check_all(
        self, options: RunOptions, snapshot_read: Callable[[], None]
    ) -> tuple[list[_Target], list[TagResult], list[ImageRef], dict[str, str]]:
        """Check every target with a fixed set of workers, starting at the first page of the trust snapshot.

        Records are checked as their Scan page arrives; watch settings may come in a later page, so verdicts
        are judged once the snapshot is complete. Untracked tags are listed after it (their repositories'
        tracked tags must be known) and fed to the same workers.
        """
        trusted: list[TrustedImage] = []
        settings: dict[str, WatchSettings] = {}
        observed: dict[ImageRef, Observation] = {}
        listed: list[_Target] = []
        unreached: list[ImageRef] = []
        unlisted: dict[str, str] = {}

        async def feed() -> AsyncIterator[tuple[ImageRef, Digest | None]]:
            async for page in self._snapshot_pages():
                settings.update((entry.image, entry) for entry in page.watch if _selected(entry.image, options))
                for rejected in page.rejected_watch:
                    if _selected(rejected.image, options):
                        log.warning("ignoring invalid watch settings of %s: %s", rejected.image, rejected.problem)
                        unlisted[rejected.image] = f"invalid watch settings, not used: {rejected.problem}"
                for record in page.trusted:
                    if _selected(record.image, options):
                        trusted.append(record)
                        if is_valid_tag(record.tag):  # else judged without asking (see _trusted_target)
                            yield record.ref, record.digest
            snapshot_read()
            tracked_tags: dict[str, set[str]] = defaultdict(set)
            for record in trusted:
                tracked_tags[record.image].add(record.tag)
            for image, watch in sorted(settings.items()):
                if not watch.track_new_tags:
                    continue
                listing = await self._list_tags(watch, unlisted)
                if listing is None:
                    continue
                for target in self._listed_targets(watch, listing, tracked_tags[image], unlisted):
                    listed.append(target)
                    if target.preset is None:
                        yield target.ref, None

        async def check(item: tuple[ImageRef, Digest | None]) -> None:
            ref, expected = item
            if not self._should_start():
                unreached.append(ref)
                return
            observed[ref] = await self._observe(ref, expected=expected)

        await drain(feed(), check, workers=self._max_in_flight)
        trusted.sort(key=lambda record: (record.image, record.tag))
        targets: list[_Target] = []
        results: list[TagResult] = []
        for target in [_trusted_target(t, settings.get(t.image)) for t in trusted] + listed:
            if target.preset is not None:
                verdict, reason = target.preset
                observation = Observation(ref=target.ref, status=LiveStatus.UNVERIFIABLE, reason=reason)
                results.append(TagResult(target.ref, None, observation, verdict, reason))
            elif target.ref in observed:
                observation = observed.pop(target.ref)
                target = replace(target, ref=observation.ref)  # noqa: PLW2901 - one ImageRef per tag, shared
                results.append(self._judge(target, observation))
            targets.append(target)
        return targets, results, unreached, unlisted

    async def _list_tags(self, watch: WatchSettings, unlisted: dict[str, str]) -> TagListing | None:
        """One repository's tag list; any failure is that repository's problem only (reported, not raised)."""
        try:
            return await self._registry.list_tags(
                watch.registry, watch.repository, max_tags=self._max_tags, should_continue=self._should_start
            )
        except RegistryError as exc:
            log.warning("cannot list tags of %s: %s", watch.image, exc.message)
            unlisted[watch.image] = exc.message
        except Exception as exc:  # a per-repository boundary: one surprise must not end the audit
            # The type only: an exception's text may quote what the registry sent.
            log.error("unexpected %s while listing tags of %s", type(exc).__name__, watch.image)  # noqa: TRY400
            unlisted[watch.image] = f"internal error while listing tags ({type(exc).__name__})"
        return None

    def _listed_targets(
        self, watch: WatchSettings, listing: TagListing, tracked: set[str], unlisted: dict[str, str]
    ) -> list[_Target]:
        """Untracked tags to check, plus findings decided from the listing alone (invalid names, the cap)."""
        base = ImageRef(registry=watch.registry, repository=watch.repository, tag="latest")
        targets = [
            _Target(base.with_tag(tag), None, watch) for tag in drift.untracked_tags(listing.tags, tracked, watch)
        ]
        # Not subject to ignore patterns: a conforming registry cannot store such a name, so it says the
        # registry (or someone in front of it) is not what it seems.
        for rejected in listing.rejected:
            # The name stays data here; every output escapes it (alerts, reports, logs).
            reason = f"the registry lists a tag name outside the tag grammar (not queried): {rejected.name}"
            targets.append(_Target(base.with_tag(rejected.key), None, watch, preset=(Verdict.UNTRACKED, reason)))
        if listing.rejected_count > len(listing.rejected):
            log.warning("%s lists %d invalid tag names", watch.image, listing.rejected_count)
            unlisted[watch.image] = (
                f"{listing.rejected_count} tag names outside the tag grammar; the first {len(listing.rejected)} "
                "are reported"
            )
        read = len(listing.tags) + listing.rejected_count
        if listing.stopped == "cap":
            reason = (
                f"the tag list has more than {self._max_tags} names; only the first {self._max_tags} were read "
                f"(raise {ENV_MAX_TAGS}, or ask why the repository has so many tags)"
            )
            targets.append(_Target(base.with_tag(TAG_LIST_CAP_KEY), None, watch, preset=(Verdict.UNVERIFIABLE, reason)))
            unlisted[watch.image] = f"tag list not fully read: the cap of {self._max_tags} names was reached"
        elif listing.stopped is not None:
            unlisted[watch.image] = f"tag list not fully read: time ran out after {read} names"
        return targets

    async def _snapshot_pages(self) -> AsyncIterator[TrustSnapshot]:
        """The trust store's snapshot pages, each read in a thread so the checks go on meanwhile."""
        pages = self._trust.snapshot_pages()
        try:
            while (page := await asyncio.to_thread(next, pages, None)) is not None:
                yield page
        finally:
            close = getattr(pages, "close", None)  # a generator: end its Scan threads now, not at collection
            if close is not None:
                with contextlib.suppress(ValueError):  # still running in its thread (cancelled): left to finish
                    close()

    async def _observe(self, ref: ImageRef, *, expected: Digest | None, platforms: bool = False) -> Observation:
        """A per-tag boundary: whatever goes wrong while observing one tag makes that tag unverifiable, no more."""
        try:
            return await self._registry.observe(ref, expected=expected, platforms=platforms)
        except Exception as exc:  # see the docstring; the client itself raises nothing for a tag
            # The type only: an exception's text may quote what the registry sent.
            log.error("unexpected %s while checking %s", type(exc).__name__, printable(str(ref)))  # noqa: TRY400
            return Observation(ref=ref, status=LiveStatus.UNVERIFIABLE, reason=f"internal error ({type(exc).__name__})")

    def _judge(self, target: _Target, observation: Observation) -> TagResult:
        if target.trusted is None:
            verdict, reason = _untracked_verdict(observation)
            return TagResult(target.ref, None, observation, verdict, reason)
        policy = drift.policy_for(target.settings, target.ref.tag or "")
        ever: frozenset[Digest] = frozenset()
        if policy.needs_all_trusted:
            image = target.trusted.image
            if image not in self._ever_trusted:
                self._ever_trusted[image] = frozenset(self._trust.digests_ever_recorded(image))
            ever = self._ever_trusted[image]
        judgement = drift.judge(target.trusted, observation, policy=policy, ever_trusted=ever)
        return TagResult(target.ref, target.trusted, observation, judgement.verdict, judgement.reason)

    async def _reverify(
        self,
        results: list[TagResult],
        targets: dict[ImageRef, _Target],
        previous: dict[tuple[str, str], TagState],
    ) -> list[TagResult]:
        """Before calling drift or missing, wait, re-read the trust record consistently, and ask again.

        A CI job may have pushed and recorded between our trust load and our registry check. A problem that is
        already alerted with the same live digest was confirmed by an earlier run and is not re-checked.
        """
        suspects = [
            index
            for index, result in enumerate(results)
            if result.trusted
            and result.verdict in (Verdict.DRIFT, Verdict.MISSING)
            and not _already_alerted(result, previous)
        ]
        if not suspects:
            return results
        await self._sleep(self._reverify_delay)

        async def again(index: int) -> TagResult:
            result = results[index]
            target = targets[result.ref]
            assert result.trusted is not None
            fresh = self._trust.get(result.trusted.image, result.trusted.tag, consistent=True)
            if fresh is None:  # the record was removed meanwhile: nothing to compare with any more
                return result
            observation = await self._observe(result.ref, expected=fresh.digest, platforms=True)
            return self._judge(_Target(target.ref, fresh, target.settings), observation)

        rechecked = await asyncio.gather(*(again(i) for i in suspects))
        merged = list(results)
        for index, result in zip(suspects, rechecked, strict=True):
            merged[index] = result
        return merged

    def _decide(
        self, results: Sequence[TagResult], previous: dict[tuple[str, str], TagState]
    ) -> list[tuple[Finding | None, TagState | None]]:
        now = self._clock()
        failed_registries = _registries_all_unverifiable(results)
        decisions: list[tuple[Finding | None, TagState | None]] = []
        for result in results:
            key = (result.ref.image, result.ref.tag or "")
            before = previous.get(key)
            decision = drift.decide(
                before,
                result.verdict,
                result.observation.live_digest,
                ref=result.ref,
                now=now,
                policy=self._policy,
                registry_all_failed=result.ref.registry in failed_registries,
            )
            finding = None
            if decision.notice is not None:
                finding = drift.finding_for(
                    result.trusted,
                    result.observation,
                    result.verdict,
                    result.reason,
                    decision.new_state,
                    decision.notice,
                    resolved=decision.resolved,
                )
            changed = decision.new_state if _worth_saving(before, decision.new_state) else None
            decisions.append((finding, changed))
        return decisions

    def _close_vanished(
        self,
        previous: dict[tuple[str, str], TagState],
        targets: Sequence[_Target],
        report: RunReport,
        options: RunOptions,
    ) -> list[tuple[Finding | None, TagState | None]]:
        """Resolve open alerts of tags that are no longer audited (record removed, untracked tag gone or ignored).

        Only where this run really knows: the image is in scope and, for untracked tags, its tags were listed.
        """
        audited = {(t.ref.image, t.ref.tag) for t in targets}
        unreached = {(ref.image, ref.tag) for ref in report.unreached}
        closed: list[tuple[Finding | None, TagState | None]] = []
        now = self._clock()
        for key, state in previous.items():
            if state.alerted_verdict is None or key in audited or key in unreached:
                continue
            if not _selected(state.image, options) or state.image in report.unlisted:
                continue
            ref = ImageRef(registry=state.registry, repository=state.repository, tag=state.tag)
            decision = drift.decide(state, Verdict.RESOLVED, None, ref=ref, now=now, policy=self._policy)
            if decision.notice is None:
                continue
            observation = Observation(ref=ref, status=LiveStatus.FOUND, reason="no longer audited")
            finding = drift.finding_for(
                None,
                observation,
                Verdict.RESOLVED,
                "no longer audited",
                decision.new_state,
                decision.notice,
                resolved=decision.resolved,
            )
            closed.append((finding, decision.new_state))
        return closed


#: `last_seen` alone moves every run; writing 10,000 items an hour for it would be waste, so it is refreshed
#: when something else changes or when the stored value is this old.
LAST_SEEN_REFRESH = timedelta(hours=24)


def _trusted_target(trusted: TrustedImage, settings: WatchSettings | None) -> _Target:
    """A trusted tag to check; a record whose tag is outside the grammar (written by hand) is never queried."""
    if is_valid_tag(trusted.tag):
        return _Target(trusted.ref, trusted, settings)
    ref = trusted.ref.with_tag(rejected_tag_key(trusted.tag))
    reason = f"the trusted record's tag is outside the tag grammar (not queried; fix or delete it): {trusted.tag[:160]}"
    return _Target(ref, None, settings, preset=(Verdict.UNVERIFIABLE, reason))


def _worth_saving(before: TagState | None, after: TagState) -> bool:
    if before is None:
        return True
    if before.model_copy(update={"last_seen": after.last_seen}) != after:
        return True
    return after.last_seen - before.last_seen >= LAST_SEEN_REFRESH


def _already_alerted(result: TagResult, previous: dict[tuple[str, str], TagState]) -> bool:
    state = previous.get((result.ref.image, result.ref.tag or ""))
    if state is None or state.alerted_verdict is not result.verdict:
        return False
    live = result.observation.live_digest if result.verdict is Verdict.DRIFT else None
    return state.alerted_digest == live


def _selected(image: str, options: RunOptions) -> bool:
    return options.repositories is None or image in options.repositories


def _untracked_verdict(observation: Observation) -> tuple[Verdict, str | None]:
    if observation.status is LiveStatus.FOUND:
        return Verdict.UNTRACKED, "no trusted digest recorded for this tag"
    # A listed tag that vanished or could not be read is not news about trust; stay quiet but honest.
    return Verdict.UNVERIFIABLE, observation.reason


def _registries_all_unverifiable(results: Iterable[TagResult]) -> set[str]:
    seen: dict[str, bool] = {}
    for result in results:
        failed = result.verdict is Verdict.UNVERIFIABLE
        seen[result.ref.registry] = seen.get(result.ref.registry, True) and failed
    return {registry for registry, all_failed in seen.items() if all_failed}
