"""In-memory registry and token server behind httpx.MockTransport, plus a clock that sleeps instantly."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import parse_qs

import httpx

from audit.adapters.registry import CredentialProvider, RegistryClient, RegistrySettings
from audit.models import Digest, MediaType

REGISTRY = "registry.example"
REALM = "https://auth.example/token"
SERVICE = "registry.example"

type Handler = Callable[[httpx.Request], httpx.Response | Awaitable[httpx.Response | None] | None]


class FakeClock:
    """Monotonic and wall clocks that only move when told to, or when someone sleeps."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.wall = 1_750_000_000.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return self.wall

    def advance(self, seconds: float) -> None:
        self.now += seconds
        self.wall += seconds

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.advance(seconds)
        await asyncio.sleep(0)


def image_manifest(salt: str = "", media_type: MediaType = MediaType.OCI_MANIFEST) -> bytes:
    document: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": media_type.value,
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": str(Digest.of(salt.encode())),
            "size": len(salt),
        },
        "layers": [],
        "annotations": {"salt": salt},
    }
    return json.dumps(document, indent=2).encode()


def index_manifest(children: list[dict[str, Any]], media_type: MediaType = MediaType.OCI_INDEX) -> bytes:
    return json.dumps({"schemaVersion": 2, "mediaType": media_type.value, "manifests": children}).encode()


def child(digest: Digest, os: str, arch: str, variant: str | None = None, **extra: Any) -> dict[str, Any]:
    platform = {"os": os, "architecture": arch} | ({"variant": variant} if variant else {})
    return {"mediaType": MediaType.OCI_MANIFEST.value, "digest": str(digest), "size": 500, "platform": platform} | extra


@dataclass
class Served:
    body: bytes
    media_type: str
    digest_header: str | None  # what Docker-Content-Digest says; None: no header


@dataclass
class Recorded:
    method: str
    url: httpx.URL
    headers: httpx.Headers
    body: bytes

    @property
    def authorization(self) -> str | None:
        value: str | None = self.headers.get("authorization")
        return value


