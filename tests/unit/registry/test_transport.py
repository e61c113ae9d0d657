"""Redirects, plain-http rules, retries, Retry-After, timeouts and connection failures."""

from __future__ import annotations

import asyncio
import ssl
from email.utils import formatdate

import httpx
import pytest

from audit.adapters.registry import Credential, RegistrySettings, StaticCredentials
from audit.models import Digest, ImageRef, LiveStatus, MediaType

from .fakes import REGISTRY, FakeClock, FakeRegistry, image_manifest, make_client

REPO = "team/app"
BODY = image_manifest("a")
DIGEST = Digest.of(BODY)


def ref(tag: str = "1.0", registry: str = REGISTRY) -> ImageRef:
    return ImageRef.parse(f"{registry}/{REPO}:{tag}")


def manifest_response() -> httpx.Response:
    headers = {"Content-Type": MediaType.OCI_MANIFEST.value, "Docker-Content-Digest": str(DIGEST)}
    return httpx.Response(200, headers=headers, content=BODY)


# -- redirects


def redirecting_registry(target: str, auth: str = "bearer") -> FakeRegistry:
    registry = FakeRegistry(auth=auth, users={"alice": "pw"})  # type: ignore[arg-type]
    registry.push(REPO, "1.0", BODY)
    target_url = httpx.URL(target)

    def redirect(request: httpx.Request) -> httpx.Response | None:
        url = request.url
        if (url.scheme, url.host, url.port, url.path) == (
            target_url.scheme,
            target_url.host,
            target_url.port,
            target_url.path,
        ):
            return manifest_response()
        authorized = bool(request.headers.get("authorization"))
        if authorized and url.host == REGISTRY and url.port is None and url.path.endswith("/manifests/1.0"):
            return httpx.Response(307, headers={"Location": target})
        return None

    registry.hooks.append(redirect)
    return registry


@pytest.mark.parametrize(
    ("target", "insecure"),
    [
        ("https://registry.example:8443/storage/manifest", frozenset[str]()),
        ("http://registry.example:8080/storage/manifest", frozenset({"registry.example:8080"})),
        ("https://cdn.example/storage/manifest", frozenset[str]()),
        ("https://REGISTRY.example.:443/x", frozenset[str]()),  # trailing dot: another host name
    ],
)
@pytest.mark.parametrize("auth", ["bearer", "basic"])
async def test_redirect_to_another_origin_drops_authorization(target: str, insecure: frozenset[str], auth: str) -> None:
    registry = redirecting_registry(target, auth)
    credentials = StaticCredentials({REGISTRY: Credential.basic("alice", "pw")})
    async with make_client(registry, credentials=credentials, insecure_registries=insecure) as client:
        observation = await client.observe(ref())
    assert observation.status is LiveStatus.FOUND, observation.reason
    assert observation.live_digest == DIGEST
    redirected = [r for r in registry.requests if r.url.path == httpx.URL(target).path]
    assert redirected, "the redirect was not followed"
    assert all(r.authorization is None for r in redirected)
    assert client.stats.redirects == 1


async def test_redirect_within_the_same_origin_keeps_authorization() -> None:
    registry = redirecting_registry("https://registry.example:443/storage/manifest")
    async with make_client(registry) as client:
        observation = await client.observe(ref())
    assert observation.status is LiveStatus.FOUND
    [redirected] = [r for r in registry.requests if r.url.path == "/storage/manifest"]
    assert redirected.authorization == "Bearer tok-1"


async def test_relative_redirect_keeps_authorization() -> None:
    registry = redirecting_registry("/storage/manifest")
    registry.hooks.insert(0, lambda request: manifest_response() if request.url.path == "/storage/manifest" else None)
    async with make_client(registry) as client:
        observation = await client.observe(ref())
    assert observation.status is LiveStatus.FOUND
    [redirected] = [r for r in registry.requests if r.url.path == "/storage/manifest"]
    assert redirected.url.host == REGISTRY
    assert redirected.authorization == "Bearer tok-1"


async def test_redirect_to_plain_http_of_an_unlisted_host_is_refused() -> None:
    registry = redirecting_registry("http://registry.example/storage/manifest")
    async with make_client(registry) as client:
        observation = await client.observe(ref())
    assert observation.status is LiveStatus.UNVERIFIABLE
    assert observation.reason == "insecure redirect"
    assert not [r for r in registry.requests if r.url.scheme == "http"]


async def test_401_from_another_origin_is_auth_failed_without_sending_credentials() -> None:
    registry = redirecting_registry("https://cdn.example/storage/manifest")
    registry.hooks.insert(0, lambda request: httpx.Response(401) if request.url.host == "cdn.example" else None)
    async with make_client(registry) as client:
        observation = await client.observe(ref())
    assert observation.reason == "auth failed"
    assert all(r.authorization is None for r in registry.requests if r.url.host == "cdn.example")


