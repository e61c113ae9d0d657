"""What a registry serves for a tag or digest, established with as few requests as the evidence allows.

A routine check is one HEAD: the `Docker-Content-Digest` header names the manifest. The body is fetched and
hashed only when the header is missing, disagrees with what was expected, or platform children are wanted;
every digest header seen must then match the bytes. Registry trouble never raises from `observe`: it becomes
an UNVERIFIABLE observation with a short reason, so a flaky registry cannot pass for a match or a drift.

The layers, each in one place: `observe` (the evidence rules) → `_request` (redirects and the origin check)
→ `RegistryPolicy.send` (policy.py: requests in flight, the 429 pause, retries) → `_send_with_auth`, which
drives `RegistryAuth` (auth.py: the challenge flow, an `httpx.Auth`) over the transport its `Routes` pick (the
proxies from the environment) → `CappedTransport` (transport.py) over `Http1Transport` (wire.py).
"""

from __future__ import annotations

import asyncio
import json
import random
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from types import TracebackType
from typing import Final, Self

import httpx

from audit.adapters.registry.auth import Authenticator, RegistryAuth, TokenReply
from audit.adapters.registry.credentials import CredentialProvider
from audit.adapters.registry.failures import FailureKind, RegistryFailure, RegistryRequestError, status_failure
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
from audit.adapters.registry.policy import RegistryPolicy
from audit.adapters.registry.retry import Backoff
from audit.adapters.registry.tls import build_ssl_context
from audit.adapters.registry.transport import (
    CAP_EXTENSION,
    MAX_ERROR_BODY,
    BodyTooLarge,
    CappedTransport,
    Routes,
    environment_mounts,
    proxied_transport,
)
from audit.adapters.registry.wire import Http1Transport
from audit.config import DEFAULT_MAX_TAGS_PER_REPOSITORY, RegistrySettings
from audit.errors import CredentialsError, InvalidDigestError, InvalidReferenceError
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

DEFAULT_PORTS: Final = {"http": 80, "https": 443}
REDIRECT_STATUS: Final = frozenset({301, 302, 303, 307, 308})
MAX_REDIRECTS: Final = 5
_NO_BODY: Final = httpx.ByteStream(b"")
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
_TOKEN: Final = "digest_audit.token"  # noqa: S105 - request extension marking a token request, not a secret

type Origin = tuple[str, str, int]


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
class _Endpoint:
    registry: str
    base: str
    origin: Origin
    base_url: httpx.URL


@dataclass(slots=True)
class _Reply:
    status: int
    headers: httpx.Headers
    body: bytes
    truncated: bool  # the body was longer than the cap and was not read to the end
    url: httpx.URL


@dataclass(slots=True)
class _Evidence:
    """What was learnt while checking one reference."""

    header_digests: list[Digest] = field(default_factory=list)
    rate_limit_remaining: int | None = None


def _origin(url: httpx.URL) -> Origin:
    return (url.scheme, url.host, url.port or DEFAULT_PORTS.get(url.scheme, 0))


def _pull_scope(repository: str) -> str:
    return f"repository:{repository}:pull"


def _manifest_url(endpoint: _Endpoint, repository: str, reference: str) -> httpx.URL:
    """`<base>/v2/<repository>/manifests/<tag or digest>`, only for names inside the grammar.

    A name from a registry or a table could hold `..`, `/`, `?`, `#` or controls; such a name never becomes a
    URL, so every request stays under `/v2/<repository>/`.
    """
    if not is_valid_repository(repository):
        raise RegistryFailure("invalid repository name (outside the distribution grammar)", FailureKind.BAD_NAME)
    if not is_valid_tag(reference):
        try:
            parse_digest(reference)
        except InvalidDigestError:
            raise RegistryFailure("invalid tag name (outside the distribution grammar)", FailureKind.BAD_NAME) from None
    return _with_path(endpoint.base_url, f"/v2/{repository}/manifests/{reference}")


