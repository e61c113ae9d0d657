"""The package part of an audit run: recorded Python package files judged against what their index serves now.

It is a separate, small path into the one engine: it reads the package records out of the same trust snapshot,
asks the PackageIndex port, lets `drift` decide, and hands back results shaped like the image path's
`TagResult`, which the service then decides, publishes and saves exactly like image tags. Index errors make a
file unverifiable (never a match, never missing); a suspected drift is confirmed by hashing the served bytes,
and a drift or missing file is re-checked after the re-verify delay with a consistent read of its record.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

from audit import drift
from audit.errors import AuditError, PackageIndexError, ProjectNotFoundError
from audit.models import ImageRef, LiveStatus, Observation, Verdict
from audit.packages import IndexFile, ProjectPage, index_of, is_package_registry
from audit.ports import PackageIndex, TrustReader
from audit.records import TrustedImage, WatchSettings
from audit.untrusted import printable

log = logging.getLogger(__name__)

#: Projects audited at once; each one is a page request plus a download per suspected drift.
MAX_PROJECTS_IN_FLIGHT = 8


@dataclass(frozen=True)
class PackageResult:
    """The outcome for one package file (the fields of the service's TagResult)."""

    ref: ImageRef
    trusted: TrustedImage | None
    observation: Observation
    verdict: Verdict
    reason: str | None
    served: IndexFile | None = None  # the file as the index lists it (hash, PEP 592 yank); None: not listed


@dataclass
class PackageRun:
    results: list[PackageResult] = field(default_factory=list)
    unlisted: dict[str, str] = field(default_factory=dict)  # project key -> why its files could not all be listed
    unreached: list[ImageRef] = field(default_factory=list)


@dataclass(frozen=True)
class PackageSnapshot:
    """The package part of one trust snapshot: recorded files and per-project watch settings."""

    trusted: tuple[TrustedImage, ...] = ()
    settings: tuple[WatchSettings, ...] = ()


def split_snapshot(
    trusted: Iterable[TrustedImage], settings: Iterable[WatchSettings]
) -> tuple[list[TrustedImage], list[WatchSettings], PackageSnapshot]:
    """Image records and settings for the image path; package ones for this path."""
    images = [t for t in trusted if not is_package_registry(t.registry)]
    image_settings = [s for s in settings if not is_package_registry(s.registry)]
    packages = PackageSnapshot(
        tuple(t for t in trusted if is_package_registry(t.registry)),
        tuple(s for s in settings if is_package_registry(s.registry)),
    )
    return images, image_settings, packages


@dataclass(frozen=True)
class _Project:
    registry: str
    project: str
    recorded: tuple[TrustedImage, ...]
    track_new_releases: bool

    @property
    def key(self) -> str:
        return f"{self.registry}/{self.project}"

    @property
    def index_url(self) -> str:
        return index_of(self.registry)


class PackageAuditor:
    """Audits the package snapshot of one run against the PackageIndex port."""

    def __init__(
        self,
        index: PackageIndex | None,
        trust: TrustReader,
        *,
        reverify_delay: float,
        sleep: Callable[[float], Awaitable[None]],
        should_start: Callable[[], bool],
    ) -> None:
        self._index = index
        self._trust = trust
        self._reverify_delay = reverify_delay
        self._sleep = sleep
        self._should_start = should_start

    async def run(
        self,
        snapshot: PackageSnapshot,
        *,
        selected: Callable[[str], bool],
        already_alerted: Callable[[PackageResult], bool],
    ) -> PackageRun:
        run = PackageRun()
        projects = _projects(snapshot, selected)
        gate = asyncio.Semaphore(MAX_PROJECTS_IN_FLIGHT)

        async def one(project: _Project) -> list[PackageResult]:
            async with gate:
                if not self._should_start():
                    run.unreached.extend(record.ref for record in project.recorded)
                    return []
                return await self._audit(project, run.unlisted)

        outcomes = await asyncio.gather(*(one(p) for p in projects))
        suspects = [
            index
            for index, results in enumerate(outcomes)
            if any(
                r.trusted is not None and r.verdict in (Verdict.DRIFT, Verdict.MISSING) and not already_alerted(r)
                for r in results
            )
        ]
        if suspects:
            # CI may have uploaded and recorded between our trust read and the page read: wait, read again.
            await self._sleep(self._reverify_delay)
            for index in suspects:
                fresh = await asyncio.to_thread(self._fresh, projects[index])  # store reads, off the loop
                run.unlisted.pop(fresh.key, None)
                outcomes[index] = await self._audit(fresh, run.unlisted)
        for results in outcomes:
            run.results.extend(results)
        return run

    def _fresh(self, project: _Project) -> _Project:
        image = project.key
        records = [self._trust.get(image, record.tag, consistent=True) for record in project.recorded]
        return _Project(
            project.registry,
            project.project,
            tuple(r for r in records if r is not None),
            project.track_new_releases,
        )

    async def _audit(self, project: _Project, unlisted: dict[str, str]) -> list[PackageResult]:
        if self._index is None:
            return _all_unverifiable(project, "no package index client is configured for this run")
        try:
            page = await self._index.project_page(project.index_url, project.project)
        except ProjectNotFoundError as exc:
            return [
                _result(
                    drift.PackageCheck(r.ref, r, None),
                    Observation(ref=r.ref, status=LiveStatus.MISSING, reason=exc.message),
                )
                for r in project.recorded
            ]
        except (PackageIndexError, AuditError) as exc:  # credentials errors too: never a match
            log.warning("cannot read %s: %s", project.key, exc.message)
            unlisted[project.key] = exc.message
            return _all_unverifiable(project, exc.message)
        checks, left_out = drift.plan_package_checks(
            project.registry,
            project.project,
            project.recorded,
            page,
            track_new_releases=project.track_new_releases,
        )
        if page.truncated:
            unlisted[project.key] = f"the index lists more files than are read ({len(page.files)}); the rest is unseen"
        elif left_out:
            unlisted[project.key] = f"{left_out} more unrecorded file(s) not reported"
        observations = await asyncio.gather(*(self._observe(project, page, check) for check in checks))
        return [
            _result(check, observation, truncated=page.truncated)
            for check, observation in zip(checks, observations, strict=True)
        ]

    async def _observe(self, project: _Project, page: ProjectPage, check: drift.PackageCheck) -> Observation:
        served = check.served
        if check.trusted is None:
            return Observation(ref=check.ref, status=LiveStatus.FOUND, live_digest=served.sha256 if served else None)
        if served is None:
            where = f"{project.index_url} ({page.api} API)"
            return Observation(ref=check.ref, status=LiveStatus.MISSING, reason=f"{where} no longer lists this file")
        if served.sha256 == check.trusted.digest:
            return Observation(ref=check.ref, status=LiveStatus.FOUND, live_digest=served.sha256)
        assert self._index is not None  # _audit returned before planning otherwise
        # The index names another hash (or none): only the bytes it serves decide.
        try:
            hashed = await self._index.file_digest(project.index_url, served)
        except AuditError as exc:
            return Observation(ref=check.ref, status=LiveStatus.UNVERIFIABLE, reason=exc.message)
        if served.sha256 is not None and hashed != served.sha256:
            return Observation(
                ref=check.ref,
                status=LiveStatus.UNVERIFIABLE,
                reason=f"the index lists {served.sha256.short} but the file it serves hashes to {hashed.short}",
            )
        return Observation(ref=check.ref, status=LiveStatus.FOUND, live_digest=hashed)


def _projects(snapshot: PackageSnapshot, selected: Callable[[str], bool]) -> list[_Project]:
    recorded: dict[tuple[str, str], list[TrustedImage]] = defaultdict(list)
    for record in snapshot.trusted:
        if selected(record.image):
            recorded[(record.registry, record.repository)].append(record)
    tracking = {(s.registry, s.repository) for s in snapshot.settings if s.track_new_tags and selected(s.image)}
    keys = sorted(recorded.keys() | tracking)
    return [
        _Project(
            registry,
            project,
            tuple(sorted(recorded.get((registry, project), []), key=lambda r: r.tag)),
            (registry, project) in tracking,
        )
        for registry, project in keys
    ]


def _result(check: drift.PackageCheck, observation: Observation, *, truncated: bool = False) -> PackageResult:
    judgement = drift.package_verdict(check, observation, truncated=truncated)
    return PackageResult(check.ref, check.trusted, observation, judgement.verdict, judgement.reason, check.served)


def _all_unverifiable(project: _Project, reason: str) -> list[PackageResult]:
    safe = printable(reason)
    return [
        _result(
            drift.PackageCheck(record.ref, record, None),
            Observation(ref=record.ref, status=LiveStatus.UNVERIFIABLE, reason=safe),
        )
        for record in project.recorded
    ]
