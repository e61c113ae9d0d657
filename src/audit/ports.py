"""The seams of the audit use case: what the service needs from stores, registries and alert channels."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Protocol

from audit.models import Digest, ImageRef, MediaType, Observation, RecordOutcome, TagListing

if TYPE_CHECKING:  # pydantic models and the package side: an image's `check` uses these ports without either
    from audit.packages import IndexFile, ProjectPage
    from audit.records import CiRun, Finding, RunLogs, TagState, TrustedImage, TrustSnapshot, WatchSettings


class TrustReader(Protocol):
    """What the auditor reads of the trusted digests CI recorded; it has no way to write them (the audit role
    may only read the trust table, see template.yaml)."""

    def load_all(self) -> list[TrustedImage]:
        """Every current trusted record (not history), all pages read."""
        ...

    def get(self, image: str, tag: str, *, consistent: bool = False) -> TrustedImage | None: ...

    def history(self, image: str, tag: str) -> list[TrustedImage]:
        """Previous records of one tag (replaced or moved), oldest first; never includes the current one."""
        ...

    def digests_ever_recorded(self, image: str) -> set[Digest]:
        """Every digest recorded for any tag of the repository, current or history (`any-trusted`)."""
        ...

    def load_watch_settings(self) -> list[WatchSettings]: ...

    def load_snapshot(self) -> TrustSnapshot:
        """`load_all()` and `load_watch_settings()` together, in one read of the store where it can.

        Stored watch settings that fail validation (an item written by hand) are returned as rejected, so one
        bad entry is reported instead of ending the audit of everything else.
        """
        ...

    def snapshot_pages(self) -> Iterator[TrustSnapshot]:
        """`load_snapshot()` a page at a time as the store reads it (unsorted), so checks start at the first page."""
        ...

    def get_watch_settings(self, image: str) -> WatchSettings | None: ...


class TrustRecorder(Protocol):
    """What the recorder (CI, `record`, `watch`, `trust import`, `trust backfill --apply`) writes, with the reads
    a record needs (the CI role's GetItem, Query, PutItem, ConditionCheckItem in template.yaml)."""

    def get(self, image: str, tag: str, *, consistent: bool = False) -> TrustedImage | None: ...

    def get_watch_settings(self, image: str) -> WatchSettings | None: ...

    def record(self, item: TrustedImage, *, replace: bool = False, moving: bool = False) -> RecordOutcome:
        """Store a trusted digest with a conditional write, as `record_rules.decide_record` decides.

        Same digest again: UNCHANGED. Different digest: TrustConflictError unless `replace` (then REPLACED,
        `item.reason` must be set) or `moving` (APPENDED). The previous record always goes to history.
        """
        ...

    def put_watch_settings(self, settings: WatchSettings) -> None: ...


class TrustStore(TrustReader, TrustRecorder, Protocol):
    """A whole trust store (both concrete stores are one): for wiring, and for the commands that read and write
    (`trust import` reports what it skipped, `trust backfill` plans before it applies)."""


class StateStore(Protocol):
    """The auditor's memory between runs, one TagState per (image, tag)."""

    def load_all(self) -> dict[tuple[str, str], TagState]: ...

    def save(self, changed: Sequence[TagState]) -> None:
        """Write only the given (changed) items, batched. Raises StoreError."""
        ...


class Registry(Protocol):
    """The live side: what a registry serves now."""

    async def observe(
        self, ref: ImageRef, *, expected: Digest | None = None, platforms: bool = False
    ) -> Observation: ...

    async def list_tags(
        self,
        registry: str,
        repository: str,
        *,
        max_tags: int,
        should_continue: Callable[[], bool] | None = None,
    ) -> TagListing:
        """At most `max_tags` names, no further page once `should_continue()` is false; invalid names set aside."""
        ...


class ManifestView(Protocol):
    """What `record` keeps of a manifest as evidence: its media type and, for an index, the platform digests."""

    @property
    def media_type(self) -> MediaType: ...

    @property
    def platforms(self) -> dict[str, Digest] | None: ...


class ManifestReader(Protocol):
    """The registry as `record` asks it about a digest before trusting it."""

    async def fetch_manifest(self, ref: ImageRef) -> ManifestView:
        """The manifest of `ref` (by digest when it has one), its bytes verified; raises RegistryError."""
        ...


class Alerts(Protocol):
    """Where findings go. Raises PublishError when any part could not be delivered."""

    def publish(self, run_id: str, findings: Sequence[Finding], *, total_tags: int) -> int:
        """Publish findings; return the number of messages sent."""
        ...


class PackageIndex(Protocol):
    """The live side of Python packages: what a simple index (PEP 503/691) serves for a project now."""

    async def project_page(self, index_url: str, project: str) -> ProjectPage:
        """Raises ProjectNotFoundError when the index has no such project, PackageIndexError on anything else."""
        ...

    async def file_digest(self, index_url: str, file: IndexFile) -> Digest:
        """sha256 of the bytes the index serves for one file (streamed, size-capped); raises PackageIndexError."""
        ...


class CiLogSource(Protocol):
    """Where back-filled trust comes from: CI runs (oldest first) and the job logs of each run."""

    def runs(self) -> list[CiRun]:
        """Every run to read, oldest first; raises AuditError when the list itself cannot be read."""
        ...

    def logs(self, run: CiRun) -> RunLogs:
        """The run's job logs, or why they cannot be had (expired, refused); never raises for one run."""
        ...


@dataclass(frozen=True)
class LeaseClaim:
    """The answer to a lease request: ours now, or who holds it (and until when, if it can go stale)."""

    acquired: bool
    holder: str
    expires_at: datetime | None = None


class RunLease(Protocol):
    """At most one publishing run at a time, so two runs never send the same alert twice.

    The lease lives next to the audit state (a reserved item of the state table, a lock file next to the
    state file); a lease whose holder died is taken over once it expired.
    """

    def acquire(self, owner: str) -> LeaseClaim: ...

    def renew(self, owner: str) -> bool:
        """Extend our lease before publishing; False when it expired and another run took it."""
        ...

    def release(self, owner: str) -> None:
        """Give the lease up if it is still ours (a lease already taken over is left alone)."""
        ...


class Provisioning(Protocol):
    """Creates what the stores and alerts live in (`digest-audit init`), idempotently: existing ones are kept."""

    def create_tables(self, trust_table: str, state_table: str) -> None:
        """Both tables with the key schema of the SAM template; raises StoreError on another schema."""
        ...

    def create_topic(self, name: str) -> str:
        """The topic's ARN (created, or the existing one); raises PublishError."""
        ...
