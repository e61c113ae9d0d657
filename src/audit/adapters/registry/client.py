"""What a registry serves for a tag or digest, established with as few requests as the evidence allows.

A routine check is one HEAD: the `Docker-Content-Digest` header names the manifest. The body is fetched and
hashed only when the header is missing, disagrees with what was expected, or platform children are wanted;
every digest header seen must then match the bytes. Registry trouble never raises from `observe`: it becomes
an UNVERIFIABLE observation with a short reason, so a flaky registry cannot pass for a match or a drift.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Final, Self

import httpx

from audit.adapters.registry.auth import PENDING, Authenticator, TokenReply
from audit.adapters.registry.credentials import CredentialProvider
from audit.adapters.registry.failures import RegistryFailure, RegistryRequestError
from audit.adapters.registry.manifest import (
    MAX_MANIFEST_BYTES,
    Manifest,
    check_media_type,
    error_codes,
    media_type_of,
    next_link,
    parse_digest_header,
    parse_manifest,
    parse_rate_limit_remaining,
)
from audit.adapters.registry.retry import (
    RETRYABLE_STATUS,
    Backoff,
    PauseBoard,
    classify_transport_error,
    parse_retry_after,
)
from audit.adapters.registry.tls import build_ssl_context
from audit.config import DEFAULT_MAX_TAGS_PER_REPOSITORY
from audit.errors import ConfigError, CredentialsError, InvalidDigestError, InvalidReferenceError
from audit.models import (
    MANIFEST_ACCEPT,
    Digest,
    ImageRef,
    LiveStatus,
    MediaType,
    Observation,
    RejectedTag,
    TagListing,
)
from audit.reference import (
    is_valid_repository,
    is_valid_tag,
    normalise_registry,
    parse_digest,
    parse_reference,
    rejected_tag_key,
)

logger = logging.getLogger(__name__)

DEFAULT_PORTS: Final = {"http": 80, "https": 443}
REDIRECT_STATUS: Final = frozenset({301, 302, 303, 307, 308})
MAX_REDIRECTS: Final = 5
MAX_ERROR_BODY: Final = 64 * 1024
MAX_TOKEN_BODY: Final = 1024 * 1024
#: n=1000 names of at most 128 characters are ~135 KB; 4 MiB leaves room for registries that ignore `n`, while
#: one parsed page stays far below the Lambda's memory.
MAX_TAG_PAGE_BYTES: Final = 4 * 1024 * 1024
TAGS_PAGE_SIZE: Final = 1000
MAX_TAG_PAGES: Final = 10_000
DEFAULT_MAX_TAGS: Final = DEFAULT_MAX_TAGS_PER_REPOSITORY
MAX_REJECTED_KEPT: Final = 100  # rejected names kept per repository for reporting; the rest are only counted
MAX_REJECTED_SHOWN: Final = 160  # characters of a rejected name kept for reports and alerts (escaped there)
TAGS_ACCEPT: Final = "application/json"

type Origin = tuple[str, str, int]


@dataclass(frozen=True)
class RegistrySettings:
    """How to talk to registries; one instance per run."""

    insecure_registries: frozenset[str] = frozenset()  # "host" (all ports) or "host:port": plain HTTP
    ca_file: Path | None = None  # added to the system trust store (and certifi), not replacing it
    timeout: float = 10.0  # per request, connect to last byte
    concurrency: int = 16  # requests in flight per registry host
    max_attempts: int = 3
    max_retry_after: float = 60.0
    user_agent: str = "digest-audit/0.1"
    total_concurrency: int = 64  # requests in flight over all hosts
    backoff_base: float = 0.2  # first retry waits about this long (jittered), doubling each attempt

    def __post_init__(self) -> None:
        if self.timeout <= 0:
            raise ConfigError(f"the registry timeout must be positive, not {self.timeout}")
        if self.concurrency < 1 or self.total_concurrency < 1:
            raise ConfigError("registry concurrency must be at least 1")
        if self.max_attempts < 1:
            raise ConfigError("max_attempts must be at least 1")
        object.__setattr__(
            self,
            "insecure_registries",
            frozenset(entry.strip().lower() for entry in self.insecure_registries),
        )

    def allows_plain_http(self, host: str, port: int | None) -> bool:
        """Whether plain HTTP may be used to host:port (port None: the default HTTP port)."""
        name = host.lower()
        if ":" in name and not name.startswith("["):
            name = f"[{name}]"  # httpx gives IPv6 hosts without brackets
        listed = self.insecure_registries
        return name in listed or f"{name}:{port if port is not None else DEFAULT_PORTS['http']}" in listed


@dataclass
class RequestStats:
    """Requests sent by one client (every attempt counts); the benchmark reads these."""

    heads: int = 0
    gets: int = 0
    token_requests: int = 0
    retries: int = 0
    challenges: int = 0  # 401 answers that started an auth round
    redirects: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass(slots=True)
class _Pool:
    """One origin: single-connection keep-alive clients, and the slots that bound requests in flight to it.

    httpcore's pool polls every pooled connection on each request and each release, so one pool of N
    connections gets slower as N grows (docs/benchmarks.md: 1,059 tags/s at 16 connections, 573 at 64 on
    loopback). N clients of one connection each do not scan anything: 1,400 tags/s at 16 and at 64.
    A client is taken only while holding a slot, so there are never more clients than slots.
    """

    factory: Callable[[], httpx.AsyncClient]
    slots: asyncio.Semaphore
    host: str  # the pause-board key
    idle: list[httpx.AsyncClient] = field(default_factory=list)
    clients: list[httpx.AsyncClient] = field(default_factory=list)

    def take(self) -> httpx.AsyncClient:
        if self.idle:
            return self.idle.pop()
        client = self.factory()
        self.clients.append(client)
        return client


@dataclass(slots=True)
class _Endpoint:
    registry: str
    base: str
    origin: Origin
    pool: _Pool
    contacted: bool = False  # a first request has answered how this registry authenticates
    probe: asyncio.Future[None] | None = None  # that first request, while it is under way


@dataclass(slots=True)
class _Reply:
    status: int
    headers: httpx.Headers
    body: bytes
    truncated: bool  # the body was longer than the cap and was not read to the end
    url: httpx.URL


@dataclass(slots=True)
class _Check:
    """Evidence gathered while checking one reference."""

    header_digests: list[Digest] = field(default_factory=list)
    rate_limit_remaining: int | None = None


def _origin(url: httpx.URL) -> Origin:
    return (url.scheme, url.host, url.port or DEFAULT_PORTS.get(url.scheme, 0))


def _pull_scope(repository: str) -> str:
    return f"repository:{repository}:pull"


def _manifest_url(endpoint: _Endpoint, repository: str, reference: str) -> str:
    """`<base>/v2/<repository>/manifests/<tag or digest>`, only for names inside the grammar.

    A name from a registry or a table could hold `..`, `/`, `?`, `#` or controls; such a name never becomes a
    URL, so every request stays under `/v2/<repository>/`.
    """
    if not is_valid_repository(repository):
        raise RegistryFailure("invalid repository name (outside the distribution grammar)")
    if not is_valid_tag(reference):
        try:
            parse_digest(reference)
        except InvalidDigestError:
            raise RegistryFailure("invalid tag name (outside the distribution grammar)") from None
    return f"{endpoint.base}/v2/{repository}/manifests/{reference}"


def _missing_reason(body: bytes, *, by_digest: bool) -> str:
    codes = error_codes(body)
    if "NAME_UNKNOWN" in codes:
        return "repository not found"
    if "MANIFEST_UNKNOWN" in codes:
        return "digest not found" if by_digest else "tag not found"
    return "not found (http 404)"


async def _read_capped(response: httpx.Response, cap: int) -> tuple[bytes, bool]:
    declared = response.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > cap:
        return b"", True
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > cap:
            return b"", True
        chunks.append(chunk)
    return b"".join(chunks), False


class RegistryClient:
    """Talks to OCI/Docker registries: observe tags and digests, fetch manifests, list tags.

    One instance per event loop: it owns one keep-alive `httpx.AsyncClient` per origin (created on first use)
    and the auth state (schemes, credentials, tokens) shared by all concurrent checks. `clock`, `wall_clock`,
    `sleep` and `jitter` are injectable so tests can run back-off and token expiry instantly.
    """

    def __init__(
        self,
        settings: RegistrySettings,
        credentials: CredentialProvider | None = None,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self.settings = settings
        self.stats = RequestStats()
        self._transport = transport
        self._clock = clock
        self._wall_clock = wall_clock
        self._sleep = sleep
        self._backoff = Backoff(settings.backoff_base, jitter)
        self._pauses = PauseBoard(clock)
        self._all_slots = asyncio.Semaphore(settings.total_concurrency)
        self._pools: dict[Origin, _Pool] = {}
        self._endpoints: dict[str, _Endpoint] = {}
        self._auth = Authenticator(
            credentials,
            self._send_token_request,
            plain_http_allowed=settings.allows_plain_http,
            user_agent=settings.user_agent,
            clock=clock,
            wall_clock=wall_clock,
        )
        # A bad CA file is a configuration error: surface it now, not as an unverifiable result per tag.
        self._ssl_context: ssl.SSLContext | None = (
            build_ssl_context(settings.ca_file) if settings.ca_file is not None and transport is None else None
        )

    def __repr__(self) -> str:
        return f"RegistryClient(origins={len(self._pools)}, stats={self.stats.as_dict()})"

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._auth.aclose()
        pools = list(self._pools.values())
        self._pools.clear()
        self._endpoints.clear()
        for pool in pools:
            for client in pool.clients:
                await client.aclose()

    # -- public API

    async def observe(self, ref: ImageRef, *, expected: Digest | None = None, platforms: bool = False) -> Observation:
        """What the registry serves for `ref` now: FOUND, MISSING or UNVERIFIABLE (never raises for those).

        `platforms=True` fetches an index to report its children; they are also reported whenever an index
        had to be fetched anyway (a missing header, or a digest other than `expected`).
        """
        check = _Check()
        try:
            if ref.tag is None:
                return await self._observe_digest(ref, platforms, check)
            return await self._observe_tag(ref, ref.tag, expected, platforms, check)
        except RegistryFailure as failure:
            reason = failure.reason
        except CredentialsError as exc:
            reason = f"credentials unavailable: {exc.message}"
        return Observation(
            ref=ref,
            status=LiveStatus.UNVERIFIABLE,
            reason=reason,
            rate_limit_remaining=check.rate_limit_remaining,
        )

    async def fetch_manifest(self, ref: ImageRef) -> Manifest:
        """GET the manifest of `ref` (by tag, else by digest), its bytes verified against every digest."""
        try:
            return await self._fetch_manifest(ref)
        except RegistryFailure as failure:
            raise RegistryRequestError(
                f"cannot fetch the manifest of {ref.familiar}: {failure.reason}",
                reason=failure.reason,
                registry=ref.registry,
            ) from None

    async def list_tags(
        self,
        registry: str,
        repository: str,
        *,
        max_tags: int = DEFAULT_MAX_TAGS,
        should_continue: Callable[[], bool] | None = None,
    ) -> TagListing:
        """The tags of a repository, page by page (`Link: rel="next"`), in the registry's order.

        At most `max_tags` names are read (then `stopped="cap"`), and no further page is asked for once
        `should_continue()` says no (`stopped="time"`). Names outside the tag grammar are set aside as rejected,
        never queried. Memory stays bounded by `max_tags`, whatever the registry sends.
        """
        registry = normalise_registry(registry)
        parsed = parse_reference(f"{registry}/{repository}")
        if parsed.registry != registry:
            raise InvalidReferenceError(f"invalid registry host {registry!r}")
        if max_tags < 1:
            raise ValueError("max_tags must be at least 1")
        try:
            return await self._list_tags(registry, parsed.repository, max_tags, should_continue)
        except RegistryFailure as failure:
            raise RegistryRequestError(
                f"cannot list the tags of {registry}/{parsed.repository}: {failure.reason}",
                reason=failure.reason,
                registry=registry,
            ) from None

    async def _fetch_manifest(self, ref: ImageRef) -> Manifest:
        check = _Check()
        endpoint = self._endpoint(ref.registry)
        url = _manifest_url(endpoint, ref.repository, ref.manifest_reference)
        reply = await self._get_manifest(endpoint, url, ref.repository, check)
        if reply.status == 404:
            raise RegistryFailure(
                await self._not_found_reason(endpoint, ref.repository, reply.body, by_digest=ref.tag is None)
            )
        if reply.status != 200:
            raise RegistryFailure(f"http {reply.status}")
        asked = ref.digest if ref.tag is None else None
        manifest = self._verified_manifest(reply, check, asked.algorithm if asked else None)
        if asked is not None and manifest.digest != asked:
            raise RegistryFailure("manifest content does not match the requested digest")
        return manifest

    async def _list_tags(
        self, registry: str, repository: str, max_tags: int, should_continue: Callable[[], bool] | None
    ) -> TagListing:
        endpoint = self._endpoint(registry)
        scope = _pull_scope(repository)
        list_path = f"/v2/{repository}/tags/list"
        url = httpx.URL(f"{endpoint.base}{list_path}?n={min(TAGS_PAGE_SIZE, max_tags)}")
        visited = {url}
        tags: list[str] = []
        seen: set[str] = set()
        rejected: dict[str, RejectedTag] = {}
        rejected_count = 0
        read = 0
        for page in range(MAX_TAG_PAGES):
            if page and should_continue is not None and not should_continue():
                return TagListing(tuple(tags), tuple(rejected.values()), rejected_count, stopped="time")
            reply = await self._request(
                endpoint,
                "GET",
                url,
                scope=scope,
                accept=TAGS_ACCEPT,
                cap=MAX_TAG_PAGE_BYTES,
                check=None,
                same_origin=_origin(url) == endpoint.origin,
            )
            if reply.status == 404:
                unknown = "NAME_UNKNOWN" in error_codes(reply.body)
                raise RegistryFailure("repository not found" if unknown else "not found (http 404)")
            if reply.status != 200:
                raise RegistryFailure(f"http {reply.status}")
            if reply.truncated:
                raise RegistryFailure(f"tag list page larger than {MAX_TAG_PAGE_BYTES // (1024 * 1024)} MiB")
            names = _parse_tag_page(reply.body)
            for name in names:
                if read >= max_tags:
                    return TagListing(tuple(tags), tuple(rejected.values()), rejected_count, stopped="cap")
                read += 1
                if is_valid_tag(name):
                    if name not in seen:
                        seen.add(name)
                        tags.append(name)
                    continue
                key = rejected_tag_key(name)
                if key not in rejected:
                    rejected_count += 1
                    if len(rejected) < MAX_REJECTED_KEPT:
                        rejected[key] = RejectedTag(key, name[:MAX_REJECTED_SHOWN])
            link = next_link(reply.headers.get_list("link"))
            if link is None:
                return TagListing(tuple(tags), tuple(rejected.values()), rejected_count)
            if read >= max_tags:
                return TagListing(tuple(tags), tuple(rejected.values()), rejected_count, stopped="cap")
            url = self._checked_target(reply.url, link, what="tag list link")
            if _origin(url) == endpoint.origin and url.path != list_path:
                # On the registry's own origin (where credentials go) a Link only pages this repository's list.
                raise RegistryFailure("tag list link leaves the repository")
            if url in visited:
                raise RegistryFailure("tag list pagination loops")
            visited.add(url)
        raise RegistryFailure("tag list has too many pages")

    # -- checking one reference

    async def _observe_tag(
        self, ref: ImageRef, tag: str, expected: Digest | None, platforms: bool, check: _Check
    ) -> Observation:
        endpoint = self._endpoint(ref.registry)
        url = _manifest_url(endpoint, ref.repository, tag)
        head, media, header_digest = await self._head_manifest(endpoint, url, ref.repository, check)
        if head.status == 200:
            if header_digest is not None:
                check.header_digests.append(header_digest)
                if (
                    media is not None
                    and (expected is None or header_digest == expected)
                    and not (platforms and media.is_index)
                ):
                    return self._found(ref, check, header_digest, media)
        elif head.status not in (404, 405):  # 405: a registry without HEAD support; GET answers the same
            raise RegistryFailure(f"http {head.status}")
        reply = await self._get_manifest(endpoint, url, ref.repository, check)
        if reply.status == 404:
            reason = await self._not_found_reason(endpoint, ref.repository, reply.body, by_digest=False)
            return self._missing(ref, check, reason)
        if reply.status != 200:
            raise RegistryFailure(f"http {reply.status}")
        manifest = self._verified_manifest(reply, check, expected.algorithm if expected else None)
        return self._found(
            ref,
            check,
            manifest.digest,
            manifest.media_type,
            platforms=manifest.platforms,  # an index fetched anyway tells its children for free
            confirmed=True,
        )

    async def _head_manifest(
        self, endpoint: _Endpoint, url: str, repository: str, check: _Check
    ) -> tuple[_Reply, MediaType | None, Digest | None]:
        """HEAD a manifest with the full Accept set: the reply, its media type and its digest header (on a 200)."""
        head = await self._request(
            endpoint, "HEAD", url, scope=_pull_scope(repository), accept=MANIFEST_ACCEPT, cap=0, check=check
        )
        if head.status != 200:
            return head, None, None
        media = check_media_type(media_type_of(head.headers.get("content-type")))
        return head, media, parse_digest_header(head.headers.get("docker-content-digest"))

    async def _observe_digest(self, ref: ImageRef, platforms: bool, check: _Check) -> Observation:
        asked = ref.digest
        if asked is None:
            raise ValueError(f"{ref} has neither a tag nor a digest")
        endpoint = self._endpoint(ref.registry)
        url = _manifest_url(endpoint, ref.repository, str(asked))
        head, media, header_digest = await self._head_manifest(endpoint, url, ref.repository, check)
        if head.status == 200:
            if header_digest is not None and header_digest != asked:
                raise RegistryFailure("registry digest header disagrees with requested digest")
            if not platforms or (media is not None and not media.is_index):
                return self._found(ref, check, asked, media)
        elif head.status not in (404, 405):
            raise RegistryFailure(f"http {head.status}")
        reply = await self._get_manifest(endpoint, url, ref.repository, check)
        if reply.status == 404:
            reason = await self._not_found_reason(endpoint, ref.repository, reply.body, by_digest=True)
            return self._missing(ref, check, reason)
        if reply.status != 200:
            raise RegistryFailure(f"http {reply.status}")
        manifest = self._verified_manifest(reply, check, asked.algorithm)
        if manifest.digest != asked:
            raise RegistryFailure("manifest content does not match the requested digest")
        return self._found(
            ref,
            check,
            asked,
            manifest.media_type,
            platforms=manifest.platforms,  # an index fetched anyway tells its children for free
            confirmed=True,
        )

    async def _get_manifest(self, endpoint: _Endpoint, url: str, repository: str, check: _Check) -> _Reply:
        return await self._request(
            endpoint,
            "GET",
            url,
            scope=_pull_scope(repository),
            accept=MANIFEST_ACCEPT,
            cap=MAX_MANIFEST_BYTES,
            check=check,
        )

    async def _not_found_reason(self, endpoint: _Endpoint, repository: str, body: bytes, *, by_digest: bool) -> str:
        """Why a manifest GET was 404, from its error code; a tag's MANIFEST_UNKNOWN is checked with the tag list.

        distribution answers MANIFEST_UNKNOWN for a tag of a repository that does not exist at all; its tag
        list says NAME_UNKNOWN then. That costs one small request, only when a tag is missing. Not done for
        digests: a repository holding only untagged manifests has no tag list either.
        """
        reason = _missing_reason(body, by_digest=by_digest)
        if reason != "tag not found":
            return reason
        try:
            listing = await self._request(
                endpoint,
                "GET",
                f"{endpoint.base}/v2/{repository}/tags/list?n=1",
                scope=_pull_scope(repository),
                accept=TAGS_ACCEPT,
                cap=MAX_ERROR_BODY,
                check=None,
            )
        except RegistryFailure:
            return reason
        if listing.status == 404 and "NAME_UNKNOWN" in error_codes(listing.body):
            return "repository not found"
        return reason

    @staticmethod
    def _verified_manifest(reply: _Reply, check: _Check, algorithm: str | None) -> Manifest:
        """The manifest of a 200 GET, after every digest header seen for this reference matched its bytes."""
        media = check_media_type(media_type_of(reply.headers.get("content-type")))
        if reply.truncated:
            raise RegistryFailure("manifest larger than 4 MiB")
        header_digest = parse_digest_header(reply.headers.get("docker-content-digest"))
        if header_digest is not None:
            check.header_digests.append(header_digest)
        body = reply.body
        if algorithm is None:
            algorithm = check.header_digests[0].algorithm if check.header_digests else "sha256"
        digest = Digest.of(body, algorithm)
        for seen in check.header_digests:
            if seen != digest if seen.algorithm == algorithm else not seen.matches(body):
                raise RegistryFailure("registry digest header disagrees with content")
        return parse_manifest(body, media, digest)

    @staticmethod
    def _found(
        ref: ImageRef,
        check: _Check,
        digest: Digest,
        media: MediaType | None,
        *,
        platforms: dict[str, Digest] | None = None,
        confirmed: bool = False,
    ) -> Observation:
        return Observation(
            ref=ref,
            status=LiveStatus.FOUND,
            live_digest=digest,
            media_type=media.value if media is not None else None,
            platforms=platforms,
            confirmed_by_content=confirmed,
            rate_limit_remaining=check.rate_limit_remaining,
        )

    @staticmethod
    def _missing(ref: ImageRef, check: _Check, reason: str) -> Observation:
        return Observation(
            ref=ref, status=LiveStatus.MISSING, reason=reason, rate_limit_remaining=check.rate_limit_remaining
        )

    # -- requests: redirects, auth, retries, connection pools

    async def _request(
        self,
        endpoint: _Endpoint,
        method: str,
        url: str | httpx.URL,
        *,
        scope: str,
        accept: str,
        cap: int,
        check: _Check | None,
        same_origin: bool = True,
    ) -> _Reply:
        """One logical request to a registry: authorized on its own origin only, redirects followed by hand.

        Authorization never leaves the registry's origin (scheme, host and port): a redirect or a Link to any
        other origin is followed without it, and a plain-http target is refused unless listed insecure.
        """
        target: str | httpx.URL = url
        for _ in range(MAX_REDIRECTS + 1):
            if same_origin:
                reply = await self._send_authorized(
                    endpoint, method=method, url=target, scope=scope, accept=accept, cap=cap, check=check
                )
            else:
                request = httpx.Request(method, target, headers=self._headers(accept, None))
                reply = await self._send(self._pool_for(request.url), request, cap=cap, check=check)
            if reply.status in REDIRECT_STATUS and (location := reply.headers.get("location")):
                self.stats.redirects += 1
                target = self._checked_target(reply.url, location, what="redirect")
                same_origin = _origin(target) == endpoint.origin
                if reply.status == 303 and method not in ("GET", "HEAD"):
                    method = "GET"
                continue
            if reply.status == 401 and not same_origin:
                raise RegistryFailure("auth failed")  # credentials are never sent to another origin
            if reply.status == 403:
                raise RegistryFailure("access denied")
            return reply
        raise RegistryFailure("too many redirects")

    async def _send_authorized(
        self,
        endpoint: _Endpoint,
        *,
        method: str,
        url: str | httpx.URL,
        scope: str,
        accept: str,
        cap: int,
        check: _Check | None,
    ) -> _Reply:
        """Send with the cached Authorization; on a 401, answer the challenge once and try again."""
        probing = await self._first_contact(endpoint) if not endpoint.contacted else False
        try:
            authorization = self._auth.cached(endpoint.registry, scope)
            if authorization is PENDING:
                authorization = await self._auth.authorize(endpoint.registry, scope)
            request = httpx.Request(method, url, headers=self._headers(accept, authorization))
            reply = await self._send(endpoint.pool, request, cap=cap, check=check)
            if reply.status != 401:
                return reply
            self.stats.challenges += 1
            authorization = await self._auth.challenged(
                endpoint.registry, scope, reply.headers.get_list("www-authenticate"), authorization
            )
        finally:
            if probing:
                self._first_contact_done(endpoint)
        request = httpx.Request(method, url, headers=self._headers(accept, authorization))
        reply = await self._send(endpoint.pool, request, cap=cap, check=check)
        if reply.status == 401:
            raise RegistryFailure("auth failed")
        return reply

    @staticmethod
    async def _first_contact(endpoint: _Endpoint) -> bool:
        """Let one request (the probe) learn how a new registry authenticates while the others wait.

        Without this, every check queued before the first answer would go out unauthorized and eat a 401.
        The others go ahead once the probe has its answer and, after a 401, has answered the challenge,
        whatever the outcome. Returns whether the caller is the probe.
        """
        if endpoint.probe is None:
            endpoint.probe = asyncio.get_running_loop().create_future()
            return True
        await asyncio.wait([endpoint.probe])  # unlike `await probe`, never cancels it if this waiter is
        return False

    @staticmethod
    def _first_contact_done(endpoint: _Endpoint) -> None:
        probe, endpoint.probe = endpoint.probe, None
        endpoint.contacted = True
        if probe is not None:
            probe.set_result(None)

    async def _send_token_request(self, request: httpx.Request) -> TokenReply:
        try:
            reply = await self._send(self._pool_for(request.url), request, cap=MAX_TOKEN_BODY, check=None, token=True)
        except RegistryFailure as failure:
            raise RegistryFailure(f"token server {failure.reason}") from None
        if reply.truncated:
            raise RegistryFailure("auth failed (token response too large)")
        return TokenReply(reply.status, reply.body)

    async def _send(
        self, pool: _Pool, request: httpx.Request, *, cap: int, check: _Check | None, token: bool = False
    ) -> _Reply:
        """Send one request with retries: 429 (Retry-After, shared pause), 5xx, resets and timeouts."""
        settings = self.settings
        attempt = 0
        while True:
            attempt += 1
            wait = self._pauses.remaining(pool.host)
            if wait > 0:
                if wait > settings.max_retry_after:
                    raise RegistryFailure("rate limited")
                await self._sleep(wait)
            try:
                reply = await self._exchange(pool, request, cap, token)
            except (httpx.HTTPError, TimeoutError) as exc:
                reason, retryable = classify_transport_error(exc)
                if not retryable:
                    raise RegistryFailure(reason) from None
                delay = self._backoff.delay(attempt)
            else:
                if check is not None and (remaining := reply.headers.get("ratelimit-remaining")) is not None:
                    check.rate_limit_remaining = parse_rate_limit_remaining(remaining)
                status = reply.status
                if status not in RETRYABLE_STATUS:
                    return reply
                retry_after = self._retry_after(reply)
                if status == 429:
                    reason = "rate limited"
                    self._pauses.pause(
                        pool.host, retry_after if retry_after is not None else self._backoff.delay(attempt)
                    )
                    if retry_after is not None and retry_after > settings.max_retry_after:
                        raise RegistryFailure(reason)
                    delay = 0.0  # the pause board holds back this request and every other one to the host
                else:
                    reason = f"http {status}"
                    usable = retry_after is not None and retry_after <= settings.max_retry_after
                    delay = retry_after if usable and retry_after is not None else self._backoff.delay(attempt)
            if attempt >= settings.max_attempts:
                raise RegistryFailure(reason)
            self.stats.retries += 1
            logger.debug("retrying %s %s after %s (attempt %d)", request.method, request.url, reason, attempt)
            if delay > 0:
                await self._sleep(delay)

    def _retry_after(self, reply: _Reply) -> float | None:
        return parse_retry_after(reply.headers.get("retry-after"), wall_now=self._wall_clock())

    async def _exchange(self, pool: _Pool, request: httpx.Request, cap: int, token: bool) -> _Reply:
        """One HTTP exchange within the per-host and global bounds; the body is read up to `cap`."""
        stats = self.stats
        if token:
            stats.token_requests += 1
        elif request.method == "HEAD":
            stats.heads += 1
        else:
            stats.gets += 1
        async with pool.slots, self._all_slots, asyncio.timeout(self.settings.timeout):
            client = pool.take()
            try:
                response = await client.send(request, stream=True)
                try:
                    if request.method == "HEAD":
                        # Reading the (empty) body is what returns the connection to the keep-alive pool.
                        await response.aread()
                        body, truncated = b"", False
                    else:
                        ok = response.status_code == 200
                        body, truncated = await _read_capped(response, cap if ok else min(cap, MAX_ERROR_BODY))
                finally:
                    await response.aclose()
            finally:
                pool.idle.append(client)
        return _Reply(response.status_code, response.headers, body, truncated, request.url)

    def _headers(self, accept: str, authorization: str | None) -> dict[str, str]:
        headers = {"User-Agent": self.settings.user_agent, "Accept": accept, "Accept-Encoding": "identity"}
        if authorization is not None:
            headers["Authorization"] = authorization
        return headers

    def _checked_target(self, base: httpx.URL, location: str, *, what: str) -> httpx.URL:
        """Resolve a redirect/Link target: https, or http only to a host listed insecure."""
        try:
            target = base.join(location)
        except httpx.InvalidURL:
            raise RegistryFailure(f"invalid {what}") from None
        if target.scheme == "https" and target.host:
            return target
        if target.scheme == "http" and target.host and self.settings.allows_plain_http(target.host, target.port):
            return target
        raise RegistryFailure(f"insecure {what}" if target.scheme == "http" else f"invalid {what}")

    def _endpoint(self, registry: str) -> _Endpoint:
        endpoint = self._endpoints.get(registry)
        if endpoint is None:
            try:
                probe = httpx.URL(f"https://{registry}/")
            except httpx.InvalidURL:
                raise RegistryFailure(f"invalid registry host {registry}") from None
            scheme = "http" if self.settings.allows_plain_http(probe.host, probe.port) else "https"
            base = httpx.URL(f"{scheme}://{registry}/")
            endpoint = _Endpoint(registry, f"{scheme}://{registry}", _origin(base), self._pool_for(base))
            self._endpoints[registry] = endpoint
        return endpoint

    def _pool_for(self, url: httpx.URL) -> _Pool:
        origin = _origin(url)
        pool = self._pools.get(origin)
        if pool is None:
            # Every client of every origin shares one SSL context: building one loads the CA bundle (~40 ms).
            # A plain-http origin never does TLS (redirects are followed by hand, each origin has its own
            # clients), so it gets an empty verifying context instead of loading certificates for nothing.
            if self._transport is not None:
                verify: ssl.SSLContext | bool = True
            elif url.scheme == "https":
                verify = self._tls()
            else:
                verify = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)

            def factory() -> httpx.AsyncClient:
                return httpx.AsyncClient(
                    transport=self._transport,
                    verify=verify,
                    limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
                    timeout=httpx.Timeout(self.settings.timeout),
                    follow_redirects=False,  # followed by hand in _request, to keep Authorization on its origin
                    trust_env=self._transport is None,
                )

            host = url.netloc.decode("ascii")
            pool = self._pools[origin] = _Pool(factory, asyncio.Semaphore(self.settings.concurrency), host)
        return pool

    def _tls(self) -> ssl.SSLContext:
        if self._ssl_context is None:
            self._ssl_context = build_ssl_context(self.settings.ca_file)
        return self._ssl_context


def _parse_tag_page(body: bytes) -> list[str]:
    try:
        document = json.loads(body)
    except ValueError:
        raise RegistryFailure("malformed tag list") from None
    tags = document.get("tags") if isinstance(document, dict) else None
    if tags is None and isinstance(document, dict):
        return []
    if not isinstance(tags, list) or not all(isinstance(tag, str) for tag in tags):
        raise RegistryFailure("malformed tag list")
    return tags
