"""In-memory fakes of every port (test code, not shipped), so unit tests build the App with
`bootstrap.build(settings, trust=MemoryTrustStore(), ...)` and no file, table or socket.

The memory trust store follows `record_rules.decide_record` like the file and DynamoDB stores, and runs in the
shared store behaviour suite with them. The registry, alert channel and package index fakes were written first
for the service worlds; they are the memory ports too and are named here under their port names.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from audit.errors import StoreError
from audit.models import Digest, ImageRef, MediaType, RecordOutcome, utcnow
from audit.ports import LeaseClaim
from audit.record_rules import decide_record
from audit.records import TagState, TrustedImage, TrustSnapshot, WatchSettings
from tests.support.package_world import FakeIndex
from tests.support.service_world import RecordingAlerts, ScriptedRegistry

#: ports.Registry: digests served per (image, tag), tag lists per repository, every observation recorded.
MemoryRegistry = ScriptedRegistry
#: ports.Alerts: every published batch of findings kept; can fail whole or in part.
MemoryAlerts = RecordingAlerts
#: ports.PackageIndex: one page per project, file bytes per filename (hashed like the real adapter).
MemoryPackageIndex = FakeIndex


class MemoryTrustStore:
    """ports.TrustReader and ports.TrustRecorder in a dict; history in the order records were superseded.

    `writes` lists every write in order (`record IMAGE:TAG`, `watch IMAGE`); `fail_on_record = n` makes the n-th
    record call fail like a throttled table.
    """

    def __init__(self, *records: TrustedImage, clock: Callable[[], datetime] = utcnow) -> None:
        self._clock = clock
        self.trusted: dict[tuple[str, str], TrustedImage] = {(r.image, r.tag): r for r in records}
        self.history_records: list[tuple[TrustedImage, datetime]] = []
        self.watch: dict[str, WatchSettings] = {}
        self.writes: list[str] = []
        self.fail_on_record: int | None = None
        self._record_calls = 0

    def load_all(self) -> list[TrustedImage]:
        return [self.trusted[key] for key in sorted(self.trusted)]

    def get(self, image: str, tag: str, *, consistent: bool = False) -> TrustedImage | None:
        return self.trusted.get((image, tag))

    def history(self, image: str, tag: str) -> list[TrustedImage]:
        return [record for record, _ in self.history_records if (record.image, record.tag) == (image, tag)]

    def digests_ever_recorded(self, image: str) -> set[Digest]:
        current = (record for record in self.trusted.values() if record.image == image)
        previous = (record for record, _ in self.history_records if record.image == image)
        return {record.digest for record in (*current, *previous)}

    def load_watch_settings(self) -> list[WatchSettings]:
        return [self.watch[image] for image in sorted(self.watch)]

    def load_snapshot(self) -> TrustSnapshot:
        return TrustSnapshot(self.load_all(), self.load_watch_settings())

    def snapshot_pages(self) -> Iterator[TrustSnapshot]:
        yield self.load_snapshot()

    def get_watch_settings(self, image: str) -> WatchSettings | None:
        return self.watch.get(image)

    def record(self, item: TrustedImage, *, replace: bool = False, moving: bool = False) -> RecordOutcome:
        self._record_calls += 1
        if self._record_calls == self.fail_on_record:
            raise StoreError("cannot write table trust: throttled", hint="try again later")
        decision = decide_record(self.trusted.get((item.image, item.tag)), item, replace=replace, moving=moving)
        if decision.outcome is RecordOutcome.UNCHANGED:
            return decision.outcome
        if decision.superseded is not None:
            self.history_records.append((decision.superseded, self._clock()))
        self.trusted[item.image, item.tag] = item
        self.writes.append(f"record {item.ref.familiar}")
        return decision.outcome

    def put_watch_settings(self, settings: WatchSettings) -> None:
        self.watch[settings.image] = settings
        self.writes.append(f"watch {settings.image}")


class MemoryStateStore:
    """ports.StateStore in a dict; `saves` keeps every batch written, in order."""

    def __init__(self, *states: TagState) -> None:
        self.states: dict[tuple[str, str], TagState] = {state.key: state for state in states}
        self.saves: list[list[TagState]] = []

    def load_all(self) -> dict[tuple[str, str], TagState]:
        return dict(self.states)

    def save(self, changed: Sequence[TagState]) -> None:
        if not changed:
            return
        self.saves.append(list(changed))
        for state in changed:
            self.states[state.key] = state


@dataclass
class MemoryRunLease:
    """ports.RunLease in memory: one holder at a time; `holder` may be set to play another run holding it."""

    holder: str | None = None
    events: list[tuple[str, str]] = field(default_factory=list)

    def acquire(self, owner: str) -> LeaseClaim:
        self.events.append(("acquire", owner))
        if self.holder is not None and self.holder != owner:
            return LeaseClaim(acquired=False, holder=self.holder)
        self.holder = owner
        return LeaseClaim(acquired=True, holder=owner)

    def renew(self, owner: str) -> bool:
        self.events.append(("renew", owner))
        return self.holder == owner

    def release(self, owner: str) -> None:
        self.events.append(("release", owner))
        if self.holder == owner:
            self.holder = None


@dataclass(frozen=True)
class MemoryManifest:
    """What ports.ManifestReader gives for one digest."""

    media_type: MediaType
    platforms: dict[str, Digest] | None = None


class MemoryManifests:
    """ports.ManifestReader: manifests by digest; any other digest raises `failure` (a registry error)."""

    def __init__(self, served: dict[Digest, MemoryManifest], failure: Exception | None = None) -> None:
        self.served = served
        self.failure = failure
        self.asked: list[ImageRef] = []

    async def fetch_manifest(self, ref: ImageRef) -> MemoryManifest:
        self.asked.append(ref)
        if ref.digest in self.served:
            return self.served[ref.digest]
        assert self.failure is not None
        raise self.failure


class MemoryProvisioning:
    """ports.Provisioning: every call kept; the topic ARN is made up from the name."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, ...]] = []

    def create_tables(self, trust_table: str, state_table: str) -> None:
        self.calls.append(("tables", trust_table, state_table))

    def create_topic(self, name: str) -> str:
        self.calls.append(("topic", name))
        return f"arn:aws:sns:eu-west-1:123456789012:{name}"