async def test_redirect_loop_stops() -> None:
    registry = FakeRegistry()
    registry.hooks.append(lambda request: httpx.Response(302, headers={"Location": str(request.url)}))
    async with make_client(registry) as client:
        observation = await client.observe(ref())
    assert observation.reason == "too many redirects"
    assert len(registry.requests) == 6


# -- plain http


@pytest.mark.parametrize(
    ("registry_host", "insecure", "scheme"),
    [
        ("registry.example", {"registry.example"}, "http"),
        ("registry.example:5000", {"registry.example"}, "http"),
        ("registry.example:5000", {"registry.example:5000"}, "http"),
        ("registry.example:5001", {"registry.example:5000"}, "https"),
        ("registry.example", {"registry.example:5000"}, "https"),
        ("127.0.0.1:5000", {"127.0.0.1:5000"}, "http"),
        ("registry.example", set(), "https"),
    ],
)
async def test_plain_http_only_for_listed_hosts(registry_host: str, insecure: set[str], scheme: str) -> None:
    seen: list[httpx.URL] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url)
        return manifest_response()

    async with make_client(httpx.MockTransport(handler), insecure_registries=frozenset(insecure)) as client:
        observation = await client.observe(ref(registry=registry_host))
    assert observation.status is LiveStatus.FOUND
    assert [url.scheme for url in seen] == [scheme]


def test_insecure_entries_are_case_insensitive() -> None:
    settings = RegistrySettings(insecure_registries=frozenset({"Registry.Example:5000", "[::1]"}))
    assert settings.allows_plain_http("registry.example", 5000)
    assert not settings.allows_plain_http("registry.example", 5001)
    assert settings.allows_plain_http("::1", 8080)


# -- retries


def failing(status: int, times: int, headers: dict[str, str] | None = None) -> FakeRegistry:
    registry = FakeRegistry()
    registry.push(REPO, "1.0", BODY)
    left = [times]

    def fail(request: httpx.Request) -> httpx.Response | None:
        if left[0] > 0:
            left[0] -= 1
            return httpx.Response(status, headers=headers or {})
        return None

    registry.hooks.append(fail)
    return registry


@pytest.mark.parametrize("status", [500, 502, 503, 504])
async def test_server_errors_are_retried_then_unverifiable(status: int) -> None:
    clock = FakeClock()
    registry = failing(status, 10)
    async with make_client(registry, clock) as client:
        observation = await client.observe(ref())
    assert observation.status is LiveStatus.UNVERIFIABLE
    assert observation.reason == f"http {status}"
    assert client.stats.heads == 3
    assert client.stats.retries == 2
    assert clock.sleeps == pytest.approx([0.2, 0.4])  # exponential back-off (jitter pinned to its middle)


async def test_transient_server_error_is_recovered() -> None:
    registry = failing(502, 1)
    async with make_client(registry) as client:
        observation = await client.observe(ref())
    assert observation.status is LiveStatus.FOUND
    assert client.stats.retries == 1


async def test_max_attempts_is_honoured() -> None:
    registry = failing(503, 10)
    async with make_client(registry, max_attempts=5) as client:
        observation = await client.observe(ref())
    assert observation.reason == "http 503"
    assert client.stats.heads == 5


async def test_429_waits_retry_after_seconds() -> None:
    clock = FakeClock()
    registry = failing(429, 1, {"Retry-After": "7", "RateLimit-Remaining": "0;w=21600"})
    async with make_client(registry, clock) as client:
        observation = await client.observe(ref())
    assert observation.status is LiveStatus.FOUND
    assert clock.sleeps == [7.0]


async def test_429_waits_until_an_http_date() -> None:
    clock = FakeClock()
    registry = failing(429, 1, {"Retry-After": formatdate(clock.wall + 30, usegmt=True)})
    async with make_client(registry, clock) as client:
        observation = await client.observe(ref())
    assert observation.status is LiveStatus.FOUND
    assert clock.sleeps == [pytest.approx(30.0, abs=1.0)]


async def test_429_with_too_long_retry_after_is_rate_limited_at_once() -> None:
    clock = FakeClock()
    registry = failing(429, 10, {"Retry-After": "3600", "RateLimit-Remaining": "0;w=21600"})
    async with make_client(registry, clock) as client:
        observation = await client.observe(ref())
        later = await client.observe(ref("2.0"))
    assert observation.status is LiveStatus.UNVERIFIABLE
    assert observation.reason == "rate limited"
    assert observation.rate_limit_remaining == 0
    assert clock.sleeps == []
    # The registry said "not for an hour": the next check does not even ask.
    assert later.reason == "rate limited"
    assert len(registry.requests) == 1


