"""The audit reads a tag's history only for a drift, and a history it cannot read costs only the rollback hint."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from audit.errors import StoreError
from audit.models import Notice, Verdict, iso_utc
from audit.records import TrustedImage
from tests.support.service_world import IMAGE, T0, World, digest


@pytest.fixture
def world(tmp_path: Path) -> World:
    world = World(tmp_path)
    world.record("1.0", "a")  # recorded at T0
    world.record("1.1", "c")
    world.clock.now += timedelta(days=2)
    rebuilt = TrustedImage(
        registry="registry.example.com",
        repository="org/app",
        tag="1.0",
        digest=digest("b"),
        source="https://ci.example.com/runs/1.0-b",
        recorded_at=world.clock(),
        reason="rebuilt on a new base",
    )
    world.trust.record(rebuilt, replace=True)
    world.serve("1.0", "a")  # the first build is back
    world.serve("1.1", "c")
    return world


async def test_a_drift_back_to_an_earlier_record_reads_that_tags_history_once(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked: list[tuple[str, str]] = []
    read_history = world.trust.history

    def counted(image: str, tag: str) -> list[TrustedImage]:
        asked.append((image, tag))
        return read_history(image, tag)

    monkeypatch.setattr(world.trust, "history", counted)
    code, findings = await world.run()

    assert code == 1
    assert asked == [(IMAGE, "1.0")]  # not for 1.1, which matches; once although the drift was re-checked
    [finding] = findings
    assert (finding.tag, finding.status, finding.notice) == ("1.0", Verdict.DRIFT, Notice.NEW)
    assert finding.reason == (
        f"serves {digest('a').short}, CI recorded {digest('b').short}; rolled back to the digest recorded for "
        f"this tag on {iso_utc(T0)} (a deliberate rollback, or a stale mirror?)"
    )


async def test_a_history_that_cannot_be_read_still_alerts_the_drift(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(image: str, tag: str) -> list[TrustedImage]:
        raise StoreError(f"cannot query the history of {image}:{tag}")

    monkeypatch.setattr(world.trust, "history", broken)
    code, findings = await world.run()

    assert code == 1
    [finding] = findings
    assert (finding.tag, finding.status) == ("1.0", Verdict.DRIFT)
    assert finding.reason == f"serves {digest('a').short}, CI recorded {digest('b').short}"
