"""HTTP for CI APIs (GitHub, GitLab): TLS verified, rate limits honoured with a bounded wait, bounded downloads.

The API token goes to the API's origin only. A redirect (GitHub answers a log download with a 302 to short-lived
storage) is followed without it, and only to https (or http on loopback, for tests and local mirrors).
"""

from __future__ import annotations

import ipaddress
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx

from audit.adapters.registry.retry import parse_retry_after
from audit.adapters.registry.tls import build_ssl_context
from audit.errors import ConfigError, RegistryError
from audit.models import LogStatus
from audit.records import RunLogs
from audit.untrusted import has_unsafe_characters, printable

MAX_JSON_BYTES = 16 * 1024 * 1024
MAX_REDIRECTS = 3
MAX_RATE_LIMIT_RETRIES = 5
COMMIT_RE = re.compile(r"^(?:[0-9a-f]{40}|[0-9a-f]{64})$")


class CiApiError(RegistryError):
    """A CI API answered in a way that stops the back-fill (the run list could not be read)."""

    default_hint = "check the repository or project name, the token (GITHUB_TOKEN / GITLAB_TOKEN) and --api-url"


@dataclass(frozen=True)
class Download:
    """A bounded download: the body, or the HTTP status that prevented it, or why it was refused."""

    status: int
    body: bytes = b""
    refused: str | None = None


def api_id(value: Any) -> int | None:
    """A run or job id as the API gives it: a positive integer of at most 19 digits; anything else is no id."""
    if not isinstance(value, int) or isinstance(value, bool) or not 0 < value < 10**19:
        return None
    return value


def download_problem(download: Download, *, what: str, gone: str) -> RunLogs | None:
    """The outcome of a log download that brought no log (refused, gone, another status); None when it did.

    `gone` says what a 404/410 means for this CI, e.g. "logs gone (HTTP {status}): past the log retention".
    """
    if download.refused is not None:
        return RunLogs(status=LogStatus.UNREADABLE, reason=download.refused)
    if download.status in (404, 410):
        return RunLogs(status=LogStatus.EXPIRED, reason=gone.format(status=download.status))
    if download.status != 200:
        return RunLogs(status=LogStatus.UNREADABLE, reason=f"{what} download answered HTTP {download.status}")
    return None


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_url(url: str, *, what: str) -> str:
    """https, or plain http to a loopback address only; no credentials or fragments in the URL."""
    parts = urlsplit(url)
    shown = printable(parts._replace(query="", fragment="").geturl())  # a signed storage URL's query is a secret
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ConfigError(f"{what} {shown!r} is not an http(s) URL", hint="e.g. https://api.github.com")
    if parts.scheme == "http" and not is_loopback(parts.hostname):
        raise ConfigError(
            f"{what} {shown!r} uses plain http",
            hint="use https; plain http is accepted for loopback addresses (127.0.0.1, ::1, localhost) only",
        )
    if parts.username or parts.password:
        raise ConfigError(f"{what} must not carry credentials", hint="pass the token in the environment")
    return url.rstrip("/")


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    return (parts.scheme, (parts.hostname or "").lower(), parts.port)


def api_moment(value: Any) -> datetime | None:
    """An ISO 8601 time from an API answer, or None when it is not one."""
    if not isinstance(value, str) or len(value) > 40:
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def web_url(value: Any, fallback: str) -> str:
    """A web URL from an API answer when it passes `check_url`, else the one built from validated parts."""
    if isinstance(value, str) and len(value) <= 2048 and not has_unsafe_characters(value):
        try:
            return check_url(value, what="run URL")
        except ConfigError:
            pass
    return fallback


