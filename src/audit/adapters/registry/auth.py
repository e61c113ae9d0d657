"""Registry authentication as a small state machine: challenges, token requests, a token cache, single flight.

The flow, per registry host:

1. A request goes out with whatever `cached()` returns: nothing while the host's scheme is unknown, the Basic
   header once the host asked for Basic, or a cached bearer token for (realm, service, scope, identity).
2. A 401 carries `WWW-Authenticate`. `challenged()` remembers the scheme (so later requests pre-authorize
   instead of eating a 401 each) and returns the header to retry with: Basic credentials, or a token from the
   realm (GET with Basic credentials or anonymous; POST `grant_type=refresh_token` for an identity token).
3. A 401 to a request that carried a token means the token went stale: it is dropped and fetched once more;
   the caller gives up after that. Concurrent requests for one key share ONE token request.

`RegistryAuth` is that flow for one request as an `httpx.Auth`: its `async_auth_flow` reads top to bottom
(send; on a 401 answer the challenge; send again). Network I/O for tokens is injected (`TokenTransport`), so
all of this is testable without sockets.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum
from typing import Final, NamedTuple

import httpx

from audit.adapters.registry.credentials import Credential, CredentialProvider
from audit.adapters.registry.failures import FailureKind, RegistryFailure
from audit.errors import CredentialsError

DEFAULT_TOKEN_LIFETIME: Final = 60.0  # token spec: default and minimum expires_in
RENEW_MARGIN: Final = 10.0  # renew a token this long before it expires
MIN_TOKEN_LIFETIME: Final = 10.0  # floor when issued_at makes a token look old: no fetch storm on clock skew
CREDENTIAL_TTL: Final = 300.0  # re-ask the provider after this long: helpers and ECR hand out expiring secrets
OAUTH_CLIENT_ID: Final = "digest-audit"


class Pending(Enum):
    """`cached()` could not answer without I/O: call `authorize()`."""

    PENDING = "pending"


PENDING: Final = Pending.PENDING


@dataclass(frozen=True, slots=True)
class Challenge:
    """One parsed `WWW-Authenticate` challenge; scheme lowercased, parameter names lowercased."""

    scheme: str
    params: dict[str, str] = field(default_factory=dict)


_TCHARS = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_PARAM_RE = re.compile(rf'\s*({_TCHARS})\s*=\s*(?:"((?:[^"\\]|\\.)*)"|({_TCHARS}))\s*(?:,|$)')
_SCHEME_RE = re.compile(rf"\s*({_TCHARS})(?=\s|,|$)\s*,?")
_ESCAPE_RE = re.compile(r"\\(.)")


def parse_challenges(values: Sequence[str]) -> list[Challenge]:
    """Parse `WWW-Authenticate` values (RFC 7235), e.g. `Bearer realm="…",service="…",scope="a,b"`."""
    challenges: list[Challenge] = []
    for value in values:
        current: Challenge | None = None
        pos = 0
        while pos < len(value):
            if value[pos] in " \t,":
                pos += 1
                continue
            param = _PARAM_RE.match(value, pos)
            if param is not None and current is not None:
                quoted, bare = param.group(2), param.group(3)
                current.params[param.group(1).lower()] = (
                    _ESCAPE_RE.sub(r"\1", quoted) if quoted is not None else bare or ""
                )
                pos = param.end()
                continue
            scheme = _SCHEME_RE.match(value, pos)
            if scheme is None:
                break  # unparseable rest (e.g. a token68); keep what was understood
            current = Challenge(scheme.group(1).lower())
            challenges.append(current)
            pos = scheme.end()
    return challenges


def pick_challenge(challenges: Sequence[Challenge]) -> Challenge | None:
    """Bearer over Basic (a registry offering both prefers tokens); other schemes are not supported."""
    for wanted in ("bearer", "basic"):
        for challenge in challenges:
            if challenge.scheme == wanted:
                return challenge
    return None


@dataclass(frozen=True, slots=True, repr=False)
class Token:
    """A bearer token with its lifetime on the monotonic clock."""

    header: str  # "Bearer <token>"
    renew_at: float
    expires_at: float

    def __repr__(self) -> str:
        return f"Token(<redacted>, renew_at={self.renew_at:.1f}, expires_at={self.expires_at:.1f})"


class TokenReply(NamedTuple):
    status: int
    body: bytes


# Sends one token request (with the caller's retry policy) and returns its status and body; raises
# RegistryFailure for transport trouble.
type TokenTransport = Callable[[httpx.Request], Awaitable[TokenReply]]
# Whether plain http is allowed to this host/port (the insecure registry list).
type PlainHttpPolicy = Callable[[str, int | None], bool]


_FRACTION_RE = re.compile(r"(\.\d{6})\d+")


def _parse_issued_at(value: object) -> float | None:
    if not isinstance(value, str) or not value:
        return None
    text = _FRACTION_RE.sub(r"\1", value.strip())  # RFC 3339 allows nanoseconds; datetime keeps micro
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment.timestamp() if moment.tzinfo is not None else None


def parse_token_response(body: bytes, *, now: float, wall_now: float) -> Token:
    """Read `{token | access_token, expires_in?, issued_at?}` into a Token on the monotonic clock `now`."""
    try:
        data = json.loads(body)
    except ValueError:
        raise RegistryFailure("auth failed (malformed token response)", FailureKind.AUTH) from None
    if not isinstance(data, dict):
        raise RegistryFailure("auth failed (malformed token response)", FailureKind.AUTH)
    value = data.get("token") or data.get("access_token")
    if not isinstance(value, str) or not value or any(ch in value for ch in "\r\n\x00"):
        raise RegistryFailure("auth failed (malformed token response)", FailureKind.AUTH)
    expires_in = data.get("expires_in")
    lifetime = DEFAULT_TOKEN_LIFETIME
    if isinstance(expires_in, int | float) and not isinstance(expires_in, bool):
        lifetime = max(float(expires_in), DEFAULT_TOKEN_LIFETIME)
    issued_at = _parse_issued_at(data.get("issued_at"))
    if issued_at is not None:
        # Count from issued_at only when it is plausibly in the recent past; a skewed clock (issued in the
        # future, or older than the lifetime) falls back to counting from receipt as the spec allows.
        age = wall_now - issued_at
        if 0 < age < lifetime:
            lifetime = max(lifetime - age, MIN_TOKEN_LIFETIME)
    margin = min(RENEW_MARGIN, lifetime / 4)
    return Token(header=f"Bearer {value}", renew_at=now + lifetime - margin, expires_at=now + lifetime)


def build_token_request(
    challenge_realm: str,
    *,
    service: str | None,
    scopes: Sequence[str],
    credential: Credential | None,
    user_agent: str,
    plain_http_allowed: PlainHttpPolicy,
) -> httpx.Request:
    """The token request of the distribution token spec (GET), or its OAuth2 form for identity tokens (POST).

    Refuses a plain-http realm unless its host is listed insecure: nothing, least of all credentials, is sent.
    """
    try:
        realm = httpx.URL(challenge_realm)
    except httpx.InvalidURL:
        raise RegistryFailure("auth failed (invalid token realm)", FailureKind.AUTH) from None
    if realm.scheme not in ("http", "https") or not realm.host:
        raise RegistryFailure("auth failed (invalid token realm)", FailureKind.AUTH)
    if realm.scheme == "http" and not plain_http_allowed(realm.host, realm.port):
        raise RegistryFailure("insecure token realm", FailureKind.INSECURE)
    headers = {"User-Agent": user_agent, "Accept": "application/json"}
    if credential is not None and credential.identity_token is not None:
        form = {"grant_type": "refresh_token", "refresh_token": credential.identity_token}
        form["client_id"] = OAUTH_CLIENT_ID
        if service:
            form["service"] = service
        if scopes:
            form["scope"] = " ".join(scopes)
        return httpx.Request("POST", realm, headers=headers, data=form)
    params: list[tuple[str, str]] = [(k, v) for k, v in realm.params.multi_items() if k not in ("service", "scope")]
    if service:
        params.append(("service", service))
    params.extend(("scope", scope) for scope in scopes)
    if credential is not None and (basic := credential.basic_authorization()) is not None:
        headers["Authorization"] = basic
    return httpx.Request("GET", realm.copy_with(params=params), headers=headers)


@dataclass(frozen=True, slots=True)
class BearerScheme:
    realm: str
    service: str | None


class BasicScheme(Enum):
    BASIC = "basic"


type Scheme = BearerScheme | BasicScheme


class TokenKey(NamedTuple):
    realm: str
    service: str | None
    scope: str
    identity: Credential | None


@dataclass(slots=True)
class _CredentialEntry:
    credential: Credential | None
    basic_header: str | None
    fresh_until: float
    error: CredentialsError | None = None  # the provider failed; raised again until fresh_until


class Authenticator:
    """Per-registry auth state shared by every request of one RegistryClient."""

    def __init__(
        self,
        credentials: CredentialProvider | None,
        token_transport: TokenTransport,
        *,
        plain_http_allowed: PlainHttpPolicy,
        user_agent: str,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._provider = credentials
        self._transport = token_transport
        self._plain_http_allowed = plain_http_allowed
        self._user_agent = user_agent
        self._clock = clock
        self._wall_clock = wall_clock
        self._schemes: dict[str, Scheme] = {}
        self._credentials: dict[str, _CredentialEntry] = {}
        self._credential_locks: dict[str, asyncio.Lock] = {}
        self._tokens: dict[TokenKey, Token] = {}
        self._inflight: dict[TokenKey, asyncio.Task[Token]] = {}
        self._contacted: set[str] = set()  # registries whose first request has answered how they authenticate
        self._probes: dict[str, asyncio.Future[None]] = {}  # that first request, while it is under way

    def __repr__(self) -> str:
        return f"Authenticator(registries={sorted(self._schemes)!r}, tokens={len(self._tokens)})"

    async def first_contact(self, registry: str) -> bool:
        """Let one request (the probe) learn how a new registry authenticates while the others wait.

        The others go ahead once the probe has its answer and, after a 401, has answered the challenge,
        whatever the outcome. Returns whether the caller is the probe (it must call `first_contact_done`).
        """
        if registry in self._contacted:
            return False
        probe = self._probes.get(registry)
        if probe is None:
            self._probes[registry] = asyncio.get_running_loop().create_future()
            return True
        await asyncio.wait([probe])  # unlike `await probe`, never cancels it if this waiter is cancelled
        return False

    def first_contact_done(self, registry: str) -> None:
        self._contacted.add(registry)
        probe = self._probes.pop(registry, None)
        if probe is not None:
            probe.set_result(None)

    def scheme(self, registry: str) -> Scheme | None:
        return self._schemes.get(registry)

    def cached(self, registry: str, scope: str) -> str | Pending | None:
        """The Authorization header for a request, if it is known without I/O (the hot path)."""
        scheme = self._schemes.get(registry)
        if scheme is None:
            return None
        entry = self._credentials.get(registry)
        now = self._clock()
        if entry is None or entry.fresh_until <= now or entry.error is not None:
            return PENDING
        if scheme is BasicScheme.BASIC:
            return entry.basic_header
        token = self._tokens.get(TokenKey(scheme.realm, scheme.service, scope, entry.credential))
        if token is not None and token.renew_at > now:
            return token.header
        return PENDING

    async def authorize(self, registry: str, scope: str) -> str | None:
        """The Authorization header for a request, fetching credentials or a token if needed."""
        header = self.cached(registry, scope)
        if header is not PENDING:
            return header
        scheme = self._schemes.get(registry)
        if scheme is None:
            return None
        entry = await self._credential(registry)
        if scheme is BasicScheme.BASIC:
            return entry.basic_header
        token = await self._token(TokenKey(scheme.realm, scheme.service, scope, entry.credential), ())
        return token.header

    async def challenged(self, registry: str, scope: str, www_authenticate: Sequence[str], rejected: str | None) -> str:
        """A request sent with `rejected` (None: no Authorization) got a 401: the header to retry with."""
        challenge = pick_challenge(parse_challenges(www_authenticate))
        if challenge is None:
            raise RegistryFailure("auth failed", FailureKind.AUTH)
        if challenge.scheme == "basic":
            self._schemes[registry] = BasicScheme.BASIC
            entry = await self._credential(registry)
            if entry.basic_header is not None and entry.basic_header == rejected:
                entry = await self._credential(registry, stale=entry)
            if entry.basic_header is None or entry.basic_header == rejected:
                raise RegistryFailure("auth failed", FailureKind.AUTH)
            return entry.basic_header
        realm = challenge.params.get("realm")
        if not realm:
            raise RegistryFailure("auth failed", FailureKind.AUTH)
        scheme = BearerScheme(realm, challenge.params.get("service") or None)
        self._schemes[registry] = scheme
        entry = await self._credential(registry)
        key = TokenKey(scheme.realm, scheme.service, scope, entry.credential)
        current = self._tokens.get(key)
        if current is not None:
            if current.header == rejected:
                del self._tokens[key]  # the registry refused it: never hand it out again
            elif current.renew_at > self._clock():
                return current.header  # another request already replaced the rejected token
        extra = challenge.params.get("scope")
        token = await self._token(key, (extra,) if extra and extra != scope else ())
        return token.header

    async def _credential(self, registry: str, *, stale: _CredentialEntry | None = None) -> _CredentialEntry:
        """The provider's answer for `registry`, cached; `stale` asks for a fresher answer than that one.

        A provider failure is remembered as long as an answer would be, so a broken credential helper costs
        one process per registry and run, not one per request.
        """
        lock = self._credential_locks.setdefault(registry, asyncio.Lock())
        async with lock:
            entry = self._credentials.get(registry)
            now = self._clock()
            if entry is not None and entry.fresh_until > now and (stale is None or entry is not stale):
                if entry.error is not None:
                    raise CredentialsError(entry.error.message, hint=entry.error.hint)
                return entry
            try:
                credential = await self._provider.get(registry) if self._provider is not None else None
            except CredentialsError as exc:
                self._credentials[registry] = _CredentialEntry(None, None, now + CREDENTIAL_TTL, error=exc)
                raise
            entry = _CredentialEntry(
                credential=credential,
                basic_header=credential.basic_authorization() if credential is not None else None,
                fresh_until=now + CREDENTIAL_TTL,
            )
            self._credentials[registry] = entry
            return entry

    def forget_credentials(self, registry: str) -> None:
        """Drop cached credentials (e.g. the token server refused them) so the next request re-reads them."""
        self._credentials.pop(registry, None)

    async def _token(self, key: TokenKey, extra_scopes: tuple[str, ...]) -> Token:
        token = self._tokens.get(key)
        if token is not None and token.renew_at > self._clock():
            return token
        task = self._inflight.get(key)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._fetch_token(key, extra_scopes))
            self._inflight[key] = task
            task.add_done_callback(lambda done: self._fetch_done(key, done))
        # shield: a caller timing out must not cancel the fetch the other callers are waiting for.
        return await asyncio.shield(task)

    def _fetch_done(self, key: TokenKey, task: asyncio.Task[Token]) -> None:
        if self._inflight.get(key) is task:
            del self._inflight[key]
        if not task.cancelled():
            task.exception()  # retrieved here so an unawaited failure is not reported as "never retrieved"

    async def _fetch_token(self, key: TokenKey, extra_scopes: tuple[str, ...]) -> Token:
        request = build_token_request(
            key.realm,
            service=key.service,
            scopes=(key.scope, *extra_scopes),
            credential=key.identity,
            user_agent=self._user_agent,
            plain_http_allowed=self._plain_http_allowed,
        )
        reply = await self._transport(request)
        if reply.status in (401, 403):
            for registry, entry in list(self._credentials.items()):
                if entry.credential == key.identity:
                    self.forget_credentials(registry)
            raise RegistryFailure("auth failed", FailureKind.AUTH)
        if reply.status != 200:
            raise RegistryFailure(
                f"auth failed (token server http {reply.status})",
                FailureKind.SERVER if reply.status >= 500 else FailureKind.AUTH,
            )
        token = parse_token_response(reply.body, now=self._clock(), wall_now=self._wall_clock())
        self._tokens[key] = token
        return token

    async def aclose(self) -> None:
        tasks = list(self._inflight.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class RegistryAuth(httpx.Auth):
    """The auth flow of one request to a registry's own origin (never used for another origin).

    The first request to a registry goes alone (the probe) while the others wait for it to learn how the
    registry authenticates; without that, every check queued before the first answer would eat a 401.
    A second 401 is handed back to the caller, which reports "auth failed".
    """

    def __init__(
        self, authenticator: Authenticator, registry: str, scope: str, on_challenge: Callable[[], None]
    ) -> None:
        self._authenticator = authenticator
        self._registry = registry
        self._scope = scope
        self._on_challenge = on_challenge

    async def async_auth_flow(self, request: httpx.Request) -> AsyncGenerator[httpx.Request, httpx.Response]:
        auth, registry, scope = self._authenticator, self._registry, self._scope
        probing = await auth.first_contact(registry)
        try:
            authorization = auth.cached(registry, scope)
            if authorization is PENDING:
                authorization = await auth.authorize(registry, scope)
            _authorize(request, authorization)
            response = yield request
            if response.status_code != 401:
                return
            self._on_challenge()
            challenges = response.headers.get_list("www-authenticate")
            authorization = await auth.challenged(registry, scope, challenges, authorization)
        finally:
            if probing:
                auth.first_contact_done(registry)
        _authorize(request, authorization)
        yield request


def _authorize(request: httpx.Request, authorization: str | None) -> None:
    headers = request.headers
    if authorization is not None:
        headers["Authorization"] = authorization
    elif any(name.lower() == b"authorization" for name, _ in headers.raw):
        # looked up in the raw fields: `pop` raises and catches a KeyError for the usual absent header
        del headers["Authorization"]