async def test_429_without_retry_after_backs_off_then_rate_limited() -> None:
    clock = FakeClock()
    registry = failing(429, 10)
    async with make_client(registry, clock) as client:
        observation = await client.observe(ref())
    assert observation.reason == "rate limited"
    assert client.stats.heads == 3
    assert clock.sleeps == pytest.approx([0.2, 0.4])


async def test_429_pauses_every_request_to_that_registry() -> None:
    clock = FakeClock()
    registry = failing(429, 1, {"Retry-After": "10"})
    registry.push(REPO, "2.0", image_manifest("b"))
    async with make_client(registry, clock, max_attempts=1) as client:
        first = await client.observe(ref())
        assert first.reason == "rate limited"
        second = await client.observe(ref("2.0"))
    assert second.status is LiveStatus.FOUND
    assert clock.sleeps == [10.0]  # the second check waited out the first one's Retry-After
    assert len(registry.requests) == 2


async def test_429_pause_does_not_hold_back_other_registries() -> None:
    clock = FakeClock()
    registry = failing(429, 1, {"Retry-After": "10"})

    def other(request: httpx.Request) -> httpx.Response | None:
        return manifest_response() if request.url.host == "other.example" else None

    registry.hooks.insert(0, other)
    async with make_client(registry, clock, max_attempts=1) as client:
        assert (await client.observe(ref())).reason == "rate limited"
        observation = await client.observe(ref(registry="other.example"))
    assert observation.status is LiveStatus.FOUND
    assert clock.sleeps == []


# -- transport errors


def raising(exc: Exception) -> FakeRegistry:
    registry = FakeRegistry()

    def fail(request: httpx.Request) -> httpx.Response:
        raise exc

    registry.hooks.append(fail)
    return registry


def chained(outer: Exception, cause: BaseException) -> Exception:
    outer.__cause__ = cause
    return outer


@pytest.mark.parametrize(
    ("exc", "reason"),
    [
        (httpx.ReadTimeout("read timed out"), "timeout"),
        (httpx.ConnectTimeout("connect timed out"), "timeout"),
        (
            chained(httpx.ConnectError("All connection attempts failed"), ConnectionRefusedError(111, "refused")),
            "connection refused",
        ),
        (httpx.RemoteProtocolError("Server disconnected without sending a response."), "connection reset"),
        (httpx.ReadError("connection reset by peer"), "connection reset"),
        (httpx.ConnectError("something else"), "connection failed"),
    ],
)
async def test_transient_transport_errors_are_retried_then_unverifiable(exc: Exception, reason: str) -> None:
    registry = raising(exc)
    async with make_client(registry) as client:
        observation = await client.observe(ref())
    assert observation.status is LiveStatus.UNVERIFIABLE
    assert observation.reason == reason
    assert len(registry.requests) == 3


async def test_certificate_failure_is_not_retried() -> None:
    cause = ssl.SSLCertVerificationError(1, "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed")
    registry = raising(chained(httpx.ConnectError("[SSL: CERTIFICATE_VERIFY_FAILED]"), cause))
    async with make_client(registry) as client:
        observation = await client.observe(ref())
    assert observation.reason == "tls: certificate verify failed"
    assert len(registry.requests) == 1


async def test_slow_registry_hits_the_per_request_timeout() -> None:
    registry = FakeRegistry()

    async def stall(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(30)
        return manifest_response()

    registry.hooks.append(stall)
    async with make_client(registry, timeout=0.01, max_attempts=2) as client:
        observation = await client.observe(ref())
    assert observation.reason == "timeout"
    assert len(registry.requests) == 2


# -- cookies


async def test_cookies_a_registry_sets_are_never_sent_back() -> None:
    """The registry API needs no cookies: the client keeps none (a speed choice, see client.py) and sends none."""
    registry = FakeRegistry()
    registry.push(REPO, "1.0", BODY)
    registry.push(REPO, "2.0", image_manifest("b"))

    def set_cookie(request: httpx.Request) -> httpx.Response | None:
        if request.url.path.endswith("/manifests/1.0"):
            served = manifest_response()
            served.headers["Set-Cookie"] = "session=tracked; Path=/"
            return served
        return None

    registry.hooks.append(set_cookie)
    async with make_client(registry) as client:
        first = await client.observe(ref("1.0"))
        second = await client.observe(ref("2.0"))
    assert (first.status, second.status) == (LiveStatus.FOUND, LiveStatus.FOUND)
    assert [r.url.path.rsplit("/", 1)[-1] for r in registry.requests] == ["1.0", "2.0"]
    assert all("cookie" not in r.headers for r in registry.requests)
