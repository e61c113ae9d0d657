"""The back-fill use case over its ports: a scripted CI log source and a file trust store on tmp_path."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from audit.adapters.file_store import FileTrustStore
from audit.app.backfill import PlanStatus, apply_plan, plan_backfill
from audit.models import Digest, LogStatus, MovingMode, RecordOutcome
from audit.records import CiRun, JobLog, RunLogs, TrustedImage, WatchSettings
from tests.support import ci_log_samples as samples
from tests.support.ci_log_samples import digest, github


class ScriptedRuns:
    """Runs with fixed logs; counts how often logs were read."""

    def __init__(self, logs: dict[str, RunLogs]) -> None:
        self._logs = logs
        self.read: list[str] = []

    def runs(self) -> list[CiRun]:
        return [CiRun(source=f"https://ci/{name}", commit=None, handle=name) for name in self._logs]

    def logs(self, run: CiRun) -> RunLogs:
        self.read.append(run.handle)
        return self._logs[run.handle]


def pushed(text: str) -> RunLogs:
    return RunLogs(status=LogStatus.READ, jobs=(JobLog(job="build", steps=(("push", github(text)),)),))


def test_moving_tags_plan_as_new_and_append_pinned_tags_conflict(tmp_path: Path) -> None:
    store = FileTrustStore(tmp_path / "t.json")
    store.put_watch_settings(
        WatchSettings(registry="ghcr.io", repository="org/app", moving={"latest": MovingMode.LATEST_RECORDED})
    )
    store.record(
        TrustedImage(
            registry="ghcr.io", repository="org/app", tag="2.0", digest=Digest.parse(digest("0")),
            source="https://ci/0", recorded_at=datetime(2021, 1, 1, tzinfo=UTC),
        )
    )  # fmt: skip
    store.record(
        TrustedImage(
            registry="ghcr.io", repository="org/app", tag="latest", digest=Digest.parse(digest("0")),
            source="https://ci/0", recorded_at=datetime(2021, 1, 1, tzinfo=UTC),
        ),
    )  # fmt: skip
    source = ScriptedRuns({"1": pushed(samples.BUILDKIT_PUSH), "2": RunLogs(status=LogStatus.EXPIRED, reason="gone")})

    plan = plan_backfill(store, source, progress=lambda done, total, run: None)

    assert [(entry.status, entry.reference, entry.moving) for entry in plan] == [
        (PlanStatus.CONFLICT, "ghcr.io/org/app:2.0", False),
        (PlanStatus.NEW, "ghcr.io/org/app:latest", True),
        (PlanStatus.LOG_EXPIRED, None, False),
    ]
    assert store.get("ghcr.io/org/app", "latest").digest == Digest.parse(digest("0"))  # type: ignore[union-attr]

    applied = apply_plan(store, plan, recorded_by="test")

    assert [(result.entry.reference, result.outcome) for result in applied] == [
        ("ghcr.io/org/app:2.0", None),
        ("ghcr.io/org/app:latest", RecordOutcome.APPENDED),
    ]
    assert [str(old.digest) for old in store.history("ghcr.io/org/app", "latest")] == [digest("0")]
