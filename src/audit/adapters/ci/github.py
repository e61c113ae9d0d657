"""GitHub Actions as a source of back-filled trust: successful workflow runs and their log archives (REST API).

`GET /repos/{owner}/{repo}/actions/runs` (or `.../workflows/{id}/runs`) pages through runs, newest first;
`GET .../runs/{id}/logs` answers a redirect to a short-lived zip, or 410/404 once the logs are past retention.
Everything the API says is untrusted: ids, URLs and commits are validated before use.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from audit.adapters.ci.archive import ArchiveRefused, job_logs_from_zip
from audit.adapters.ci.http import COMMIT_RE, CiApiError, CiHttp, api_id, api_moment, download_problem, web_url
from audit.errors import UsageError
from audit.models import LogStatus
from audit.records import CiRun, RunLogs
from audit.untrusted import has_unsafe_characters, printable

DEFAULT_API_URL = "https://api.github.com"
PER_PAGE = 100
DEFAULT_MAX_RUNS = 1_000
DEFAULT_MAX_ARCHIVE_BYTES = 64 * 1024 * 1024

_OWNER = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,38})$")
_REPO = re.compile(r"^[A-Za-z0-9._-]{1,100}$")
_WORKFLOW = re.compile(r"^(?:\d{1,20}|[A-Za-z0-9._-]{1,200}\.ya?ml)$")
_NEXT = re.compile(r'<[^>]*>;\s*rel="next"')


def parse_repository(text: str) -> tuple[str, str]:
    owner, sep, repo = text.partition("/")
    if not sep or not _OWNER.match(owner) or not _REPO.match(repo) or repo in (".", ".."):
        raise UsageError(
            f"--github {printable(text)!r} is not OWNER/REPO",
            hint="e.g. --github openzaak/open-zaak (letters, digits, '-', '.', '_')",
        )
    return owner, repo


def check_workflow(text: str) -> str:
    if not _WORKFLOW.match(text):
        raise UsageError(
            f"--workflow {printable(text)!r} is neither a workflow id nor a file name",
            hint="give the file name under .github/workflows (release.yml) or the numeric id",
        )
    return text


def check_branch(text: str) -> str:
    if not text or len(text) > 255 or has_unsafe_characters(text) or any(ch.isspace() for ch in text):
        raise UsageError(f"--branch {printable(text)!r} is not a branch name", hint="e.g. --branch main")
    return text


class GitHubActions:
    """ports.CiLogSource for one repository's successful workflow runs."""

    def __init__(
        self,
        http: CiHttp,
        repository: str,
        *,
        web_url: str | None = None,
        workflow: str | None = None,
        branch: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        max_runs: int = DEFAULT_MAX_RUNS,
        max_archive_bytes: int = DEFAULT_MAX_ARCHIVE_BYTES,
        notify: Callable[[str], None] | None = None,
    ) -> None:
        self.owner, self.repo = parse_repository(repository)
        self.http = http
        self.workflow = check_workflow(workflow) if workflow else None
        self.branch = check_branch(branch) if branch else None
        self.since, self.until = since, until
        self.max_runs = max_runs
        self.max_archive_bytes = max_archive_bytes
        self.web_url = web_url or "https://github.com"
        self._notify = notify or (lambda _message: None)

    @property
    def _base(self) -> str:
        return f"/repos/{quote(self.owner, safe='')}/{quote(self.repo, safe='')}/actions"

    def _created(self) -> str | None:
        if self.since is None and self.until is None:
            return None
        start = self.since.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if self.since else "*"
        end = self.until.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if self.until else "*"
        return f"{start}..{end}"

    def runs(self) -> list[CiRun]:
        path = f"{self._base}/workflows/{quote(self.workflow, safe='')}/runs" if self.workflow else f"{self._base}/runs"
        params: dict[str, str | int] = {"status": "success", "per_page": PER_PAGE}
        if self.branch:
            params["branch"] = self.branch
        if created := self._created():
            params["created"] = created
        runs: list[CiRun] = []
        seen: set[int] = set()
        page = 1
        while len(runs) < self.max_runs:
            document, headers = self.http.get_json(path, {**params, "page": page})
            items = document.get("workflow_runs") if isinstance(document, dict) else None
            if not isinstance(items, list):
                raise CiApiError(f"GET {path}: the answer has no workflow_runs list")
            for item in items:
                run = self._run(item)
                if run is not None and int(run.handle) not in seen:
                    seen.add(int(run.handle))
                    runs.append(run)
            self._notify(f"listed {len(runs)} successful runs")
            # Only the presence of a next page is taken from Link; the URL is ours, not the server's.
            if not items or not _NEXT.search(headers.get("link", "")):
                break
            page += 1
        runs = runs[: self.max_runs]
        runs.sort(key=lambda run: (run.started_at or datetime.min.replace(tzinfo=UTC), int(run.handle)))
        return runs

    def _run(self, item: Any) -> CiRun | None:
        if not isinstance(item, dict):
            return None
        run_id = api_id(item.get("id"))
        if run_id is None:
            return None
        if item.get("conclusion") != "success":
            return None  # the query asks for successful runs; an answer that says otherwise is not trusted
        fallback = f"{self.web_url}/{self.owner}/{self.repo}/actions/runs/{run_id}"
        commit = item.get("head_sha")
        return CiRun(
            source=web_url(item.get("html_url"), fallback),
            commit=commit if isinstance(commit, str) and COMMIT_RE.match(commit) else None,
            started_at=api_moment(item.get("run_started_at")) or api_moment(item.get("created_at")),
            handle=str(run_id),
        )

    def logs(self, run: CiRun) -> RunLogs:
        try:
            download = self.http.download(f"{self._base}/runs/{run.handle}/logs", max_bytes=self.max_archive_bytes)
        except CiApiError as exc:
            return RunLogs(status=LogStatus.UNREADABLE, reason=exc.message)
        problem = download_problem(
            download, what="log", gone="logs gone (HTTP {status}): past the repository's log retention"
        )
        if problem is not None:
            return problem
        try:
            jobs = job_logs_from_zip(download.body)
        except ArchiveRefused as exc:
            return RunLogs(status=LogStatus.UNREADABLE, reason=f"log archive refused: {exc}")
        return RunLogs(status=LogStatus.READ, jobs=tuple(jobs))
