"""The one composition root: `bootstrap.build(settings, **overrides)` with in-memory ports, and what the App
builds on its own (lazily, from settings)."""

from __future__ import annotations

import asyncio
import io
from datetime import timedelta
from pathlib import Path

import pytest

from audit import bootstrap
from audit.adapters.package_index import PackageIndexClient
from audit.app.audit import RunOptions
from audit.config import AlertSettings, AuditSettings, Settings, StoreSettings
from audit.errors import ConfigError
from audit.models import Notice, Verdict
from audit.records import TrustedImage
from tests.support.memory_ports import (
    MemoryAlerts,
    MemoryRegistry,
    MemoryRunLease,
    MemoryStateStore,
    MemoryTrustStore,
)
from tests.support.service_world import IMAGE, T0, digest

QUIET = Settings(audit=AuditSettings(reverify_delay=0.0))


class Ports:
    """Every port of an audit, in memory."""

    def __init__(self) -> None:
        self.trust = MemoryTrustStore(clock=lambda: T0)
        self.state = MemoryStateStore()
        self.lease = MemoryRunLease()
        self.alerts = MemoryAlerts()
        self.registry = MemoryRegistry()
        self.sleeps: list[float] = []

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)

    def record(self, tag: str, char: str) -> None:
        self.trust.record(
            TrustedImage(
                registry="registry.example.com",
                repository="org/app",
                tag=tag,
                digest=digest(char),
                source=f"https://ci.example.com/runs/{tag}",
                recorded_at=T0,
            )
        )

    def app(self, settings: Settings = QUIET) -> bootstrap.App:
        return bootstrap.build(
            settings,
            trust=self.trust,
            state=self.state,
            lease=self.lease,
            alerts=self.alerts,
            registry=self.registry,
            clock=lambda: T0,
            sleep=self.sleep,
        )


def test_a_drift_is_alerted_then_remembered_under_the_lease() -> None:
    ports = Ports()
    ports.record("1.0", "a")
    ports.record("2.0", "b")
    ports.registry.served = {(IMAGE, "1.0"): digest("a"), (IMAGE, "2.0"): digest("c")}

    report = asyncio.run(ports.app().auditor().run(RunOptions()))

    assert report.by_verdict == {"match": 1, "drift": 1}
    assert [(f.tag, f.status, f.notice) for f in ports.alerts.last] == [("2.0", Verdict.DRIFT, Notice.NEW)]
    assert ports.state.states[(IMAGE, "2.0")].alerted_verdict is Verdict.DRIFT
    assert [event for event, _ in ports.lease.events] == ["acquire", "renew", "release"]
    assert ports.lease.holder is None
    assert ports.sleeps == [0.0], "the settings' re-verify delay is the one the audit waits"

    again = asyncio.run(ports.app().auditor().run(RunOptions()))
    assert again.findings == [], "the same drift is not alerted twice"


def test_a_dry_run_takes_no_lease_and_saves_nothing() -> None:
    ports = Ports()
    ports.record("1.0", "a")
    ports.registry.served = {(IMAGE, "1.0"): digest("c")}
    ports.lease.holder = "another run"

    report = asyncio.run(ports.app().auditor(dry_run=True).run(RunOptions(dry_run=True)))

    assert report.stepped_aside is None and report.by_verdict == {"drift": 1}
    assert ports.lease.events == []
    assert ports.state.saves == [] and ports.alerts.runs == []


def test_another_run_holding_the_lease_makes_this_one_step_aside() -> None:
    ports = Ports()
    ports.record("1.0", "a")
    ports.lease.holder = "run 42"

    report = asyncio.run(ports.app().auditor().run(RunOptions()))

    assert report.stepped_aside is not None and report.stepped_aside.holder == "run 42"
    assert ports.registry.observed == [] and ports.state.saves == []


def test_alert_policy_and_workers_come_from_the_settings() -> None:
    settings = Settings(alerts=AlertSettings(reminder_interval=timedelta(hours=2), unverifiable_after=7))
    app = Ports().app(settings)

    assert app.policy.reminder_interval == timedelta(hours=2)
    assert app.policy.unverifiable_after == 7
    assert app.settings.registry.check_workers == 2 * settings.registry.concurrency


def test_printed_alerts_go_to_the_given_stream() -> None:
    ports = Ports()
    ports.record("1.0", "a")
    ports.registry.served = {(IMAGE, "1.0"): digest("c")}
    stream = io.StringIO()
    app = bootstrap.build(
        Settings(alerts=AlertSettings(print_alerts=True), audit=AuditSettings(reverify_delay=0.0)),
        trust=ports.trust,
        state=ports.state,
        lease=ports.lease,
        registry=ports.registry,
        sleep=ports.sleep,
        alert_stream=stream,
    )

    asyncio.run(app.auditor().run(RunOptions()))

    assert "DRIFT" in stream.getvalue().upper() and "registry.example.com/org/app:1.0" in stream.getvalue()


def test_adapters_are_built_on_first_use_so_a_missing_table_is_only_an_error_for_who_needs_it() -> None:
    app = bootstrap.build(Settings())  # no table, no topic: nothing built yet, so nothing to complain about

    with pytest.raises(ConfigError, match="no trust store configured"):
        _ = app.trust
    with pytest.raises(ConfigError, match="no alert topic configured"):
        _ = app.alerts
    registry = app.registry  # what `check` needs builds without any store
    assert app.registry is registry, "built once, then kept"
    asyncio.run(app.aclose())


def test_the_secret_is_read_once_and_only_when_a_client_needs_credentials() -> None:
    reads: list[str] = []

    def read() -> str:
        reads.append("read")
        return "{}"

    app = bootstrap.build(Settings(), secret_text=read)
    assert reads == []
    _ = (app.registry, app.packages)
    assert reads == ["read"]
    asyncio.run(app.aclose())


def test_a_recorder_creates_a_missing_trust_file_where_an_audit_refuses_it(tmp_path: Path) -> None:
    settings = Settings(stores=StoreSettings(trust_file=tmp_path / "trusted.json", state_file=tmp_path / "state.json"))

    with pytest.raises(ConfigError, match="does not exist"):
        _ = bootstrap.build(settings).trust
    recorder = bootstrap.build(settings).recorder
    assert recorder.load_all() == []


def test_closing_a_container_app_closes_the_clients_it_built_even_before_any_run() -> None:
    app = bootstrap.build(Settings())
    packages = app.packages
    assert isinstance(packages, PackageIndexClient)
    assert not packages._http.is_closed

    app.close()

    assert packages._http.is_closed
