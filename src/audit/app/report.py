"""`report`: the evidence a security team attaches to an incident, from the trust records and the audit state.

The evidence table joins each recorded release with its last audit; the incident report (`audit.incident_report`
renders it) does the same for an exposure window, or asks the registries now (`--live`) and judges each release
by the audit's own rules, moving tags included.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from audit.config import RegistrySettings
from audit.drift import judge, policy_for
from audit.incident_report import IncidentReport, build_report
from audit.models import Observation, Verdict, iso_utc, utcnow
from audit.ports import Registry, StateStore, TrustReader
from audit.records import TagState, TrustedImage, WatchSettings

#: The evidence table's status of a release no audit has checked yet.
NOT_AUDITED = "unchecked"
#: Registry requests in flight at once for `--live`.

type LiveVerdicts = dict[tuple[str, str], tuple[Observation, Verdict, str | None]]


@dataclass(frozen=True)
class ReportScope:
    """Which releases: some repositories (none: all), recorded within an exposure window (bounds inclusive)."""

    repositories: Collection[str] = ()
    recorded_since: datetime | None = None
    recorded_until: datetime | None = None

    def covers(self, record: TrustedImage) -> bool:
        return (
            (not self.repositories or record.image in self.repositories)
            and (self.recorded_since is None or record.recorded_at >= self.recorded_since)
            and (self.recorded_until is None or record.recorded_at <= self.recorded_until)
        )


@dataclass(frozen=True)
class ReleaseEvidence:
    """The releases in scope (by image, then recording time) and the audit state of every tag."""

    records: list[TrustedImage]
    states: dict[tuple[str, str], TagState]


def gather_evidence(trust: TrustReader, state: StateStore | None, scope: ReportScope) -> ReleaseEvidence:
    """Read the audit state (none: nothing audited yet) and the trust records in scope."""
    states = state.load_all() if state is not None else {}
    records = [record for record in trust.load_all() if scope.covers(record)]
    records.sort(key=lambda item: (item.image, item.recorded_at, item.tag))
    return ReleaseEvidence(records, states)


def evidence_row(item: TrustedImage, state: TagState | None) -> dict[str, Any]:
    """One row of the evidence table: the trusted record beside what the last audit saw."""
    return {
        "registry": item.registry,
        "repository": item.repository,
        "tag": item.tag,
        "trusted_digest": str(item.digest),
        "source": item.source,
        "commit": item.commit,
        "recorded_at": iso_utc(item.recorded_at),
        "live_digest": str(state.last_live_digest) if state and state.last_live_digest else None,
        "status": state.last_verdict.value if state else NOT_AUDITED,
        "since": iso_utc(state.first_seen) if state else None,
    }


def evidence_rows(evidence: ReleaseEvidence) -> list[dict[str, Any]]:
    return [evidence_row(item, evidence.states.get((item.image, item.tag))) for item in evidence.records]


async def observe_releases(
    registry: Registry,
    trust: TrustReader,
    records: Sequence[TrustedImage],
    settings: Sequence[WatchSettings],
    *,
    workers: int = RegistrySettings().check_workers,
) -> LiveVerdicts:
    """Ask the registry now, and judge each release by the same rules as the audit (moving tags included).

    What the judgement needs from the store (every digest ever trusted, for `any-trusted` tags) is read first,
    once per repository and off the loop, so no store call waits on the loop while checks are in flight.
    """
    by_image = {entry.image: entry for entry in settings}
    policies = {(record.image, record.tag): policy_for(by_image.get(record.image), record.tag) for record in records}
    images = sorted({image for (image, _), policy in policies.items() if policy.needs_all_trusted})
    found = await asyncio.gather(*(asyncio.to_thread(trust.digests_ever_recorded, image) for image in images))
    ever_trusted = {image: frozenset(digests) for image, digests in zip(images, found, strict=True)}
    gate = asyncio.Semaphore(workers)

    async def one(record: TrustedImage) -> tuple[tuple[str, str], tuple[Observation, Verdict, str | None]]:
        async with gate:
            observation = await registry.observe(record.ref, expected=record.digest)
        policy = policies[(record.image, record.tag)]
        ever = ever_trusted.get(record.image, frozenset()) if policy.needs_all_trusted else frozenset()
        judgement = judge(record, observation, policy=policy, ever_trusted=ever)
        return (record.image, record.tag), (observation, judgement.verdict, judgement.reason)

    return dict(await asyncio.gather(*(one(record) for record in records)))


async def live_verdicts(
    registry: Registry,
    trust: TrustReader,
    records: Sequence[TrustedImage],
    *,
    workers: int = RegistrySettings().check_workers,
) -> LiveVerdicts:
    """`--live`: every release in scope checked now, with the watch settings that make a tag moving."""
    settings = await asyncio.to_thread(trust.load_watch_settings)
    return await observe_releases(registry, trust, records, settings, workers=workers)


def incident_report(
    evidence: ReleaseEvidence,
    scope: ReportScope,
    *,
    live: Mapping[tuple[str, str], tuple[Observation, Verdict, str | None]] | None,
) -> IncidentReport:
    """The incident report of the releases in scope: live verdicts if given, else the last audit's."""
    return build_report(
        evidence.records,
        evidence.states,
        since=scope.recorded_since,
        until=scope.recorded_until,
        generated_at=utcnow(),
        live=live,
    )
