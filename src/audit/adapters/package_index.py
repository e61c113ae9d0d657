"""The package-index adapter (ports.PackageIndex): simple-API pages and streamed file hashes, beside the registry.

The JSON simple API (PEP 691) is asked for first by content negotiation; an index that answers HTML (PEP 503) is
parsed with the stdlib `html.parser`. Everything an index says is untrusted: pages and files are size-capped and
streamed, a page lists at most `max_files` files (more makes it `truncated`), filenames must fit the wheel or
sdist grammar before they become keys, URLs must be http(s) (plain http only for hosts listed as insecure), and
credentials go only to the index's own origin, never to a redirect or a file host elsewhere. A page that is
not a simple index (a login form, an unknown media type, a redirect elsewhere) raises PackageIndexError: the
caller makes its files unverifiable, never a match and never missing.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import netrc
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import TYPE_CHECKING, Final, Self
from urllib.parse import unquote, urljoin, urlsplit

import httpx

from audit.adapters.registry.credentials import Credential, CredentialProvider
from audit.adapters.registry.tls import build_ssl_context
from audit.config import DEFAULT_TIMEOUT, USER_AGENT
from audit.errors import CredentialsError, PackageIndexError, ProjectNotFoundError
from audit.models import Digest
from audit.packages import IndexFile, ProjectPage, index_host, is_insecure, parse_filename
from audit.untrusted import printable

#: A yank reason is kept as the index wrote it (escaped where it is shown), but bounded.
MAX_YANK_REASON = 200

if TYPE_CHECKING:
    from types import TracebackType

    from mypy_boto3_codeartifact import CodeArtifactClient

logger = logging.getLogger(__name__)

JSON_MEDIA_TYPE: Final = "application/vnd.pypi.simple.v1+json"
HTML_MEDIA_TYPE: Final = "application/vnd.pypi.simple.v1+html"
#: JSON first (PEP 691), then the versioned HTML, then legacy text/html (PEP 503 indexes like pypiserver).
ACCEPT: Final = f"{JSON_MEDIA_TYPE}, {HTML_MEDIA_TYPE};q=0.2, text/html;q=0.01"
MAX_PAGE_BYTES: Final = 32 * 1024 * 1024
MAX_FILES: Final = 20_000
MAX_FILE_BYTES: Final = 1024 * 1024 * 1024
MAX_REDIRECTS: Final = 5
_CHUNK: Final = 64 * 1024
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class IndexSettings:
    insecure_hosts: frozenset[str] = frozenset()
    ca_file: Path | None = None
    timeout: float = DEFAULT_TIMEOUT
    max_page_bytes: int = MAX_PAGE_BYTES
    max_files: int = MAX_FILES
    max_file_bytes: int = MAX_FILE_BYTES
    user_agent: str = USER_AGENT


class PackageIndexClient:
    """ports.PackageIndex over httpx; one per run (or per warm Lambda container)."""

    def __init__(
        self,
        settings: IndexSettings,
        credentials: CredentialProvider | None = None,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.settings = settings
        self._credentials = credentials
        self._http = httpx.AsyncClient(
            verify=build_ssl_context(settings.ca_file),
            timeout=settings.timeout,
            follow_redirects=False,
            transport=transport,
            headers={"User-Agent": settings.user_agent},
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    # ----------------------------------------------------------------------------------------------- pages

    async def project_page(self, index_url: str, project: str) -> ProjectPage:
        url = f"{index_url}/{project}/"
        what = f"the simple page of {project} at {index_url}"
        body, content_type, final_url = await self._get(url, index_url, what=what, accept=ACCEPT, page=True)
        media = content_type.split(";", 1)[0].strip().lower()
        if media == JSON_MEDIA_TYPE or (media == "application/json" and body.lstrip().startswith(b"{")):
            return parse_json_page(body, project=project, page_url=final_url, settings=self.settings, what=what)
        if media in (HTML_MEDIA_TYPE, "text/html"):
            return parse_html_page(body, project=project, page_url=final_url, settings=self.settings, what=what)
        raise PackageIndexError(f"{what} answered {printable(media or 'no content type', max_chars=80)}")

    # ----------------------------------------------------------------------------------------------- files

    async def file_digest(self, index_url: str, file: IndexFile) -> Digest:
        """sha256 of the file's bytes, streamed and size-capped; the index's hash is not consulted."""
        what = f"{file.filename} from {index_url}"
        digest = hashlib.sha256()
        size = 0
        async with self._stream(file.url, index_url, what=what, accept="*/*") as response:
            async for chunk in response.aiter_bytes(_CHUNK):
                size += len(chunk)
                if size > self.settings.max_file_bytes:
                    raise PackageIndexError(
                        f"{what} is larger than {self.settings.max_file_bytes} bytes: not hashed",
                        hint="confirm it by hand with pip download and sha256sum",
                    )
                digest.update(chunk)
        return Digest(algorithm="sha256", hex=digest.hexdigest())

    # ----------------------------------------------------------------------------------------------- HTTP

    async def _get(self, url: str, index_url: str, *, what: str, accept: str, page: bool) -> tuple[bytes, str, str]:
        async with self._stream(url, index_url, what=what, accept=accept, page=page) as response:
            chunks: list[bytes] = []
            size = 0
            async for chunk in response.aiter_bytes(_CHUNK):
                size += len(chunk)
                if size > self.settings.max_page_bytes:
                    raise PackageIndexError(f"{what} is larger than {self.settings.max_page_bytes} bytes")
                chunks.append(chunk)
            return b"".join(chunks), response.headers.get("content-type", ""), str(response.url)

    def _stream(self, url: str, index_url: str, *, what: str, accept: str, page: bool = False) -> _StreamContext:
        return _StreamContext(self, url, index_url, what=what, accept=accept, page=page)

    async def _authorization(self, url: str, index_url: str) -> str | None:
        """Credentials for the index's own origin only (scheme, host and port)."""
        if self._credentials is None or _origin(url) != _origin(index_url):
            return None
        credential = await self._credentials.get(index_host(index_url))
        return None if credential is None else basic_authorization(credential)

    def check_url(self, url: str, what: str) -> None:
        parts = urlsplit(url)
        if parts.scheme == "https" and parts.netloc:
            return
        if parts.scheme == "http" and parts.netloc and is_insecure(parts.netloc.lower(), self.settings.insecure_hosts):
            return
        raise PackageIndexError(
            f"{what}: refusing URL {printable(url, max_chars=200)} (only https, or http to hosts listed as insecure)"
        )


