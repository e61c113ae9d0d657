"""The audit use case: compare every tracked tag with what its registry serves, alert once, then remember.

Order of effects is the safety argument: a publishing run first takes the run lease (no other run decides
from the same state at the same time), decisions are computed from the previous state, alerts are published,
and only after a finding's message was accepted is its tag's new state saved. If the process dies or
publishing fails anywhere before the save, the next run starts from the same previous state for every tag
whose alert was not accepted and makes the same decisions again (with the same finding ids).
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
from audit.app.package_audit import PackageAuditor, PackageResult, PackageSnapshot, split_snapshot
from audit.config import DEFAULT_MAX_TAGS_PER_REPOSITORY, DEFAULT_REVERIFY_DELAY, ENV_MAX_TAGS, RegistrySettings
from audit.errors import AuditError, PublishError, RegistryError
from audit.models import Digest, ImageRef, LiveStatus, Observation, TagListing, Verdict, utcnow
from audit.packages import IndexFile
from audit.ports import Alerts, LeaseClaim, PackageIndex, Registry, RunLease, StateStore, TrustReader
from audit.records import Finding, TagState, TrustedImage, TrustSnapshot, WatchSettings
from audit.reference import PSEUDO_TAG_PREFIX, is_valid_tag, rejected_tag_key
from audit.untrusted import printable
from audit.workers import drain

log = logging.getLogger(__name__)


#: `run` stepped aside because another run held the lease (documented in the README's exit codes).
EXIT_STEPPED_ASIDE = 5


@dataclass(frozen=True)
class RunOptions:
    repositories: frozenset[str] | None = None  # only these `registry/repository` images; None = all
    dry_run: bool = False  # decide and report, but publish and save nothing
    # A targeted run (push events): only these (image, tag) pairs, with the same engine, state and dedup.
    # A named tag nobody recorded is checked as untracked where its repository tracks new tags, else ignored.
    tags: frozenset[tuple[str, str]] | None = None

    @property
    def targeted(self) -> bool:
        return self.tags is not None


@dataclass(frozen=True)
class TagResult:
    """The outcome for one tag in one run (tracked or untracked)."""

    ref: ImageRef
    trusted: TrustedImage | None
    observation: Observation
    verdict: Verdict
    reason: str | None
    served: IndexFile | None = None  # a package file as its index lists it (PEP 592 yank included); None for tags


@dataclass
class RunReport:
    run_id: str
    results: list[TagResult] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    alerts_published: int = 0
    unreached: list[ImageRef] = field(default_factory=list)
    unlisted: dict[str, str] = field(default_factory=dict)  # image -> why its tags could not be listed
    states_saved: int = 0
    duration_ms: int = 0
    stepped_aside: LeaseClaim | None = None  # another run held the lease: nothing was checked or sent

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
        if self.stepped_aside is not None:
            return EXIT_STEPPED_ASIDE
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
        trust: TrustReader,
        state: StateStore,
        registry: Registry,
        alerts: Alerts,
        *,
        alert_policy: drift.AlertPolicy,
        reverify_delay: float = DEFAULT_REVERIFY_DELAY,
        clock: Callable[[], datetime] = utcnow,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        should_start: Callable[[], bool] = lambda: True,
        max_in_flight: int = RegistrySettings().check_workers,
        packages: PackageIndex | None = None,
        lease: RunLease | None = None,
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
        self._ever_trusted: dict[str, frozenset[Digest]] = {}  # per repository, read before judging
        self._packages = PackageAuditor(
            packages, trust, reverify_delay=reverify_delay, sleep=sleep, should_start=should_start
        )
        self._package_snapshot = PackageSnapshot()
        self._lease = lease

    async def run(self, options: RunOptions | None = None) -> RunReport:
        """One audit. A publishing run holds the run lease throughout; a dry run needs none."""
        options = options or RunOptions()
        started = time.monotonic()
        report = RunReport(run_id=uuid.uuid4().hex)
        if self._lease is None or options.dry_run:
            await self._audit(options, report)
        else:
            claim = await asyncio.to_thread(self._lease.acquire, report.run_id)
            if not claim.acquired:
                log.warning("another run holds the run lease (%s): stepping aside", claim.holder)
                report.stepped_aside = claim
            else:
                try:
                    await self._audit(options, report)
                finally:
                    self._release(report.run_id)
        report.duration_ms = int((time.monotonic() - started) * 1000)
        return report

    def _release(self, owner: str) -> None:
        assert self._lease is not None
        try:
            self._lease.release(owner)
        except AuditError as exc:  # the lease then expires on its own; the audit's outcome stands
            log.warning("could not release the run lease: %s", exc.message)

    async def _audit(self, options: RunOptions, report: RunReport) -> None:
        self._ever_trusted = {}
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
        previous = await (previous_read[0] if previous_read else asyncio.to_thread(self._state.load_all))
        targets, results = _without_vanished_untracked(targets, results, options)
        results = await self._reverify(results, {t.ref: t for t in targets}, previous)
        results = await self._with_rollbacks(results, targets)
        # Package files: their own small path, the same TagResults into the same decide/publish/save flow.
        package_run = await self._packages.run(
            self._package_snapshot,
            selected=lambda image: _selected(image, options),
            already_alerted=lambda r: _already_alerted(_tag_result(r), previous),
        )
        results += [_tag_result(r) for r in package_run.results]
        targets += [_Target(r.ref, r.trusted, None) for r in package_run.results]
        report.unlisted.update(package_run.unlisted)
        report.unreached += package_run.unreached
        report.results = results

        decisions = self._decide(results, previous, targeted=options.targeted)
        decisions += self._close_vanished(previous, targets, report, options)
        report.findings = [finding for finding, _ in decisions if finding is not None]
        changed = [state for _, state in decisions if state is not None]

        if options.dry_run:
            return
        if self._lease is not None and not await asyncio.to_thread(self._lease.renew, report.run_id):
            # Our lease expired during a long run and another run took it: it decides from the same state
            # and alerts; publishing here too would send every alert twice.
            log.warning("the run lease expired and was taken over: stepping aside without publishing")
            report.stepped_aside = LeaseClaim(acquired=False, holder="another run (this run's lease expired)")
            return
        if report.findings:
            try:
                report.alerts_published = await asyncio.to_thread(
                    self._alerts.publish, report.run_id, report.findings, total_tags=len(results)
                )
            except PublishError as exc:
                report.states_saved = await asyncio.to_thread(self._save_delivered, decisions, exc.delivered)
                raise
        # Only after every alert went out: a failed publish raised above and only what was accepted is saved.
        await asyncio.to_thread(self._state.save, changed)
        report.states_saved = len(changed)

    def _save_delivered(
        self, decisions: Sequence[tuple[Finding | None, TagState | None]], delivered: Sequence[Finding]
    ) -> int:
        """After a partial publish: remember the tags whose alert SNS accepted (and those with nothing to say).

        A message may carry several findings; SNS accepts or rejects a message as a whole, so `delivered` is
        exactly the findings of accepted messages. A tag may have two findings (a package file's verdict and its
        yank notice) in different messages: its state is saved only when both were accepted. The rest keep
        their previous state and are sent next run.
        """
        accepted = {finding.finding_id for finding in delivered}
        unsent = {
            (finding.image, finding.tag or "")
            for finding, _ in decisions
            if finding is not None and finding.finding_id not in accepted
        }
        keep = [state for _, state in decisions if state is not None and (state.image, state.tag) not in unsent]
        try:
            self._state.save(keep)
        except AuditError as exc:
            log.warning(
                "could not remember the %d accepted alert(s), the next run sends them again (same ids): %s",
                len(delivered),
                exc.message,
            )
            return 0
        log.info("remembered %d tag state(s) of accepted alerts; the rest is sent again next run", len(keep))
        return len(keep)

    async def _check_all(
        self, options: RunOptions, snapshot_read: Callable[[], None]
    ) -> tuple[list[_Target], list[TagResult], list[ImageRef], dict[str, str]]:
        """Check every target with a fixed set of workers, starting at the first page of the trust snapshot.

        Records are checked as their Scan page arrives; watch settings may come in a later page, so verdicts
        are judged once the snapshot is complete. Untracked tags are listed after it (their repositories'
        tracked tags must be known) and fed to the same workers; a targeted run lists nothing and checks only
        its named tags. Package records and settings are set aside for the package path.
        """
        trusted: list[TrustedImage] = []
        settings: dict[str, WatchSettings] = {}
        package_trusted: list[TrustedImage] = []
        package_settings: list[WatchSettings] = []
        observed: dict[ImageRef, Observation] = {}
        listed: list[_Target] = []
        unreached: list[ImageRef] = []
        unlisted: dict[str, str] = {}

        async def feed() -> AsyncIterator[tuple[ImageRef, Digest | None]]:
            async for page in self._snapshot_pages():
                images, image_settings, packages = split_snapshot(page.trusted, page.watch)
                package_trusted.extend(packages.trusted)
                package_settings.extend(packages.settings)
                settings.update((entry.image, entry) for entry in image_settings if _selected(entry.image, options))
                for rejected in page.rejected_watch:
                    if _selected(rejected.image, options):
                        log.warning("ignoring invalid watch settings of %s: %s", rejected.image, rejected.problem)
                        unlisted[rejected.image] = f"invalid watch settings, not used: {rejected.problem}"
                for record in images:
                    if _selected(record.image, options, record.tag):
                        trusted.append(record)
                        if is_valid_tag(record.tag):  # else judged without asking (see _trusted_target)
                            yield record.ref, record.digest
            snapshot_read()
            tracked_tags: dict[str, set[str]] = defaultdict(set)
            for record in trusted:
                tracked_tags[record.image].add(record.tag)
            if options.tags is not None:
                # Named tags only: no listing; an unrecorded one is checked where its repository tracks new tags.
                for image, tag in sorted(options.tags):
                    watch = settings.get(image)
                    if watch is None or not watch.track_new_tags:
                        continue
                    base = ImageRef(registry=watch.registry, repository=watch.repository, tag="latest")
                    for untracked in drift.untracked_tags([tag], tracked_tags[image], watch):
                        listed.append(_Target(base.with_tag(untracked), None, watch))
                        yield listed[-1].ref, None
                return
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
        self._package_snapshot = PackageSnapshot(
            tuple(sorted(package_trusted, key=lambda record: (record.image, record.tag))),
            tuple(sorted(package_settings, key=lambda entry: entry.image)),
        )
        trusted.sort(key=lambda record: (record.image, record.tag))
        targets: list[_Target] = []
        judged: list[tuple[_Target, Observation]] = []
        for target in [_trusted_target(t, settings.get(t.image)) for t in trusted] + listed:
            if target.preset is not None:
                _, reason = target.preset
                judged.append((target, Observation(ref=target.ref, status=LiveStatus.UNVERIFIABLE, reason=reason)))
            elif target.ref in observed:
                observation = observed.pop(target.ref)
                target = replace(target, ref=observation.ref)  # noqa: PLW2901 - one ImageRef per tag, shared
                judged.append((target, observation))
            targets.append(target)
        await self._read_ever_trusted(target for target, _ in judged)
        results = [self._judge(target, observation) for target, observation in judged]
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

    async def _read_ever_trusted(self, targets: Iterable[_Target]) -> None:
        """Every digest ever recorded for the repositories whose policy accepts any of them, read before judging:
        one store query per repository, in threads at once, so the loop never waits on the store."""
        images = sorted(
            {
                target.trusted.image
                for target in targets
                if target.trusted is not None
                and target.preset is None
                and target.trusted.image not in self._ever_trusted
                and drift.policy_for(target.settings, target.ref.tag or "").needs_all_trusted
            }
        )
        found = await asyncio.gather(*(asyncio.to_thread(self._trust.digests_ever_recorded, image) for image in images))
        self._ever_trusted.update(zip(images, (frozenset(digests) for digests in found), strict=True))

    def _judge(self, target: _Target, observation: Observation, history: Sequence[TrustedImage] = ()) -> TagResult:
        if target.preset is not None:  # decided without asking the registry
            preset_verdict, preset_reason = target.preset
            return TagResult(target.ref, None, observation, preset_verdict, preset_reason)
        if target.trusted is None:
            untracked = drift.judge(None, observation)
            return TagResult(target.ref, None, observation, untracked.verdict, untracked.reason)
        policy = drift.policy_for(target.settings, target.ref.tag or "")
        # Read beforehand by _read_ever_trusted (never here, on the loop).
        ever = self._ever_trusted[target.trusted.image] if policy.needs_all_trusted else frozenset[Digest]()
        judgement = drift.judge(target.trusted, observation, policy=policy, ever_trusted=ever, history=history)
        return TagResult(target.ref, target.trusted, observation, judgement.verdict, judgement.reason)

    async def _with_rollbacks(self, results: list[TagResult], targets: Sequence[_Target]) -> list[TagResult]:
        """A drift back to a digest the tag was recorded with before says so in its reason (drift.judge).

        The tag's history is read only for a drift, once it is final (after the re-check): one Query per drift,
        never per tag, and no check is in flight any more. A history that cannot be read only costs the hint.
        """
        by_ref = {target.ref: target for target in targets}
        judged = list(results)
        for index, result in enumerate(results):
            if result.verdict is not Verdict.DRIFT or result.trusted is None:
                continue
            try:
                history = await asyncio.to_thread(self._trust.history, result.trusted.image, result.trusted.tag)
            except AuditError as exc:
                log.warning("cannot read the history of %s: %s", printable(str(result.ref)), exc.message)
                continue
            if history:
                target = replace(by_ref[result.ref], trusted=result.trusted)
                judged[index] = self._judge(target, result.observation, history)
        return judged

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
            fresh = await asyncio.to_thread(self._trust.get, result.trusted.image, result.trusted.tag, consistent=True)
            if fresh is None:  # the record was removed meanwhile: nothing to compare with any more
                return result
            observation = await self._observe(result.ref, expected=fresh.digest, platforms=True)
            again = _Target(target.ref, fresh, target.settings)
            await self._read_ever_trusted([again])
            return self._judge(again, observation)

        rechecked = await asyncio.gather(*(again(i) for i in suspects))
        merged = list(results)
        for index, result in zip(suspects, rechecked, strict=True):
            merged[index] = result
        return merged

    def _decide(
        self, results: Sequence[TagResult], previous: dict[tuple[str, str], TagState], *, targeted: bool = False
    ) -> list[tuple[Finding | None, TagState | None]]:
        now = self._clock()
        # A few named tags failing say nothing about the whole registry: that shortcut is for full runs.
        failed_registries = set() if targeted else _registries_all_unverifiable(results)
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
            # A recorded package file the index listed: its yank is known, and news once (see decide_yank).
            listed = result.served if result.trusted is not None else None
            if listed is not None:
                decision = drift.decide_yank(decision, listed.yanked, now=now)
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
                    yanked=result.served.yanked if result.served is not None else None,
                )
                finding = drift.with_finding_id(finding, before)
            changed = decision.new_state if _worth_saving(before, decision.new_state) else None
            decisions.append((finding, changed))
            if decision.yank_notice is not None and result.trusted is not None:
                # The same tag's state (saved once, above) holds both notices: see _save_delivered.
                yank = drift.yank_finding_for(result.trusted, result.observation, before, decision)
                decisions.append((drift.with_finding_id(yank, before), None))
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
            if not _selected(state.image, options, state.tag) or state.image in report.unlisted:
                continue
            ref = ImageRef(registry=state.registry, repository=state.repository, tag=state.tag)
            decision = drift.decide(state, Verdict.NO_LONGER_AUDITED, None, ref=ref, now=now, policy=self._policy)
            if decision.notice is None:
                continue
            observation = Observation(ref=ref, status=LiveStatus.FOUND, reason="no longer audited")
            finding = drift.finding_for(
                None,
                observation,
                Verdict.NO_LONGER_AUDITED,
                "no longer audited",
                decision.new_state,
                decision.notice,
                resolved=decision.resolved,
            )
            closed.append((drift.with_finding_id(finding, state), decision.new_state))
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


def _tag_result(result: PackageResult) -> TagResult:
    return TagResult(result.ref, result.trusted, result.observation, result.verdict, result.reason, result.served)


def _selected(image: str, options: RunOptions, tag: str | None = None) -> bool:
    """In this run's scope: the repository filter, and for a targeted run the named (image, tag) pairs."""
    if options.repositories is not None and image not in options.repositories:
        return False
    if options.tags is None:
        return True
    if tag is None:
        return any(named_image == image for named_image, _ in options.tags)
    return (image, tag) in options.tags


def _without_vanished_untracked(
    targets: list[_Target], results: list[TagResult], options: RunOptions
) -> tuple[list[_Target], list[TagResult]]:
    """A targeted check of an unrecorded tag that is gone (a delete event) is no finding: the tag left the audit.

    Dropping it from the targets lets `_close_vanished` resolve an open `untracked` alert for it. A full run
    never gets here with such a tag: it only checks tags the registry listed.
    """
    if not options.targeted:
        return targets, results
    gone = {
        (r.ref.image, r.ref.tag) for r in results if r.trusted is None and r.observation.status is LiveStatus.MISSING
    }
    if not gone:
        return targets, results
    kept_targets = [t for t in targets if (t.ref.image, t.ref.tag) not in gone]
    kept_results = [r for r in results if (r.ref.image, r.ref.tag) not in gone]
    return kept_targets, kept_results


def _registries_all_unverifiable(results: Iterable[TagResult]) -> set[str]:
    seen: dict[str, bool] = {}
    for result in results:
        failed = result.verdict is Verdict.UNVERIFIABLE
        seen[result.ref.registry] = seen.get(result.ref.registry, True) and failed
    return {registry for registry, all_failed in seen.items() if all_failed}