class CiHttp:
    """One API origin with its token; GETs with rate-limit waits, JSON pages and capped downloads."""

    def __init__(
        self,
        api_url: str,
        *,
        token_headers: Mapping[str, str],
        timeout: float = 30.0,
        max_wait: float = 900.0,
        sleep: Callable[[float], None] = time.sleep,
        notify: Callable[[str], None] | None = None,
        client: httpx.Client | None = None,
    ) -> None:
        self.api_url = check_url(api_url, what="--api-url")
        self._token_headers = dict(token_headers)
        self._max_wait = max_wait
        self._sleep = sleep
        self._notify = notify or (lambda _message: None)
        self._client = client or httpx.Client(
            timeout=timeout, follow_redirects=False, verify=build_ssl_context(), trust_env=False
        )
        self.waited = 0.0  # seconds spent waiting for rate limits, for the summary

    def close(self) -> None:
        self._client.close()

    def _headers_for(self, url: str) -> dict[str, str]:
        headers = {"User-Agent": "digest-audit"}
        if _origin(url) == _origin(self.api_url):
            headers.update(self._token_headers)
        return headers

    def _wait_for(self, response: httpx.Response) -> float | None:
        """Seconds to wait before trying again when the answer is a rate limit; None when it is not one."""
        if response.status_code not in (403, 429):
            return None
        retry_after = parse_retry_after(response.headers.get("retry-after"), wall_now=time.time())
        if retry_after is not None:
            return retry_after
        if response.headers.get("x-ratelimit-remaining") == "0":
            reset = response.headers.get("x-ratelimit-reset", "")
            if reset.isdigit():
                return max(0.0, int(reset) - time.time()) + 1.0
            return 60.0
        return None if response.status_code == 403 else 60.0

    def _send(self, url: str, *, params: Mapping[str, Any] | None = None, stream: bool = False) -> httpx.Response:
        for _attempt in range(MAX_RATE_LIMIT_RETRIES + 1):
            request = self._client.build_request("GET", url, params=params, headers=self._headers_for(url))
            try:
                response = self._client.send(request, stream=stream)
            except httpx.HTTPError as exc:
                raise CiApiError(f"cannot reach {printable(url)}: {type(exc).__name__}") from None
            wait = self._wait_for(response)
            if wait is None:
                return response
            response.close()
            if self.waited + wait > self._max_wait:
                raise CiApiError(
                    f"rate limited by {urlsplit(url).hostname} for {wait:.0f} s more; "
                    f"the back-fill waited {self.waited:.0f} s already",
                    hint="re-run later, set a token with a higher limit, or raise --max-wait",
                )
            self._notify(f"rate limited by {urlsplit(url).hostname}: waiting {wait:.0f} s")
            self.waited += wait
            self._sleep(wait)
        raise CiApiError(f"still rate limited by {urlsplit(url).hostname} after {MAX_RATE_LIMIT_RETRIES} waits")

    def get_json(self, path: str, params: Mapping[str, Any] | None = None) -> tuple[Any, httpx.Headers]:
        url = f"{self.api_url}{path}"
        response = self._send(url, params=params)
        if response.status_code != 200:
            raise CiApiError(f"GET {printable(url)} answered HTTP {response.status_code}")
        if len(response.content) > MAX_JSON_BYTES:
            raise CiApiError(f"GET {printable(url)}: the answer is larger than {MAX_JSON_BYTES} bytes")
        try:
            return response.json(), response.headers
        except ValueError:
            raise CiApiError(f"GET {printable(url)} did not answer JSON") from None

    def download(self, path: str, *, max_bytes: int) -> Download:
        """GET a (redirected) file, streamed and cut off at `max_bytes`; the token never leaves the API origin."""
        url = f"{self.api_url}{path}"
        for _hop in range(MAX_REDIRECTS + 1):
            response = self._send(url, stream=True)
            try:
                if response.status_code in (301, 302, 303, 307, 308):
                    location = response.headers.get("location", "")
                    try:
                        url = check_url(urljoin(url, location), what="redirect target")
                    except ConfigError as exc:
                        return Download(response.status_code, refused=exc.message)
                    continue
                if response.status_code != 200:
                    return Download(response.status_code)
                declared = response.headers.get("content-length", "")
                if declared.isdigit() and int(declared) > max_bytes:
                    return Download(200, refused=f"the log archive is {int(declared)} bytes (limit {max_bytes})")
                chunks: list[bytes] = []
                size = 0
                for chunk in response.iter_bytes():
                    size += len(chunk)
                    if size > max_bytes:
                        return Download(200, refused=f"the log archive is larger than {max_bytes} bytes")
                    chunks.append(chunk)
                return Download(200, b"".join(chunks))
            except httpx.HTTPError as exc:
                return Download(0, refused=f"download failed: {type(exc).__name__}")
            finally:
                response.close()
        return Download(0, refused=f"more than {MAX_REDIRECTS} redirects")