class _StreamContext:
    """GET with manual, bounded redirects; a status other than 200 becomes a PackageIndexError."""

    def __init__(self, client: PackageIndexClient, url: str, index_url: str, *, what: str, accept: str, page: bool):
        self._client = client
        self._url = url
        self._index_url = index_url
        self._what = what
        self._accept = accept
        self._page = page
        self._response: httpx.Response | None = None

    async def __aenter__(self) -> httpx.Response:
        client = self._client
        url = self._url
        for _ in range(MAX_REDIRECTS + 1):
            client.check_url(url, self._what)
            headers = {"Accept": self._accept}
            authorization = await client._authorization(url, self._index_url)
            if authorization is not None:
                headers["Authorization"] = authorization
            try:
                request = client._http.build_request("GET", url, headers=headers)
                response = await client._http.send(request, stream=True)
            except httpx.TimeoutException:
                raise PackageIndexError(f"{self._what}: timed out") from None
            except httpx.HTTPError as exc:
                raise PackageIndexError(
                    f"{self._what}: {type(exc).__name__}: {printable(str(exc), max_chars=200)}"
                ) from None
            if response.status_code in (301, 302, 303, 307, 308):
                await response.aclose()
                location = response.headers.get("location", "")
                target = urljoin(url, location)
                if self._page and (_origin(target) != _origin(url) or not urlsplit(target).path.endswith("/")):
                    raise PackageIndexError(
                        f"{self._what}: redirected to {printable(target, max_chars=200)} (a login page?)",
                        hint="check the index credentials (netrc or the credentials secret) and --index-url",
                    )
                url = target
                continue
            if response.status_code == 200:
                self._response = response
                return response
            await response.aclose()
            raise _status_error(response.status_code, self._what, page=self._page)
        raise PackageIndexError(f"{self._what}: more than {MAX_REDIRECTS} redirects")

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._response is not None:
            await self._response.aclose()
        # Reading the body can fail too (a cut connection, a stalled read): a finding, never the end of the run.
        if isinstance(exc, httpx.TimeoutException):
            raise PackageIndexError(f"{self._what}: timed out while reading") from None
        if isinstance(exc, httpx.HTTPError):
            reason = printable(str(exc), max_chars=200)
            raise PackageIndexError(f"{self._what}: {type(exc).__name__} while reading: {reason}") from None


