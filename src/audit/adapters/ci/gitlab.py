"""GitLab CI as a source of back-filled trust: successful jobs of a project and their traces (REST API v4).

`GET /projects/:id/jobs?scope[]=success` pages through jobs (newest first, `x-next-page`); `GET
/projects/:id/jobs/:job_id/trace` is the plain-text log, 404 once erased or expired.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from audit.adapters.ci.http import COMMIT_RE, CiApiError, CiHttp, api_id, api_moment, download_problem, web_url
from audit.errors import UsageError
from audit.models import LogStatus
from audit.records import CiRun, JobLog, RunLogs
from audit.untrusted import printable

DEFAULT_API_URL = "https://gitlab.com/api/v4"
PER_PAGE = 100
DEFAULT_MAX_JOBS = 1_000
DEFAULT_MAX_TRACE_BYTES = 32 * 1024 * 1024

_PROJECT = re.compile(r"^(?:\d{1,20}|[A-Za-z0-9_.][A-Za-z0-9_.-]{0,254}(?:/[A-Za-z0-9_.][A-Za-z0-9_.-]{0,254}){1,20})$")


def check_project(text: str) -> str:
    if not _PROJECT.match(text) or ".." in text.split("/"):
        raise UsageError(
            f"--gitlab {printable(text)!r} is not a project path or id",
            hint="e.g. --gitlab group/subgroup/project or --gitlab 12345",
        )
    return text


class GitLabJobs:
    """ports.CiLogSource for one project's successful jobs."""

    def __init__(
        self,
        http: CiHttp,
        project: str,
        *,
        max_jobs: int = DEFAULT_MAX_JOBS,
        max_trace_bytes: int = DEFAULT_MAX_TRACE_BYTES,
        notify: Callable[[str], None] | None = None,
    ) -> None:
        self.http = http
        self.project = check_project(project)
        self.max_jobs = max_jobs
        self.max_trace_bytes = max_trace_bytes
        self._names: dict[str, str] = {}
        self._notify = notify or (lambda _message: None)

    @property
    def _base(self) -> str:
        return f"/projects/{quote(self.project, safe='')}/jobs"

    def runs(self) -> list[CiRun]:
        runs: list[CiRun] = []
        page = 1
        while len(runs) < self.max_jobs:
            document, headers = self.http.get_json(
                self._base, {"scope[]": "success", "per_page": PER_PAGE, "page": page}
            )
            if not isinstance(document, list):
                raise CiApiError(f"GET {self._base}: the answer is not a list of jobs")
            runs.extend(run for run in (self._run(item) for item in document) if run is not None)
            self._notify(f"listed {len(runs)} successful jobs")
            next_page = headers.get("x-next-page", "")
            if not document or not next_page.isdigit() or int(next_page) <= page:
                break
            page = int(next_page)
        runs = runs[: self.max_jobs]
        runs.sort(key=lambda run: (run.started_at or datetime.min.replace(tzinfo=UTC), int(run.handle)))
        return runs

    def _run(self, item: Any) -> CiRun | None:
        if not isinstance(item, dict) or item.get("status") != "success":
            return None
        job_id = api_id(item.get("id"))
        if job_id is None:
            return None
        name = item.get("name")
        self._names[str(job_id)] = printable(name, max_chars=200) if isinstance(name, str) else f"job {job_id}"
        commit_info = item.get("commit")
        commit = commit_info.get("id") if isinstance(commit_info, dict) else None
        fallback = f"{self.http.api_url.removesuffix('/api/v4')}/{self.project}/-/jobs/{job_id}"
        return CiRun(
            source=web_url(item.get("web_url"), fallback),
            commit=commit if isinstance(commit, str) and COMMIT_RE.match(commit) else None,
            started_at=api_moment(item.get("started_at")) or api_moment(item.get("created_at")),
            handle=str(job_id),
        )

    def logs(self, run: CiRun) -> RunLogs:
        try:
            download = self.http.download(f"{self._base}/{run.handle}/trace", max_bytes=self.max_trace_bytes)
        except CiApiError as exc:
            return RunLogs(status=LogStatus.UNREADABLE, reason=exc.message)
        problem = download_problem(download, what="trace", gone="trace gone (HTTP {status}): erased or expired")
        if problem is not None:
            return problem
        text = download.body.decode("utf-8", errors="replace")
        name = self._names.get(run.handle, f"job {run.handle}")
        return RunLogs(status=LogStatus.READ, jobs=(JobLog(job=name, steps=((None, text),)),))