@dataclass
class FakeRegistry:
    """A registry (and its token server) speaking just enough of the distribution API for the client."""

    host: str = REGISTRY
    scheme: str = "https"
    auth: Literal["none", "bearer", "basic"] = "none"
    realm: str = REALM
    service: str = SERVICE
    users: dict[str, str] = field(default_factory=dict)  # Basic logins for the registry or the token server
    refresh_tokens: set[str] = field(default_factory=set)
    anonymous_tokens: bool = True
    token_ttl: int | None = None
    rate_limit_remaining: str | None = None
    tokens_issued: list[str] = field(default_factory=list)
    valid_tokens: set[str] = field(default_factory=set)
    requests: list[Recorded] = field(default_factory=list)
    manifests: dict[tuple[str, str], Served] = field(default_factory=dict)
    tags: dict[str, list[str]] = field(default_factory=dict)
    # Consulted first, in order: a hook returning a response answers the request instead of the registry.
    hooks: list[Handler] = field(default_factory=list)
    token_delay: int = 5  # event-loop turns the token server takes, so concurrent requests really overlap
    latency: int = 2  # event-loop turns every answer takes, as over a network
    page_size_cap: int = 1000  # the most tags one page holds, whatever `n` asks for

    # -- content

    def push(
        self,
        repository: str,
        tag: str | None,
        body: bytes,
        media_type: str = MediaType.OCI_MANIFEST.value,
        *,
        digest_header: str | Literal["auto"] | None = "auto",
    ) -> Digest:
        digest = Digest.of(body)
        header = str(digest) if digest_header == "auto" else digest_header
        served = Served(body, media_type, header)
        self.manifests[(repository, str(digest))] = served
        self.tags.setdefault(repository, [])
        if tag is not None:
            self.manifests[(repository, tag)] = served
            if tag not in self.tags[repository]:
                self.tags[repository].append(tag)
        return digest

    # -- inspection

    def registry_requests(self, method: str | None = None) -> list[Recorded]:
        return [
            r
            for r in self.requests
            if r.url.host == httpx.URL(f"https://{self.host}").host
            and r.url.path.startswith("/v2/")
            and (method is None or r.method == method)
        ]

    def token_requests(self) -> list[Recorded]:
        realm = httpx.URL(self.realm)
        return [r for r in self.requests if r.url.host == realm.host and r.url.path == realm.path]

    # -- the transport

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    async def handle(self, request: httpx.Request) -> httpx.Response:
        body = await request.aread()
        self.requests.append(Recorded(request.method, request.url, request.headers.copy(), body))
        for _ in range(self.latency):
            await asyncio.sleep(0)
        for hook in self.hooks:
            answer = hook(request)
            if isinstance(answer, Awaitable):
                answer = await answer
            if answer is not None:
                return answer
        realm = httpx.URL(self.realm)
        if request.url.host == realm.host and request.url.path == realm.path:
            return await self._token(request, body)
        return self._registry(request)

    async def _token(self, request: httpx.Request, body: bytes) -> httpx.Response:
        for _ in range(self.token_delay):
            await asyncio.sleep(0)
        if request.method == "POST":
            form = {k: v[0] for k, v in parse_qs(body.decode()).items()}
            if form.get("grant_type") != "refresh_token" or form.get("refresh_token") not in self.refresh_tokens:
                return httpx.Response(401, json={"errors": [{"code": "UNAUTHORIZED"}]})
        else:
            authorization = request.headers.get("authorization")
            if authorization is not None:
                if not self._basic_ok(authorization):
                    return httpx.Response(401, json={"errors": [{"code": "UNAUTHORIZED"}]})
            elif not self.anonymous_tokens:
                return httpx.Response(401, json={"errors": [{"code": "UNAUTHORIZED"}]})
        token = f"tok-{len(self.tokens_issued) + 1}"
        self.tokens_issued.append(token)
        self.valid_tokens.add(token)
        reply: dict[str, Any] = {"token": token}
        if self.token_ttl is not None:
            reply["expires_in"] = self.token_ttl
        return httpx.Response(200, json=reply)

    def _basic_ok(self, authorization: str) -> bool:
        scheme, _, value = authorization.partition(" ")
        if scheme != "Basic":
            return False
        user, _, password = base64.b64decode(value).decode().partition(":")
        return self.users.get(user) == password and bool(user)

    def _challenge(self, scope: str) -> httpx.Response:
        if self.auth == "basic":
            header = 'Basic realm="fake registry"'
        else:
            header = f'Bearer realm="{self.realm}",service="{self.service}",scope="{scope}"'
        return httpx.Response(401, headers={"WWW-Authenticate": header}, json={"errors": [{"code": "UNAUTHORIZED"}]})

    def _registry(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if not path.startswith("/v2/"):
            return httpx.Response(404)
        name, kind, reference = self._route(path)
        authorization = request.headers.get("authorization")
        if self.auth == "bearer":
            token = authorization.removeprefix("Bearer ") if authorization else None
            if token not in self.valid_tokens:
                return self._challenge(f"repository:{name}:pull")
        elif self.auth == "basic" and (authorization is None or not self._basic_ok(authorization)):
            return self._challenge(f"repository:{name}:pull")
        headers = {}
        if self.rate_limit_remaining is not None:
            headers["RateLimit-Remaining"] = self.rate_limit_remaining
        if name not in self.tags:
            return httpx.Response(404, headers=headers, json={"errors": [{"code": "NAME_UNKNOWN"}]})
        if kind == "tags":
            return self._tag_page(request, name, headers)
        served = self.manifests.get((name, reference))
        if served is None:
            return httpx.Response(404, headers=headers, json={"errors": [{"code": "MANIFEST_UNKNOWN"}]})
        headers["Content-Type"] = served.media_type
        if served.digest_header is not None:
            headers["Docker-Content-Digest"] = served.digest_header
        if request.method == "HEAD":
            headers["Content-Length"] = str(len(served.body))
            return httpx.Response(200, headers=headers)
        return httpx.Response(200, headers=headers, content=served.body)

    @staticmethod
    def _route(path: str) -> tuple[str, str, str]:
        rest = path.removeprefix("/v2/")
        if rest.endswith("/tags/list"):
            return rest.removesuffix("/tags/list"), "tags", ""
        name, _, reference = rest.rpartition("/manifests/")
        return name, "manifests", reference

    def _tag_page(self, request: httpx.Request, name: str, headers: dict[str, str]) -> httpx.Response:
        tags = sorted(self.tags[name])
        size = min(int(request.url.params.get("n", "1000")), self.page_size_cap)
        last = request.url.params.get("last")
        if last is not None:
            tags = [t for t in tags if t > last]
        page = tags[:size]
        if len(tags) > size:
            headers["Link"] = f'</v2/{name}/tags/list?n={size}&last={page[-1]}>; rel="next"'
        return httpx.Response(200, headers=headers, json={"name": name, "tags": page})


def make_client(
    registry: FakeRegistry | httpx.MockTransport,
    clock: FakeClock | None = None,
    credentials: CredentialProvider | None = None,
    **settings: Any,
) -> RegistryClient:
    clock = clock or FakeClock()
    transport = registry.transport() if isinstance(registry, FakeRegistry) else registry
    return RegistryClient(
        RegistrySettings(**settings),
        credentials,
        transport=transport,
        clock=clock.monotonic,
        wall_clock=clock.time,
        sleep=clock.sleep,
        jitter=lambda: 0.5,
    )
