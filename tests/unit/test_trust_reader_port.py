"""The auditor's trust port cannot write: a store that only reads type-checks and runs a whole audit.

`mypy --strict` checks this file too: `ReadOnlyTrust` has no `record` and no `put_watch_settings`, so
passing it to AuditService, PackageAuditor and observe_releases compiles only while they ask for a TrustReader.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import get_protocol_members, get_type_hints

from audit.adapters.file_store import FileTrustStore
from audit.app import report as report_use_case
from audit.app.audit import AuditService, RunOptions
from audit.app.package_audit import PackageAuditor
from audit.drift import AlertPolicy
from audit.models import Digest, MovingMode, Notice, Verdict
from audit.ports import TrustReader, TrustRecorder
from audit.records import TrustedImage, TrustSnapshot, WatchSettings
from tests.support.service_world import World, digest

WRITES = {"record", "put_watch_settings"}


class ReadOnlyTrust:
    """Every read of a trust store, passed through to a file; no write at all, and each read is counted."""

    def __init__(self, inner: FileTrustStore) -> None:
        self._inner = inner
        self.reads: list[str] = []

    def load_all(self) -> list[TrustedImage]:
        self.reads.append("load_all")
        return self._inner.load_all()

    def get(self, image: str, tag: str, *, consistent: bool = False) -> TrustedImage | None:
        self.reads.append("get")
        return self._inner.get(image, tag, consistent=consistent)

    def history(self, image: str, tag: str) -> list[TrustedImage]:
        self.reads.append("history")
        return self._inner.history(image, tag)

    def digests_ever_recorded(self, image: str) -> set[Digest]:
        self.reads.append("digests_ever_recorded")
        return self._inner.digests_ever_recorded(image)

    def load_watch_settings(self) -> list[WatchSettings]:
        self.reads.append("load_watch_settings")
        return self._inner.load_watch_settings()

    def load_snapshot(self) -> TrustSnapshot:
        self.reads.append("load_snapshot")
        return self._inner.load_snapshot()

    def snapshot_pages(self) -> Iterator[TrustSnapshot]:
        self.reads.append("snapshot_pages")
        return self._inner.snapshot_pages()

    def get_watch_settings(self, image: str) -> WatchSettings | None:
        self.reads.append("get_watch_settings")
        return self._inner.get_watch_settings(image)


def test_the_reader_port_has_no_write_and_the_recorder_port_has_them() -> None:
    assert not WRITES & get_protocol_members(TrustReader)
    assert get_protocol_members(TrustRecorder) >= WRITES
    assert not any(hasattr(ReadOnlyTrust, name) for name in WRITES)


def test_the_auditors_take_the_reader_port() -> None:
    assert get_type_hints(AuditService.__init__)["trust"] is TrustReader
    assert get_type_hints(PackageAuditor.__init__)["trust"] is TrustReader
    assert get_type_hints(report_use_case.observe_releases)["trust"] is TrustReader


async def test_a_whole_audit_runs_on_a_store_that_cannot_write(tmp_path: Path) -> None:
    world = World(tmp_path)
    world.record("1.0", "a")
    world.record("1.1", "b")
    world.record("latest", "c", moving=True)
    world.trust.put_watch_settings(
        WatchSettings(registry="registry.example.com", repository="org/app", moving={"latest": MovingMode.ANY_TRUSTED})
    )
    world.serve("1.0", "a")
    world.serve("1.1", "e")  # the swap
    world.serve("latest", "a")  # moved to another trusted digest: fine
    reader = ReadOnlyTrust(world.trust)
    service = AuditService(
        reader,
        world.state,
        world.registry,
        world.alerts,
        alert_policy=AlertPolicy(),
        reverify_delay=5.0,
        clock=world.clock,
        sleep=world.sleep,
    )

    report = await service.run(RunOptions())

    assert report.worst_exit_code() == 1
    assert [(f.tag, f.status, f.notice, f.live_digest) for f in world.alerts.last] == [
        ("1.1", Verdict.DRIFT, Notice.NEW, digest("e"))
    ]
    assert {"snapshot_pages", "get", "digests_ever_recorded"} <= set(reader.reads)