def _with_path(base: httpx.URL, path: str) -> httpx.URL:
    """`base` with `path`, for a path made only of names inside the distribution grammar (nothing to quote).

    httpx parses and re-validates every URL it is given, about a tenth of the client's CPU per tag; this
    path needs none of it, so the parsed parts of `base` are reused with the path replaced. If httpx's
    parts ever change shape, `_FAST_PATHS` is False and the URL is parsed the public way.
    """
    if _FAST_PATHS:
        url = httpx.URL.__new__(httpx.URL)
        url._uri_reference = base._uri_reference._replace(path=path)
        return url
    return base.copy_with(path=path)


def _fast_paths_work() -> bool:
    try:
        base = httpx.URL("https://registry.example:5000/")
        url = httpx.URL.__new__(httpx.URL)
        url._uri_reference = base._uri_reference._replace(path="/v2/a/b_c.d-e/manifests/sha256:0f")
    except (AttributeError, TypeError, ValueError):
        return False
    return url == httpx.URL("https://registry.example:5000/v2/a/b_c.d-e/manifests/sha256:0f")


_FAST_PATHS: Final = _fast_paths_work()


def _missing_reason(body: bytes, *, by_digest: bool) -> str:
    codes = error_codes(body)
    if "NAME_UNKNOWN" in codes:
        return "repository not found"
    if "MANIFEST_UNKNOWN" in codes:
        return "digest not found" if by_digest else "tag not found"
    return "not found (http 404)"


async def _read_body(response: httpx.Response, cap: int) -> tuple[bytes, bool]:
    """The body, or (b"", True) when it is longer than `cap` (declared or read; CappedTransport stops it)."""
    declared = response.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > cap:
        return b"", True
    try:
        return await response.aread(), False
    except BodyTooLarge:
        return b"", True