def _status_error(status: int, what: str, *, page: bool) -> PackageIndexError:
    if status in (404, 410):
        if page:
            return ProjectNotFoundError(f"{what}: HTTP {status} (the index has no such project)")
        return ProjectNotFoundError(f"{what}: HTTP {status} (the file is gone)")
    if status in (401, 403):
        return PackageIndexError(
            f"{what}: HTTP {status} (access denied)",
            hint="give credentials for the index host in netrc (CLI) or the credentials secret (Lambda)",
        )
    return PackageIndexError(f"{what}: HTTP {status}")


def _origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.scheme, parts.netloc.lower()


def basic_authorization(credential: Credential) -> str:
    """Basic auth for an index: username/password, or a token as password (username `__token__` by default)."""
    header = credential.basic_authorization()
    if header is not None:
        return header
    raw = f"{credential.username or '__token__'}:{credential.identity_token}".encode()
    return "Basic " + base64.b64encode(raw).decode("ascii")


# --------------------------------------------------------------------------------------------------- parsing


def _file_url(href: str, page_url: str) -> str:
    return urljoin(page_url, href.split("#", 1)[0])


def _filename_of(url: str) -> str:
    return unquote(urlsplit(url).path.rsplit("/", 1)[-1])


def _digest(hex_text: object) -> Digest | None:
    if isinstance(hex_text, str) and _HEX64.match(hex_text):
        return Digest(algorithm="sha256", hex=hex_text)
    return None


def _build_page(
    project: str,
    entries: list[tuple[str, str, Digest | None, str | None, str | None, int | None]],
    *,
    truncated: bool,
    versions: tuple[str, ...] | None,
    api: str,
) -> ProjectPage:
    files: list[IndexFile] = []
    invalid: list[str] = []
    for filename, url, sha256, yanked, upload_time, size in entries:
        name = parse_filename(filename)
        if name is None:
            invalid.append(printable(filename, max_chars=120))
            continue
        files.append(IndexFile(name, url, sha256, yanked, upload_time, size))
    return ProjectPage(
        project=project, files=tuple(files), invalid=tuple(invalid), versions=versions, api=api, truncated=truncated
    )


