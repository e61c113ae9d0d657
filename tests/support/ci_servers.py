"""Fake GitHub Actions and GitLab CI APIs over real HTTP on loopback, for `digest-audit trust backfill` tests.

They serve what the real APIs serve for a back-fill: paginated successful runs (GitHub: `workflow_runs`, `Link`
rel="next"; GitLab: a job list with `x-next-page`), log archives as zip files behind a 302 to a storage server on
another port (another origin), traces as text, 410/404 for expired logs, and rate-limit answers
(`x-ratelimit-remaining: 0` with `x-ratelimit-reset`, or `retry-after`). Every request is recorded with the
credential headers it carried, so tests can prove the token never reached the storage origin.
"""

from __future__ import annotations

import io
import json
import threading
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import override
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.support.loopback_server import LoopbackServer, Recorded, Reply


@dataclass(frozen=True)
class Seen:
    path: str
    query: dict[str, list[str]]
    authorization: str | None
    private_token: str | None


@dataclass
class Answer:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


def zip_archive(files: dict[str, str]) -> bytes:
    """A GitHub Actions log archive: `N_job.txt` whole-job files and `job/N_step.txt` step files."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, text in files.items():
            archive.writestr(name, text)
    return buffer.getvalue()


class _Server:
    """A `LoopbackServer` whose answers come from `route`; `seen` records every request with its credentials."""

    def __init__(self) -> None:
        self.seen: list[Seen] = []
        self._lock = threading.Lock()
        self._loopback = LoopbackServer(self._answer)
        self._loopback.__enter__()

    def _answer(self, request: Recorded) -> Reply:
        parts = urlsplit(request.path)
        seen = Seen(
            parts.path,
            parse_qs(parts.query),
            request.headers.get("authorization"),
            request.headers.get("private-token"),
        )
        with self._lock:
            self.seen.append(seen)
        answer = self.route(seen)
        return Reply(answer.status, answer.headers, answer.body)

    @property
    def url(self) -> str:
        return self._loopback.url

    def route(self, seen: Seen) -> Answer:
        raise NotImplementedError

    def close(self) -> None:
        self._loopback.__exit__(None, None, None)


class Storage(_Server):
    """Short-lived blob storage on its own port: the origin GitHub redirects log downloads to."""

    def __init__(self) -> None:
        self.blobs: dict[str, bytes] = {}
        super().__init__()

    @override
    def route(self, seen: Seen) -> Answer:
        blob = self.blobs.get(seen.path)
        if blob is None:
            return Answer(404)
        return Answer(200, blob, {"Content-Type": "application/zip"})


def _run(run_id: int, created_at: str, sha: str) -> dict[str, object]:
    return {
        "id": run_id,
        "name": "release",
        "head_branch": "main",
        "head_sha": sha,
        "path": ".github/workflows/release.yml",
        "status": "completed",
        "conclusion": "success",
        "created_at": created_at,
        "run_started_at": created_at,
        "html_url": f"https://github.com/org/app/actions/runs/{run_id}",
    }


class FakeGitHub(_Server):
    """`/repos/org/app/actions/...`: runs served `per_page` at a time, logs per run (zip, 410, 404, redirect)."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self.runs: list[dict[str, object]] = []
        self.logs: dict[int, Answer] = {}
        self.pauses: list[Answer] = []  # answered (in order) before the next request is served normally
        self.max_per_page = 2  # GitHub caps per_page (at 100); a small cap makes pagination visible in tests
        super().__init__()

    def add_run(self, run_id: int, created_at: str, sha: str, archive: bytes | None, *, status: int = 200) -> None:
        """A successful run; its logs are `archive` behind a redirect to storage, or `status` (410/404)."""
        self.runs.insert(0, _run(run_id, created_at, sha))  # the API lists newest first
        if archive is None:
            self.logs[run_id] = Answer(status, b'{"message": "Not Found"}')
            return
        blob_path = f"/blobs/{run_id}.zip"
        self.storage.blobs[blob_path] = archive
        self.logs[run_id] = Answer(302, headers={"Location": f"{self.storage.url}{blob_path}?sig=abc&se=2099"})

    @override
    def route(self, seen: Seen) -> Answer:
        if self.pauses:
            return self.pauses.pop(0)
        parts = seen.path.strip("/").split("/")
        if parts[:4] != ["repos", "org", "app", "actions"]:
            return Answer(404, b'{"message": "Not Found"}')
        rest = parts[4:]
        if rest == ["runs"] or (len(rest) == 3 and rest[0] == "workflows" and rest[2] == "runs"):
            return self._page(seen)
        if len(rest) == 3 and rest[0] == "runs" and rest[2] == "logs" and rest[1].isdigit():
            return self.logs.get(int(rest[1]), Answer(404))
        return Answer(404, b'{"message": "Not Found"}')

    def _page(self, seen: Seen) -> Answer:
        per_page = min(self.max_per_page, int(seen.query.get("per_page", ["30"])[0]))
        page = int(seen.query.get("page", ["1"])[0])
        chunk = self.runs[(page - 1) * per_page : page * per_page]
        headers = {"Content-Type": "application/json"}
        if page * per_page < len(self.runs):
            headers["Link"] = f'<{self.url}/repositories/1/actions/runs?page={page + 1}>; rel="next"'
        body = json.dumps({"total_count": len(self.runs), "workflow_runs": chunk}).encode()
        return Answer(200, body, headers)

    def pause_by_reset(self) -> None:
        """The primary rate limit: 403 with x-ratelimit-remaining 0 and the reset one second ahead."""
        reset = str(int(time.time()) + 1)
        self.pauses.append(
            Answer(
                403,
                b'{"message": "API rate limit exceeded"}',
                {"x-ratelimit-remaining": "0", "x-ratelimit-reset": reset},
            )
        )

    def pause_by_retry_after(self) -> None:
        """A secondary rate limit: 429 with retry-after."""
        self.pauses.append(Answer(429, b'{"message": "secondary rate limit"}', {"retry-after": "1"}))


