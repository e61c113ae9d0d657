"""In-process fakes of the recorder-side ports, for unit tests of the use cases in audit.app (no files, no sockets).

The trust store follows the same record rules as the real stores (`record_rules.decide_record`), so a use case
tested here behaves as it does on the trust file or DynamoDB.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from audit.errors import StoreError
from audit.models import (
    Digest,
    ImageRef,
    MediaType,
    RecordOutcome,
    TagState,
    TrustedImage,
    TrustSnapshot,
    WatchSettings,
)
from audit.record_rules import decide_record


class MemoryTrust:
    """A whole trust store in memory; `fail_on_record` makes the n-th write fail like a throttled table."""

    def __init__(self, *records: TrustedImage) -> None:
        self.current: dict[tuple[str, str], TrustedImage] = {(r.image, r.tag): r for r in records}
        self.previous: dict[tuple[str, str], list[TrustedImage]] = {}
        self.watch: dict[str, WatchSettings] = {}
        self.writes: list[str] = []
        self.fail_on_record: int | None = None
        self._records = 0

    # TrustReader
    def load_all(self) -> list[TrustedImage]:
        return list(self.current.values())

    def get(self, image: str, tag: str, *, consistent: bool = False) -> TrustedImage | None:
        return self.current.get((image, tag))

    def history(self, image: str, tag: str) -> list[TrustedImage]:
        return list(self.previous.get((image, tag), []))

    def digests_ever_recorded(self, image: str) -> set[Digest]:
        found = {r.digest for (i, _), r in self.current.items() if i == image}
        return found | {r.digest for (i, _), old in self.previous.items() if i == image for r in old}

    def load_watch_settings(self) -> list[WatchSettings]:
        return list(self.watch.values())

    def get_watch_settings(self, image: str) -> WatchSettings | None:
        return self.watch.get(image)

    def load_snapshot(self) -> TrustSnapshot:
        return TrustSnapshot(self.load_all(), self.load_watch_settings())

    def snapshot_pages(self) -> Iterator[TrustSnapshot]:
        yield self.load_snapshot()

    # TrustRecorder
    def record(self, item: TrustedImage, *, replace: bool = False, moving: bool = False) -> RecordOutcome:
        self._records += 1
        if self._records == self.fail_on_record:
            raise StoreError("cannot write table trust: throttled", hint="try again later")
        key = (item.image, item.tag)
        decision = decide_record(self.current.get(key), item, replace=replace, moving=moving)
        if decision.outcome is not RecordOutcome.UNCHANGED:
            if decision.superseded is not None:
                self.previous.setdefault(key, []).append(decision.superseded)
            self.current[key] = item
            self.writes.append(f"record {item.ref.familiar}")
        return decision.outcome

    def put_watch_settings(self, settings: WatchSettings) -> None:
        self.watch[settings.image] = settings
        self.writes.append(f"watch {settings.image}")


class MemoryState:
    def __init__(self, *states: TagState) -> None:
        self.states = {(s.image, s.tag): s for s in states}

    def load_all(self) -> dict[tuple[str, str], TagState]:
        return dict(self.states)

    def save(self, changed: object) -> None:
        raise AssertionError("reports never save audit state")


@dataclass(frozen=True)
class Manifest:
    media_type: MediaType
    platforms: dict[str, Digest] | None = None


class Manifests:
    """A registry's manifests by digest; others raise the registry error `failure` names."""

    def __init__(self, served: dict[Digest, Manifest], failure: Exception | None = None) -> None:
        self.served = served
        self.failure = failure
        self.asked: list[ImageRef] = []

    async def fetch_manifest(self, ref: ImageRef) -> Manifest:
        self.asked.append(ref)
        if ref.digest in self.served:
            return self.served[ref.digest]
        assert self.failure is not None
        raise self.failure


class Provisioned:
    def __init__(self) -> None:
        self.calls: list[tuple[str, ...]] = []

    def create_tables(self, trust_table: str, state_table: str) -> None:
        self.calls.append(("tables", trust_table, state_table))

    def create_topic(self, name: str) -> str:
        self.calls.append(("topic", name))
        return f"arn:aws:sns:eu-west-1:123456789012:{name}"