def parse_json_page(
    body: bytes, *, project: str, page_url: str, settings: IndexSettings, what: str = "the page"
) -> ProjectPage:
    """PEP 691 (with PEP 592 `yanked` and PEP 700 `versions`, `size`, `upload-time`)."""
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
        raise PackageIndexError(f"{what} is not valid JSON") from None
    meta = data.get("meta") if isinstance(data, dict) else None
    api_version = meta.get("api-version") if isinstance(meta, dict) else None
    files = data.get("files") if isinstance(data, dict) else None
    if not isinstance(api_version, str) or not api_version.startswith("1.") or not isinstance(files, list):
        raise PackageIndexError(f"{what} is not a PEP 691 project page (meta.api-version 1.x and files[])")
    entries: list[tuple[str, str, Digest | None, str | None, str | None, int | None]] = []
    for raw in files[: settings.max_files]:
        if not isinstance(raw, dict) or not isinstance(raw.get("filename"), str) or not isinstance(raw.get("url"), str):
            entries.append(("<a file entry without filename or url>", "", None, None, None, None))
            continue
        hashes = raw.get("hashes")
        yanked_raw = raw.get("yanked", False)
        yanked = yanked_raw if isinstance(yanked_raw, str) else ("" if yanked_raw is True else None)
        upload_time = raw.get("upload-time")
        size = raw.get("size")
        url = _file_url(raw["url"], page_url)
        filename = raw["filename"] if raw["filename"] == _filename_of(url) else f"{raw['filename']} (url names another)"
        entries.append(
            (
                filename,
                url,
                _digest(hashes.get("sha256")) if isinstance(hashes, dict) else None,
                yanked[:MAX_YANK_REASON] if yanked is not None else None,
                printable(upload_time, max_chars=40) if isinstance(upload_time, str) else None,
                size if isinstance(size, int) and not isinstance(size, bool) else None,
            )
        )
    raw_versions = data.get("versions")
    versions = (
        tuple(printable(v, max_chars=64) for v in raw_versions[: settings.max_files] if isinstance(v, str))
        if isinstance(raw_versions, list)
        else None
    )
    return _build_page(project, entries, truncated=len(files) > settings.max_files, versions=versions, api="json")


class _SimpleHtmlParser(HTMLParser):
    """Collects `<a href>` anchors (bounded), the title, and whether the page asks for a password."""

    def __init__(self, max_anchors: int) -> None:
        super().__init__(convert_charrefs=True)
        self.max_anchors = max_anchors
        self.anchors: list[dict[str, str | None]] = []
        self.truncated = False
        self.password_field = False
        self.title = ""
        self._in_title = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            values = dict(attrs)
            if values.get("href") is None:
                return
            if len(self.anchors) >= self.max_anchors:
                self.truncated = True
                return
            self.anchors.append(values)
        elif tag == "input" and (dict(attrs).get("type") or "").lower() == "password":
            self.password_field = True
        elif tag == "title":
            self._in_title = True

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self._in_title = False

    def handle_data(self, data: str) -> None:
        if self._in_title and len(self.title) < 200:
            self.title += data


def parse_html_page(
    body: bytes, *, project: str, page_url: str, settings: IndexSettings, what: str = "the page"
) -> ProjectPage:
    """PEP 503 anchors with `#sha256=` fragments and PEP 592 `data-yanked`."""
    parser = _SimpleHtmlParser(settings.max_files)
    text = body.decode("utf-8", errors="replace")
    for start in range(0, len(text), _CHUNK):
        parser.feed(text[start : start + _CHUNK])
        if parser.truncated:
            break
    parser.close()
    if parser.password_field:
        raise PackageIndexError(
            f"{what} is an HTML page with a password field, not a simple index (a login page?)",
            hint="give credentials for the index host in netrc (CLI) or the credentials secret (Lambda)",
        )
    entries: list[tuple[str, str, Digest | None, str | None, str | None, int | None]] = []
    for anchor in parser.anchors:
        href = anchor.get("href") or ""
        url = _file_url(href, page_url)
        _, _, fragment = href.partition("#")
        algorithm, _, hex_text = fragment.partition("=")
        yanked: str | None = anchor.get("data-yanked") if "data-yanked" in anchor else None
        entries.append(
            (
                _filename_of(url),
                url,
                _digest(hex_text) if algorithm == "sha256" else None,
                (yanked or "")[:MAX_YANK_REASON] if "data-yanked" in anchor else None,
                None,
                None,
            )
        )
    page = _build_page(project, entries, truncated=parser.truncated, versions=None, api="html")
    if not page.files and "links for" not in parser.title.lower():
        raise PackageIndexError(
            f"{what} is an HTML page that lists no files and is not titled as a simple index (a login page?)"
        )
    return page


