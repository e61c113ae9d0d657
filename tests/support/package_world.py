"""The package audit's world for unit tests: an in-process package index, file stores and recorded releases,
shared by the package and streaming service tests."""

from __future__ import annotations

import hashlib
from pathlib import Path

from audit import bootstrap
from audit.adapters.file_store import FileStateStore, FileTrustStore
from audit.app.audit import RunOptions
from audit.config import AuditSettings, Settings
from audit.models import Digest, Verdict
from audit.packages import IndexFile, ProjectPage, parse_filename, registry_key
from audit.records import TrustedImage
from tests.support.service_world import T0, Clock, RecordingAlerts, ScriptedRegistry

INDEX = "https://pypi.example.com/simple"
REGISTRY = registry_key(INDEX)
WHEEL = "demo_pkg-1.0-py3-none-any.whl"
SDIST = "demo_pkg-1.0.tar.gz"


def digest(text: str) -> Digest:
    return Digest(algorithm="sha256", hex=hashlib.sha256(text.encode()).hexdigest())


def served(filename: str, content: str, *, listed: str | None = "same", yanked: str | None = None) -> IndexFile:
    name = parse_filename(filename)
    assert name is not None
    sha = digest(content) if listed == "same" else (digest(listed) if listed else None)
    return IndexFile(name, f"https://files.example/{filename}", sha, yanked)


def trusted(filename: str, content: str) -> TrustedImage:
    return TrustedImage(
        registry=REGISTRY, repository="demo-pkg", tag=filename, digest=digest(content),
        source="https://ci.example/runs/1", commit="abc", recorded_at=T0,
    )  # fmt: skip


class FakeIndex:
    """An in-process PackageIndex: pages per project, bytes per filename (hashed like the real adapter)."""

    def __init__(self) -> None:
        self.files: list[IndexFile] = []
        self.content: dict[str, str] = {}
        self.error: Exception | None = None
        self.downloads: list[str] = []

    async def project_page(self, index_url: str, project: str) -> ProjectPage:
        if self.error is not None:
            raise self.error
        return ProjectPage(project=project, files=tuple(self.files))

    async def file_digest(self, index_url: str, file: IndexFile) -> Digest:
        self.downloads.append(file.filename)
        return digest(self.content[file.filename])

    def serve(self, filename: str, content: str, **kwargs: object) -> None:
        self.files = [f for f in self.files if f.filename != filename]
        self.files.append(served(filename, content, **kwargs))  # type: ignore[arg-type]
        self.content[filename] = content


class World:
    def __init__(self, tmp_path: Path) -> None:
        self.trust = FileTrustStore(tmp_path / "trust.json")
        self.state = FileStateStore(tmp_path / "state.json")
        self.registry = ScriptedRegistry()
        self.index = FakeIndex()
        self.alerts = RecordingAlerts()
        self.clock = Clock()
        self.sleeps: list[float] = []
        self.during_sleep: list[TrustedImage] = []

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        for item in self.during_sleep:  # CI records while the auditor waits to re-check
            self.trust.record(item, replace=True)

    async def run(self, **options: object) -> tuple[int, dict[str, Verdict]]:
        from tests.support.memory_ports import MemoryRunLease  # noqa: PLC0415 - it imports this module's fakes

        app = bootstrap.build(
            Settings(audit=AuditSettings(reverify_delay=5.0)),
            trust=self.trust, state=self.state, lease=MemoryRunLease(), alerts=self.alerts,
            registry=self.registry, packages=self.index, clock=self.clock, sleep=self.sleep,
        )  # fmt: skip
        report = await app.auditor().run(RunOptions(**options))  # type: ignore[arg-type]
        return report.worst_exit_code(), {r.ref.tag or "": r.verdict for r in report.results}


def released_world(tmp_path: Path) -> World:
    """A world whose index serves the wheel and the sdist CI recorded, unchanged."""
    world = World(tmp_path)
    for name, content in ((WHEEL, "wheel"), (SDIST, "sdist")):
        world.trust.record(trusted(name, content))
        world.index.serve(name, content)
    return world