class FakeGitLab(_Server):
    """`/api/v4/projects/group%2Fapp/jobs`: jobs served `per_page` at a time with x-next-page; traces as text."""

    def __init__(self) -> None:
        self.jobs: list[dict[str, object]] = []
        self.traces: dict[int, Answer] = {}
        self.max_per_page = 2
        super().__init__()

    def add_job(self, job_id: int, name: str, created_at: str, sha: str, trace: str | None) -> None:
        self.jobs.insert(
            0,
            {
                "id": job_id,
                "name": name,
                "status": "success",
                "stage": "release",
                "ref": "main",
                "created_at": created_at,
                "started_at": created_at,
                "commit": {"id": sha},
                "web_url": f"https://gitlab.example.com/group/app/-/jobs/{job_id}",
            },
        )
        self.traces[job_id] = (
            Answer(404) if trace is None else Answer(200, trace.encode(), {"Content-Type": "text/plain"})
        )

    @override
    def route(self, seen: Seen) -> Answer:
        prefix = "/api/v4/projects/group%2Fapp/jobs"
        if seen.path == prefix:
            per_page = min(self.max_per_page, int(seen.query.get("per_page", ["20"])[0]))
            page = int(seen.query.get("page", ["1"])[0])
            chunk = self.jobs[(page - 1) * per_page : page * per_page]
            headers = {"Content-Type": "application/json"}
            if page * per_page < len(self.jobs):
                headers["x-next-page"] = str(page + 1)
            return Answer(200, json.dumps(chunk).encode(), headers)
        rest = seen.path.removeprefix(prefix + "/").split("/")
        if len(rest) == 2 and rest[0].isdigit() and rest[1] == "trace":
            return self.traces.get(int(rest[0]), Answer(404))
        return Answer(404, b'{"message": "404 Not Found"}')


@dataclass(frozen=True)
class CiServers:
    github: FakeGitHub
    gitlab: FakeGitLab
    storage: Storage


@pytest.fixture
def ci_servers() -> Iterator[CiServers]:
    """A fake GitHub API, its blob storage (another port: another origin) and a fake GitLab API."""
    storage = Storage()
    github = FakeGitHub(storage)
    gitlab = FakeGitLab()
    try:
        yield CiServers(github, gitlab, storage)
    finally:
        for server in (github, gitlab, storage):
            server.close()