# --------------------------------------------------------------------------------------------------- credentials


class NetrcCredentials:
    """`~/.netrc` (or $NETRC) entries by host, as pip and twine read them; for the CLI."""

    def __init__(self, path: Path | None = None) -> None:
        self._path = path

    def __repr__(self) -> str:
        return "NetrcCredentials()"

    async def get(self, registry: str) -> Credential | None:
        host = registry.rsplit(":", 1)[0] if registry.count(":") == 1 else registry
        try:
            entries = netrc.netrc(str(self._path) if self._path is not None else None)
        except FileNotFoundError:
            return None
        except (netrc.NetrcParseError, OSError) as exc:
            raise CredentialsError(f"cannot read netrc: {type(exc).__name__}", hint="check ~/.netrc") from None
        found = entries.authenticators(registry) or entries.authenticators(host)
        if found is None:
            return None
        login, _, password = found
        return Credential.basic(login or "__token__", password or "")


_CODEARTIFACT_HOST = re.compile(
    r"^(?P<domain>[a-z][a-z0-9-]{0,48}[a-z0-9])-(?P<owner>[0-9]{12})\.d\.codeartifact\.(?P<region>[a-z0-9-]+)\.amazonaws\.com$"
)


def codeartifact_domain(host: str) -> tuple[str, str, str] | None:
    """(domain, owner account, region) of a CodeArtifact repository endpoint host, else None."""
    match = _CODEARTIFACT_HOST.match(host.lower())
    return (match["domain"], match["owner"], match["region"]) if match else None


class CodeArtifactCredentials:
    """`codeartifact:GetAuthorizationToken` for CodeArtifact hosts, cached until shortly before expiry.

    The token is a deliberate warm cache of the Lambda container (like ECR tokens); it is never logged.
    """

    def __init__(
        self,
        client_for: Callable[[str], CodeArtifactClient] | None = None,
        *,
        clock: Callable[[], float] = time.time,
        duration_seconds: int = 900,
    ) -> None:
        self._client_for = client_for or _codeartifact_client
        self._clock = clock
        self._duration = duration_seconds
        self._cache: dict[str, tuple[Credential, float]] = {}
        self._lock = asyncio.Lock()

    def __repr__(self) -> str:
        return "CodeArtifactCredentials()"

    async def get(self, registry: str) -> Credential | None:
        found = codeartifact_domain(registry.rsplit(":", 1)[0])
        if found is None:
            return None
        domain, owner, region = found
        async with self._lock:
            cached = self._cache.get(registry)
            if cached is not None and cached[1] - 60 > self._clock():
                return cached[0]
            try:
                reply = await asyncio.to_thread(
                    self._client_for(region).get_authorization_token,
                    domain=domain,
                    domainOwner=owner,
                    durationSeconds=self._duration,
                )
            except Exception as exc:  # botocore's many error types; the message never holds the token
                raise CredentialsError(
                    f"cannot get a CodeArtifact token for domain {domain}: {type(exc).__name__}",
                    hint="the role needs codeartifact:GetAuthorizationToken and sts:GetServiceBearerToken",
                ) from None
            credential = Credential.basic("aws", reply["authorizationToken"])
            expires = reply.get("expiration")
            until = expires.timestamp() if expires is not None else self._clock() + self._duration
            self._cache[registry] = (credential, until)
            return credential


def _codeartifact_client(region: str) -> CodeArtifactClient:
    import boto3  # noqa: PLC0415 - deferred: boto3 costs start-up time and only CodeArtifact needs it here

    return boto3.client("codeartifact", region_name=region)