class RegistryClient:
    """Talks to OCI/Docker registries: observe tags and digests, fetch manifests, list tags.

    One instance per event loop: it owns its transports (created on first use), one policy per
    registry host and the auth state (schemes, credentials, tokens) shared by all concurrent checks.
    `clock`, `wall_clock`, `sleep` and `jitter` are injectable so tests can run back-off and token expiry
    instantly; `transport` replaces the network (tests pass `httpx.MockTransport`).
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
        self._routes: Routes | None = None
        # `_exchange` bounds each exchange as a whole (connect to last byte), so the transports need only the
        # connect timeout: no timer per read.
        self._timeout = httpx.Timeout(None, connect=settings.timeout).as_dict()
        self._policies: dict[str, RegistryPolicy] = {}
        self._endpoints: dict[str, _Endpoint] = {}
        self._header_sets: dict[tuple[str, bytes], httpx.Headers] = {}
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
        return f"RegistryClient(registries={sorted(self._policies)}, stats={self.stats.as_dict()})"

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._auth.aclose()
        routes, self._routes = self._routes, None
        self._endpoints.clear()
        if routes is not None:
            await routes.aclose()

    def limits(self) -> dict[str, int]:
        """The current adaptive limit of requests in flight per registry host (the benchmark reads it)."""
        return {host: int(policy.limit.limit) for host, policy in self._policies.items()}

    # -- public API

    async def observe(self, ref: ImageRef, *, expected: Digest | None = None, platforms: bool = False) -> Observation:
        """What the registry serves for `ref` now: FOUND, MISSING or UNVERIFIABLE (never raises for those).

        `platforms=True` fetches an index to report its children; they are also reported whenever an index
        had to be fetched anyway (a missing header, or a digest other than `expected`).
        """
        evidence = _Evidence()
        try:
            return await self._observe(ref, expected, platforms, evidence)
        except RegistryFailure as failure:
            reason = failure.reason
        except CredentialsError as exc:
            reason = f"credentials unavailable: {exc.message}"
        return Observation(
            ref=ref,
            status=LiveStatus.UNVERIFIABLE,
            reason=reason,
            rate_limit_remaining=evidence.rate_limit_remaining,
        )

    async def fetch_manifest(self, ref: ImageRef) -> Manifest:
        """GET the manifest of `ref` (by tag, else by digest), its bytes verified against every digest."""
        try:
            return await self._fetch_manifest(ref)
        except RegistryFailure as failure:
            raise RegistryRequestError(
                f"cannot fetch the manifest of {ref.familiar}: {failure.reason}",
                reason=failure.reason,
                kind=failure.kind,
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
                kind=failure.kind,
                registry=registry,
            ) from None

    # -- the evidence rules: one path for tags and digests

    async def _observe(
        self, ref: ImageRef, expected: Digest | None, platforms: bool, evidence: _Evidence
    ) -> Observation:
        """HEAD first; GET only when the HEAD cannot settle it. A digest reference ignores `expected`."""
        asked = ref.digest if ref.tag is None else None
        if ref.tag is None and asked is None:
            raise ValueError(f"{ref} has neither a tag nor a digest")
        endpoint = self._endpoint(ref.registry)
        url = _manifest_url(endpoint, ref.repository, ref.manifest_reference)
        scope = _pull_scope(ref.repository)
        head = await self._request(
            endpoint, "HEAD", url, scope=scope, accept=MANIFEST_ACCEPT, cap=MAX_ERROR_BODY, evidence=evidence
        )
        if head.status == 200:
            media = check_media_type(media_type_of(head.headers.get("content-type")))
            header_digest = parse_digest_header(head.headers.get("docker-content-digest"), asked or expected)
            wants_children = platforms and (media is None or media.is_index)
            if asked is not None:
                if header_digest is not None and header_digest != asked:
                    raise RegistryFailure(
                        "registry digest header disagrees with requested digest", FailureKind.BAD_RESPONSE
                    )
                if not wants_children:
                    return self._found(ref, evidence, asked, media)
            elif header_digest is not None:
                if header_digest == expected:
                    header_digest = expected  # one shared (frozen) object for a match (a padded header)
                evidence.header_digests.append(header_digest)
                if media is not None and (expected is None or header_digest == expected) and not wants_children:
                    return self._found(ref, evidence, header_digest, media)
        elif head.status not in (404, 405):  # 405: a registry without HEAD support; GET answers the same
            raise status_failure(head.status)
        reply = await self._request(
            endpoint, "GET", url, scope=scope, accept=MANIFEST_ACCEPT, cap=MAX_MANIFEST_BYTES, evidence=evidence
        )
        if reply.status == 404:
            reason = await self._not_found_reason(endpoint, ref.repository, reply.body, by_digest=asked is not None)
            return Observation(
                ref=ref, status=LiveStatus.MISSING, reason=reason, rate_limit_remaining=evidence.rate_limit_remaining
            )
        if reply.status != 200:
            raise status_failure(reply.status)
        algorithm = asked.algorithm if asked else expected.algorithm if expected else None
        manifest = self._verified_manifest(reply, evidence, algorithm)
        if asked is not None and manifest.digest != asked:
            raise RegistryFailure("manifest content does not match the requested digest", FailureKind.BAD_RESPONSE)
        return self._found(
            ref,
            evidence,
            manifest.digest,
            manifest.media_type,
            platforms=manifest.platforms,  # an index fetched anyway tells its children for free
        )

    async def _fetch_manifest(self, ref: ImageRef) -> Manifest:
        evidence = _Evidence()
        endpoint = self._endpoint(ref.registry)
        url = _manifest_url(endpoint, ref.repository, ref.manifest_reference)
        reply = await self._request(
            endpoint,
            "GET",
            url,
            scope=_pull_scope(ref.repository),
            accept=MANIFEST_ACCEPT,
            cap=MAX_MANIFEST_BYTES,
            evidence=evidence,
        )
        if reply.status == 404:
            reason = await self._not_found_reason(endpoint, ref.repository, reply.body, by_digest=ref.tag is None)
            raise RegistryFailure(reason, FailureKind.NOT_FOUND)
        if reply.status != 200:
            raise status_failure(reply.status)
        asked = ref.digest if ref.tag is None else None
        manifest = self._verified_manifest(reply, evidence, asked.algorithm if asked else None)
        if asked is not None and manifest.digest != asked:
            raise RegistryFailure("manifest content does not match the requested digest", FailureKind.BAD_RESPONSE)
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
            reply = await self._request(endpoint, "GET", url, scope=scope, accept=TAGS_ACCEPT, cap=MAX_TAG_PAGE_BYTES)
            if reply.status == 404:
                unknown = "NAME_UNKNOWN" in error_codes(reply.body)
                raise RegistryFailure(
                    "repository not found" if unknown else "not found (http 404)", FailureKind.NOT_FOUND
                )
            if reply.status != 200:
                raise status_failure(reply.status)
            if reply.truncated:
                raise RegistryFailure(
                    f"tag list page larger than {MAX_TAG_PAGE_BYTES // (1024 * 1024)} MiB", FailureKind.BAD_RESPONSE
                )
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
                raise RegistryFailure("tag list link leaves the repository", FailureKind.BAD_RESPONSE)
            if url in visited:
                raise RegistryFailure("tag list pagination loops", FailureKind.BAD_RESPONSE)
            visited.add(url)
        raise RegistryFailure("tag list has too many pages", FailureKind.BAD_RESPONSE)

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
            )
        except RegistryFailure:
            return reason
        if listing.status == 404 and "NAME_UNKNOWN" in error_codes(listing.body):
            return "repository not found"
        return reason

    @staticmethod
    def _verified_manifest(reply: _Reply, evidence: _Evidence, algorithm: str | None) -> Manifest:
        """The manifest of a 200 GET, after every digest header seen for this reference matched its bytes."""
        media = check_media_type(media_type_of(reply.headers.get("content-type")))
        if reply.truncated:
            raise RegistryFailure("manifest larger than 4 MiB", FailureKind.BAD_RESPONSE)
        header_digest = parse_digest_header(reply.headers.get("docker-content-digest"))
        if header_digest is not None:
            evidence.header_digests.append(header_digest)
        body = reply.body
        if algorithm is None:
            algorithm = evidence.header_digests[0].algorithm if evidence.header_digests else "sha256"
        digest = Digest.of(body, algorithm)
        for seen in evidence.header_digests:
            if seen != digest if seen.algorithm == algorithm else not seen.matches(body):
                raise RegistryFailure("registry digest header disagrees with content", FailureKind.BAD_RESPONSE)
        return parse_manifest(body, media, digest)

    @staticmethod
    def _found(
        ref: ImageRef,
        evidence: _Evidence,
        digest: Digest,
        media: MediaType | None,
        *,
        platforms: dict[str, Digest] | None = None,
    ) -> Observation:
        return Observation(
            ref=ref,
            status=LiveStatus.FOUND,
            live_digest=digest,
            media_type=media,
            platforms=platforms,
            rate_limit_remaining=evidence.rate_limit_remaining,
        )

    # -- redirects and the origin check

    async def _request(
        self,
        endpoint: _Endpoint,
        method: str,
        url: str | httpx.URL,
        *,
        scope: str,
        accept: str,
        cap: int,
        evidence: _Evidence | None = None,
    ) -> _Reply:
        """One logical request to a registry: authorized on its own origin only, redirects followed by hand.

        The one place that decides where credentials may go: Authorization (the auth flow) only to the
        registry's origin (scheme, host and port); a redirect or a Link to any other origin is followed
        without it, and a plain-http target is refused unless listed insecure.
        """
        target = url if isinstance(url, httpx.URL) else httpx.URL(url)
        same_origin = _origin(target) == endpoint.origin
        for _ in range(MAX_REDIRECTS + 1):
            request = self._new_request(method, target, accept, cap)
            auth = RegistryAuth(self._auth, endpoint.registry, scope, self._challenged) if same_origin else None
            reply = await self._send(request, auth=auth, evidence=evidence)
            if reply.status in REDIRECT_STATUS and (location := reply.headers.get("location")):
                self.stats.redirects += 1
                target = self._checked_target(reply.url, location, what="redirect")
                same_origin = _origin(target) == endpoint.origin
                if reply.status == 303 and method not in ("GET", "HEAD"):
                    method = "GET"
                continue
            if reply.status == 401:
                raise RegistryFailure("auth failed", FailureKind.AUTH)  # after the auth flow, or another origin
            if reply.status == 403:
                raise RegistryFailure("access denied", FailureKind.ACCESS_DENIED)
            return reply
        raise RegistryFailure("too many redirects", FailureKind.BAD_RESPONSE)

    def _checked_target(self, base: httpx.URL, location: str, *, what: str) -> httpx.URL:
        """Resolve a redirect/Link target: https, or http only to a host listed insecure."""
        try:
            target = base.join(location)
        except httpx.InvalidURL:
            raise RegistryFailure(f"invalid {what}", FailureKind.BAD_RESPONSE) from None
        if target.scheme == "https" and target.host:
            return target
        if target.scheme == "http" and target.host and self.settings.allows_plain_http(target.host, target.port):
            return target
        if target.scheme == "http":
            raise RegistryFailure(f"insecure {what}", FailureKind.INSECURE)
        raise RegistryFailure(f"invalid {what}", FailureKind.BAD_RESPONSE)

    def _challenged(self) -> None:
        self.stats.challenges += 1

    # -- sending: the registry's policy around one exchange

    async def _send_token_request(self, request: httpx.Request) -> TokenReply:
        request.extensions[CAP_EXTENSION] = MAX_TOKEN_BODY
        request.extensions[_TOKEN] = True
        try:
            reply = await self._send(request, auth=None, evidence=None)
        except RegistryFailure as failure:
            kind = failure.kind if failure.kind is not FailureKind.BAD_RESPONSE else FailureKind.AUTH
            raise RegistryFailure(f"token server {failure.reason}", kind) from None
        if reply.truncated:
            raise RegistryFailure("auth failed (token response too large)", FailureKind.AUTH)
        return TokenReply(reply.status, reply.body)

    async def _send(self, request: httpx.Request, *, auth: RegistryAuth | None, evidence: _Evidence | None) -> _Reply:
        policy = self._policy(request.url)

        async def exchange() -> _Reply:
            reply = await self._exchange(request, auth)
            if evidence is not None and (remaining := reply.headers.get("ratelimit-remaining")) is not None:
                evidence.rate_limit_remaining = parse_rate_limit_remaining(remaining)
            return reply

        return await policy.send(exchange, request)  # formatted only if a retry is logged

    async def _exchange(self, request: httpx.Request, auth: RegistryAuth | None) -> _Reply:
        """One HTTP exchange (with its auth round, if any), bounded by the timeout from connect to last byte."""
        cap = int(request.extensions.get(CAP_EXTENSION, MAX_ERROR_BODY))
        async with asyncio.timeout(self.settings.timeout):
            try:
                response = await self._send_with_auth(request, auth)
            except BodyTooLarge:  # a 401 body read inside the auth flow
                raise RegistryFailure("response too large", FailureKind.BAD_RESPONSE) from None
            try:
                if request.method == "HEAD":  # no body to read: closing returns the connection to the pool
                    body, truncated = b"", False
                else:
                    body, truncated = await _read_body(response, cap if response.status_code == 200 else MAX_ERROR_BODY)
            finally:
                await response.aclose()
        return _Reply(response.status_code, response.headers, body, truncated, response.request.url)

    async def _send_with_auth(self, request: httpx.Request, auth: RegistryAuth | None) -> httpx.Response:
        """Drive an `httpx.Auth` flow over the transport, as `httpx.AsyncClient.send` does, minus its extras.

        The client needs none of AsyncClient's per-request work (cookies, redirects, event hooks, mount lookup,
        logging): it cost about 50 µs of the ~400 µs of CPU per tag. Redirects are ours (`_request`).
        """
        if auth is None:
            return await self._send_one(request)
        flow = auth.async_auth_flow(request)
        try:
            request = await flow.__anext__()
            while True:
                response = await self._send_one(request)
                try:
                    request = await flow.asend(response)
                except StopAsyncIteration:
                    return response
                except BaseException:
                    await response.aclose()
                    raise
                try:
                    await response.aread()  # the challenge was answered: read it so its connection is reused
                finally:
                    await response.aclose()
        finally:
            await flow.aclose()

    async def _send_one(self, request: httpx.Request) -> httpx.Response:
        self._count(request)
        request.extensions.setdefault("timeout", self._timeout)
        routes = self._routes or self._open()
        response = await routes.transport_for(request.url).handle_async_request(request)
        response.request = request
        return response

    def _count(self, request: httpx.Request) -> None:
        """Every request that goes on the wire, auth rounds included."""
        if request.extensions.get(_TOKEN):
            self.stats.token_requests += 1
        elif request.method == "HEAD":
            self.stats.heads += 1
        else:
            self.stats.gets += 1

    def _open(self) -> Routes:
        mounts: dict[str, httpx.AsyncBaseTransport | None] = {}
        if self._transport is not None:
            self._routes = Routes(CappedTransport(self._transport), mounts)
            return self._routes
        per_host = self.settings.concurrency
        # The CA bundle (~40 ms) is loaded at the first TLS connection: a plain-http registry never loads it.
        wire = CappedTransport(Http1Transport(self._tls, per_host=per_host))  # both schemes: TLS per origin
        contexts: dict[str, Callable[[], ssl.SSLContext]] = {
            "http": lambda: ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT),  # a proxied http route: no CA bundle
            "https": self._tls,
        }
        direct: dict[str, httpx.AsyncBaseTransport] = {"http": wire, "https": wire}
        mounts.update(
            environment_mounts(
                direct,
                lambda scheme, proxy: CappedTransport(
                    proxied_transport(contexts[scheme](), per_host=per_host, proxy=proxy)
                ),
            )
        )
        self._routes = Routes(wire, mounts)
        return self._routes

    def _new_request(self, method: str, url: httpx.URL, accept: str, cap: int) -> httpx.Request:
        """A bodyless request with the headers of its kind, Host included, normalised once per Accept and host.

        Built as httpx builds a request it copies (`stream=`): it adds no headers of its own then, so the
        Host header is ours, from the URL as httpx would write it. The body is the empty `httpx.ByteStream`,
        which the wire transport reads directly (`request.read()` costs a typing-ABC isinstance per request).
        """
        netloc = url.netloc
        headers = self._header_sets.get((accept, netloc))
        if headers is None:
            headers = self._header_sets[(accept, netloc)] = httpx.Headers(
                [
                    ("Host", netloc.decode("ascii")),
                    ("User-Agent", self.settings.user_agent),
                    ("Accept", accept),
                    ("Accept-Encoding", "identity"),
                ]
            )
        return httpx.Request(method, url, headers=headers, stream=_NO_BODY, extensions={CAP_EXTENSION: cap})

    def _endpoint(self, registry: str) -> _Endpoint:
        endpoint = self._endpoints.get(registry)
        if endpoint is None:
            try:
                probe = httpx.URL(f"https://{registry}/")
            except httpx.InvalidURL:
                raise RegistryFailure(f"invalid registry host {registry}", FailureKind.BAD_RESPONSE) from None
            scheme = "http" if self.settings.allows_plain_http(probe.host, probe.port) else "https"
            base = httpx.URL(f"{scheme}://{registry}/")
            endpoint = _Endpoint(registry, f"{scheme}://{registry}", _origin(base), base)
            self._endpoints[registry] = endpoint
        return endpoint

    def _policy(self, url: httpx.URL) -> RegistryPolicy:
        host = url.netloc.decode("ascii")
        policy = self._policies.get(host)
        if policy is None:
            settings = self.settings
            policy = self._policies[host] = RegistryPolicy(
                host,
                maximum=settings.concurrency,
                max_attempts=settings.max_attempts,
                max_retry_after=settings.max_retry_after,
                backoff=self._backoff,
                clock=self._clock,
                wall_clock=self._wall_clock,
                sleep=self._sleep,
                on_retry=self._retried,
            )
        return policy

    def _retried(self) -> None:
        self.stats.retries += 1

    def _tls(self) -> ssl.SSLContext:
        if self._ssl_context is None:
            self._ssl_context = build_ssl_context(self.settings.ca_file)
        return self._ssl_context


def _parse_tag_page(body: bytes) -> list[str]:
    try:
        document = json.loads(body)
    except ValueError:
        raise RegistryFailure("malformed tag list", FailureKind.BAD_RESPONSE) from None
    tags = document.get("tags") if isinstance(document, dict) else None
    if tags is None and isinstance(document, dict):
        return []
    if not isinstance(tags, list) or not all(isinstance(tag, str) for tag in tags):
        raise RegistryFailure("malformed tag list", FailureKind.BAD_RESPONSE)
    return tags
