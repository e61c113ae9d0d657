"""A saved CI log (any CI) as a source of back-filled trust: one text file, or a GitHub Actions log zip."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from audit.adapters.ci.archive import ArchiveRefused, job_logs_from_zip
from audit.errors import UsageError
from audit.models import LogStatus
from audit.records import CiRun, JobLog, RunLogs
from audit.untrusted import has_unsafe_characters, printable

MAX_LOG_BYTES = 256 * 1024 * 1024


class SavedLog:
    """ports.CiLogSource for `--log FILE --source URL [--commit SHA]`."""

    def __init__(self, path: Path, *, source: str, commit: str | None = None) -> None:
        parts = urlsplit(source.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname or has_unsafe_characters(source):
            raise UsageError(
                f"--source {printable(source)!r} is not the web URL of a CI run",
                hint="e.g. --source https://github.com/org/app/actions/runs/42",
            )
        self.source = source.strip()
        self.path = path
        self.commit = commit

    def runs(self) -> list[CiRun]:
        if not self.path.is_file():
            raise UsageError(f"--log {self.path}: no such file", hint="give the path of a saved CI log")
        return [CiRun(source=self.source, commit=self.commit, handle=str(self.path))]

    def logs(self, run: CiRun) -> RunLogs:
        try:
            with self.path.open("rb") as stream:
                data = stream.read(MAX_LOG_BYTES + 1)
        except OSError as exc:
            return RunLogs(status=LogStatus.UNREADABLE, reason=f"cannot read {self.path}: {exc.strerror or exc}")
        if len(data) > MAX_LOG_BYTES:
            return RunLogs(status=LogStatus.UNREADABLE, reason=f"{self.path} is larger than {MAX_LOG_BYTES} bytes")
        if data.startswith(b"PK\x03\x04"):
            try:
                return RunLogs(status=LogStatus.READ, jobs=tuple(job_logs_from_zip(data)))
            except ArchiveRefused as exc:
                return RunLogs(status=LogStatus.UNREADABLE, reason=f"log archive refused: {exc}")
        name = printable(self.path.name, max_chars=120)
        return RunLogs(
            status=LogStatus.READ,
            jobs=(JobLog(job=name, steps=((None, data.decode("utf-8", errors="replace")),)),),
        )
