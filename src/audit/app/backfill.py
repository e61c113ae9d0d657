"""Back-filling trust from CI logs: plan what the logs prove against the trust store, then record it on request.

The plan is computed without writing: each tag a job's log ties to one digest is `new`, `same` or `conflict`
(judged by the record rules, including earlier runs of the same back-fill); runs whose logs are gone are
`log-expired`, refused or failed downloads `log-unreadable`, and evidence that does not tie one digest to one tag
`ambiguous`. Applying records the `new` entries (and conflicts only with a replace reason) through the same
record path as `digest-audit record`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from enum import StrEnum
from typing import Any

from audit.app.recording import MovingTags, record_trusted
from audit.ci_logs import analyse_job
from audit.errors import TrustConflictError
from audit.models import Digest, ImageRef, LogStatus, RecordOutcome, iso_utc, utcnow
from audit.ports import CiLogSource, TrustRecorder
from audit.records import CiRun, TrustedImage
from audit.untrusted import printable

#: At most this many plan entries; a hostile log cannot make the plan (or the table) unbounded.
MAX_PLAN_ENTRIES = 50_000


class PlanStatus(StrEnum):
    NEW = "new"
    SAME = "same"
    CONFLICT = "conflict"
    LOG_EXPIRED = "log-expired"
    LOG_UNREADABLE = "log-unreadable"
    AMBIGUOUS = "ambiguous"


@dataclass(frozen=True)
class PlanEntry:
    """One line of the plan. `reference` and `evidence` are printable; `ref` is set for recordable entries."""

    status: PlanStatus
    reference: str | None
    digest: Digest | None
    source: str
    commit: str | None
    evidence: str
    ref: ImageRef | None = None  # tag and digest, for NEW / SAME / CONFLICT
    trusted_digest: Digest | None = None  # what the store (or an earlier run) trusts, for CONFLICT
    moving: bool = False
    pushed_at: datetime | None = None
    other_digests: tuple[Digest, ...] = ()  # AMBIGUOUS: every digest the evidence named

    def to_json(self) -> dict[str, Any]:
        document: dict[str, Any] = {
            "reference": self.reference,
            "digest": str(self.digest) if self.digest else None,
            "source": self.source,
            "commit": self.commit,
            "evidence": self.evidence,
            "status": self.status.value,
        }
        if self.trusted_digest is not None:
            document["trusted_digest"] = str(self.trusted_digest)
        if self.other_digests:
            document["digests"] = [str(digest) for digest in self.other_digests]
        if self.moving:
            document["moving"] = True
        if self.pushed_at is not None:
            document["pushed_at"] = iso_utc(self.pushed_at)
        return document


type Progress = Callable[[int, int, CiRun], None]


def plan_backfill(store: TrustRecorder, source: CiLogSource, *, progress: Progress | None = None) -> list[PlanEntry]:
    """Read every run's logs (oldest first) and judge each pushed tag against the store; writes nothing."""
    runs = source.runs()
    planned: dict[tuple[str, str], Digest | None] = {}  # the digest trusted after the entries so far
    moving = MovingTags(store)
    plan: list[PlanEntry] = []
    for done, run in enumerate(runs, start=1):
        logs = source.logs(run)
        if progress is not None:
            progress(done, len(runs), run)
        if logs.status is not LogStatus.READ:
            status = PlanStatus.LOG_EXPIRED if logs.status is LogStatus.EXPIRED else PlanStatus.LOG_UNREADABLE
            reason = printable(logs.reason or logs.status.value, max_chars=300)
            plan.append(PlanEntry(status, None, None, run.source, run.commit, reason))
            continue
        for job in logs.jobs:
            evidence = analyse_job(job.job, job.steps)
            for pushed in evidence.pushed:
                plan.append(
                    _judge(
                        store,
                        planned,
                        moving,
                        run,
                        ref=pushed.ref,
                        evidence=pushed.describe(),
                        logged_at=pushed.first.logged_at,
                    )
                )
            for problem in evidence.unresolved:
                plan.append(
                    PlanEntry(
                        PlanStatus.AMBIGUOUS,
                        problem.reference,
                        problem.digests[0] if len(problem.digests) == 1 else None,
                        run.source,
                        run.commit,
                        f"{problem.where.describe()}: {problem.reason}",
                        other_digests=problem.digests,
                    )
                )
            if len(plan) >= MAX_PLAN_ENTRIES:
                return plan[:MAX_PLAN_ENTRIES]
    return plan


def _judge(
    store: TrustRecorder,
    planned: dict[tuple[str, str], Digest | None],
    is_moving: MovingTags,
    run: CiRun,
    *,
    ref: ImageRef,
    evidence: str,
    logged_at: datetime | None,
) -> PlanEntry:
    assert ref.tag is not None and ref.digest is not None  # analyse_job ties tags to digests
    key = (ref.image, ref.tag)
    if key not in planned:
        current = store.get(ref.image, ref.tag)
        planned[key] = current.digest if current else None
    trusted = planned[key]
    moving = is_moving(ref.image, ref.tag)
    entry = PlanEntry(
        PlanStatus.NEW,
        ref.with_tag(ref.tag).familiar,
        ref.digest,
        run.source,
        run.commit,
        evidence,
        ref=ref,
        moving=moving,
        pushed_at=run.started_at or logged_at,
    )
    if trusted == ref.digest:
        return replace(entry, status=PlanStatus.SAME)
    if trusted is not None and not moving:
        return replace(entry, status=PlanStatus.CONFLICT, trusted_digest=trusted)
    planned[key] = ref.digest
    return entry


@dataclass(frozen=True)
class Applied:
    entry: PlanEntry
    outcome: RecordOutcome | None  # None: not recorded (a conflict without replace)
    problem: str | None = None


def apply_plan(
    store: TrustRecorder,
    plan: Sequence[PlanEntry],
    *,
    recorded_by: str,
    replace_reason: str | None = None,
) -> list[Applied]:
    """Record NEW entries, and CONFLICT entries only with a replace reason; everything else is left alone."""
    results: list[Applied] = []
    for entry in plan:
        if entry.ref is None or entry.status not in (PlanStatus.NEW, PlanStatus.CONFLICT):
            continue
        replacing = entry.status is PlanStatus.CONFLICT
        if replacing and replace_reason is None:
            results.append(Applied(entry, None, "conflict: not recorded (use --replace --reason TEXT)"))
            continue
        ref = entry.ref
        assert ref.tag is not None and ref.digest is not None
        item = TrustedImage(
            registry=ref.registry,
            repository=ref.repository,
            tag=ref.tag,
            digest=ref.digest,
            source=entry.source,
            commit=entry.commit,
            recorded_at=entry.pushed_at or utcnow(),
            recorded_by=recorded_by,
            reason=replace_reason if replacing else None,
        )
        try:
            outcome = record_trusted(store, item, replace=replacing)
        except TrustConflictError as exc:  # changed since the plan was made (another recorder)
            results.append(Applied(entry, None, exc.message))
            continue
        results.append(Applied(entry, outcome))
    return results
