"""The audit service's world for unit tests of the use case: file stores in a temporary directory, a scripted
registry, recording alerts and a settable clock, shared by every service test module."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import cast

from audit import bootstrap
from audit.adapters.file_store import FileStateStore, FileTrustStore
from audit.app.audit import AuditService, RunOptions
from audit.config import DEFAULT_MAX_TAGS_PER_REPOSITORY, AuditSettings, Settings
from audit.errors import PublishError, RegistryError
from audit.models import Digest, ImageRef, LiveStatus, Observation, TagListing
from audit.ports import Registry, RunLease
from audit.records import Finding, TrustedImage

T0 = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)
IMAGE = "registry.example.com/org/app"


def digest(char: str) -> Digest:
    return Digest.parse("sha256:" + char * 64)


class ScriptedRegistry:
    """Serves digests from a dict; tags listed per repository; counts what was asked."""

    def __init__(self) -> None:
        self.served: dict[tuple[str, str], Digest | None] = {}
        self.failing: dict[tuple[str, str], str] = {}
        self.tags: dict[str, list[str]] = {}
        self.observed: list[tuple[ImageRef, bool]] = []
        self.on_observe: list[object] = []

    async def observe(self, ref: ImageRef, *, expected: Digest | None = None, platforms: bool = False) -> Observation:
        self.observed.append((ref, platforms))
        key = (ref.image, ref.tag or "")
        if key in self.failing:
            return Observation(ref=ref, status=LiveStatus.UNVERIFIABLE, reason=self.failing[key])
        live = self.served.get(key)
        if live is None:
            return Observation(ref=ref, status=LiveStatus.MISSING, reason="tag not found")
        return Observation(ref=ref, status=LiveStatus.FOUND, live_digest=live)

    async def list_tags(
        self,
        registry: str,
        repository: str,
        *,
        max_tags: int,
        should_continue: Callable[[], bool] | None = None,
    ) -> TagListing:
        image = f"{registry}/{repository}"
        if image not in self.tags:
            raise RegistryError(f"cannot list tags of {image}: http 503")
        return TagListing(tuple(self.tags[image]))


class RecordingAlerts:
    def __init__(self) -> None:
        self.runs: list[list[Finding]] = []
        self.fail = False
        self.reject_tags: set[str] = set()  # findings of these tags are "not accepted" (a partial publish)

    def publish(self, run_id: str, findings: Sequence[Finding], *, total_tags: int) -> int:
        if self.fail:
            raise PublishError("cannot publish to topic arn:aws:sns:eu-west-1:1:alerts")
        if self.reject_tags:
            accepted = tuple(f for f in findings if f.tag not in self.reject_tags)
            self.runs.append(list(accepted))
            raise PublishError("1 of 2 alert message(s) were not published", delivered=accepted)
        self.runs.append(list(findings))
        return len(findings)

    @property
    def last(self) -> list[Finding]:
        return self.runs[-1]


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


class World:
    def __init__(self, tmp_path: Path) -> None:
        self.trust = FileTrustStore(tmp_path / "trust.json")
        self.state = FileStateStore(tmp_path / "state.json")
        self.registry = ScriptedRegistry()
        self.alerts = RecordingAlerts()
        self.clock = Clock()
        self.sleeps: list[float] = []
        self.started = 0
        self.budget: int | None = None

    def record(self, tag: str, char: str, *, moving: bool = False) -> None:
        item = TrustedImage(
            registry="registry.example.com",
            repository="org/app",
            tag=tag,
            digest=digest(char),
            source=f"https://ci.example.com/runs/{tag}",
            commit="abc123",
            recorded_at=self.clock(),
        )
        self.trust.record(item, moving=moving)

    def serve(self, tag: str, char: str | None) -> None:
        self.registry.served[(IMAGE, tag)] = digest(char) if char else None

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)

    def should_start(self) -> bool:
        self.started += 1
        return self.budget is None or self.started <= self.budget

    def service(
        self,
        registry: object | None = None,
        *,
        lease: RunLease | None = None,
        max_tags_per_repository: int = DEFAULT_MAX_TAGS_PER_REPOSITORY,
    ) -> AuditService:
        """The service over this world, built by the composition root; `registry` replaces the scripted one (e.g.
        a wrapper around it). Without a `lease`, one no other run holds."""
        from tests.support.memory_ports import MemoryRunLease  # noqa: PLC0415 - it imports this module's fakes

        settings = Settings(audit=AuditSettings(reverify_delay=5.0, max_tags_per_repository=max_tags_per_repository))
        app = bootstrap.build(
            settings,
            trust=self.trust,
            state=self.state,
            lease=lease or MemoryRunLease(),
            alerts=self.alerts,
            registry=cast(Registry, registry or self.registry),  # a wrapper is duck-typed
            clock=self.clock,
            sleep=self.sleep,
            should_start=self.should_start,
        )
        return app.auditor(with_packages=False)

    async def run(self, **options: object) -> tuple[int, list[Finding]]:
        before = len(self.alerts.runs)
        report = await self.service().run(RunOptions(**options))  # type: ignore[arg-type]
        findings = self.alerts.last if len(self.alerts.runs) > before else []
        return report.worst_exit_code(), findings
