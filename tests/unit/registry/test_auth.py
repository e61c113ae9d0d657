"""The auth state machine without any transport: challenge parsing, token replies, cache, single flight."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from audit.adapters.registry import Credential, StaticCredentials
from audit.adapters.registry.auth import (
    PENDING,
    Authenticator,
    BasicScheme,
    BearerScheme,
    Challenge,
    RegistryAuth,
    TokenReply,
    build_token_request,
    parse_challenges,
    parse_token_response,
    pick_challenge,
)
from audit.adapters.registry.failures import RegistryFailure

from .fakes import FakeClock

REALM = "https://auth.example/token"
CHALLENGE = [f'Bearer realm="{REALM}",service="reg",scope="repository:team/app:pull"']
SCOPE = "repository:team/app:pull"


# -- WWW-Authenticate


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (
            'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
            'scope="repository:library/nginx:pull"',
            [
                Challenge(
                    "bearer",
                    {
                        "realm": "https://auth.docker.io/token",
                        "service": "registry.docker.io",
                        "scope": "repository:library/nginx:pull",
                    },
                )
            ],
        ),
        (
            'bearer Realm="r", scope="repository:a/b:pull,push", error="insufficient_scope"',
            [Challenge("bearer", {"realm": "r", "scope": "repository:a/b:pull,push", "error": "insufficient_scope"})],
        ),
        ('Basic realm="Registry Realm"', [Challenge("basic", {"realm": "Registry Realm"})]),
        ("Basic", [Challenge("basic", {})]),
        (
            'Basic realm="a", Bearer realm="b",service=reg',
            [Challenge("basic", {"realm": "a"}), Challenge("bearer", {"realm": "b", "service": "reg"})],
        ),
        (r'Bearer realm="quote\"inside"', [Challenge("bearer", {"realm": 'quote"inside'})]),
        ("", []),
    ],
)
def test_parse_challenges(header: str, expected: list[Challenge]) -> None:
    assert parse_challenges([header]) == expected


def test_pick_challenge_prefers_bearer_and_ignores_unknown_schemes() -> None:
    challenges = parse_challenges(["Negotiate abc", 'Basic realm="a"', 'Bearer realm="b"'])
    picked = pick_challenge(challenges)
    assert picked is not None and picked.scheme == "bearer"
    assert pick_challenge(parse_challenges(["Negotiate"])) is None


# -- token replies


def reply(**fields: object) -> bytes:
    return json.dumps(fields).encode()


def test_token_default_lifetime_is_60_seconds() -> None:
    token = parse_token_response(reply(token="t"), now=100.0, wall_now=0.0)
    assert token.header == "Bearer t"
    assert token.expires_at == 160.0
    assert token.renew_at == 150.0


@pytest.mark.parametrize(("expires_in", "lifetime"), [(1, 60.0), (59, 60.0), (300, 300.0), ("300", 60.0), (True, 60.0)])
def test_token_expires_in_never_below_60(expires_in: object, lifetime: float) -> None:
    token = parse_token_response(reply(token="t", expires_in=expires_in), now=0.0, wall_now=0.0)
    assert token.expires_at == lifetime


def test_access_token_is_accepted() -> None:
    assert parse_token_response(reply(access_token="a"), now=0, wall_now=0).header == "Bearer a"


def test_issued_at_shortens_the_lifetime_of_an_old_token() -> None:
    wall = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
    issued = (wall - timedelta(seconds=100)).isoformat().replace("+00:00", ".123456789Z")
    token = parse_token_response(reply(token="t", expires_in=300, issued_at=issued), now=0.0, wall_now=wall.timestamp())
    assert token.expires_at == pytest.approx(200.0, abs=0.2)


@pytest.mark.parametrize("offset", [3600, -3600])
def test_implausible_issued_at_is_ignored(offset: int) -> None:
    wall = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
    issued = (wall + timedelta(seconds=offset)).isoformat()
    token = parse_token_response(reply(token="t", expires_in=300, issued_at=issued), now=0.0, wall_now=wall.timestamp())
    assert token.expires_at == 300.0


@pytest.mark.parametrize(
    "body", [b"<html>", b"[]", reply(expires_in=60), reply(token=""), reply(token="a\r\nX-Injected: 1")]
)
def test_malformed_token_reply(body: bytes) -> None:
    with pytest.raises(RegistryFailure) as caught:
        parse_token_response(body, now=0, wall_now=0)
    assert caught.value.reason == "auth failed (malformed token response)"


# -- token requests


def never_plain(host: str, port: int | None) -> bool:
    return False


def test_token_request_get_with_basic_credentials() -> None:
    request = build_token_request(
        f"{REALM}?account=ci",
        service="reg",
        scopes=[SCOPE, "repository:team/base:pull"],
        credential=Credential.basic("alice", "pw"),
        user_agent="ua",
        plain_http_allowed=never_plain,
    )
    assert request.method == "GET"
    assert request.url.params.get_list("scope") == [SCOPE, "repository:team/base:pull"]
    assert request.url.params["service"] == "reg"
    assert request.url.params["account"] == "ci"
    assert request.headers["authorization"].startswith("Basic ")


def test_token_request_anonymous_has_no_authorization() -> None:
    request = build_token_request(
        REALM, service=None, scopes=[SCOPE], credential=None, user_agent="ua", plain_http_allowed=never_plain
    )
    assert "authorization" not in request.headers
    assert "service" not in request.url.params


def test_token_request_for_identity_token_is_an_oauth2_post() -> None:
    request = build_token_request(
        REALM,
        service="reg",
        scopes=[SCOPE, "repository:x:pull"],
        credential=Credential.token("idt"),
        user_agent="ua",
        plain_http_allowed=never_plain,
    )
    assert request.method == "POST"
    assert "authorization" not in request.headers
    assert (
        request.read() == b"grant_type=refresh_token&refresh_token=idt&client_id=digest-audit&service=reg"
        b"&scope=repository%3Ateam%2Fapp%3Apull+repository%3Ax%3Apull"
    )


def test_plain_http_realm_is_refused_unless_allowed() -> None:
    with pytest.raises(RegistryFailure) as caught:
        build_token_request(
            "http://auth.example/token",
            service="reg",
            scopes=[SCOPE],
            credential=Credential.basic("a", "b"),
            user_agent="ua",
            plain_http_allowed=never_plain,
        )
    assert caught.value.reason == "insecure token realm"
    request = build_token_request(
        "http://auth.example:8080/token",
        service="reg",
        scopes=[SCOPE],
        credential=None,
        user_agent="ua",
        plain_http_allowed=lambda host, port: (host, port) == ("auth.example", 8080),
    )
    assert request.url.scheme == "http"


@pytest.mark.parametrize("realm", ["ftp://auth.example/token", "/relative/token", "https://"])
def test_unusable_realm(realm: str) -> None:
    with pytest.raises(RegistryFailure) as caught:
        build_token_request(
            realm, service="reg", scopes=[SCOPE], credential=None, user_agent="ua", plain_http_allowed=never_plain
        )
    assert caught.value.reason == "auth failed (invalid token realm)"


# -- the Authenticator


class FakeTokenServer:
    def __init__(self, status: int = 200) -> None:
        self.requests: list[httpx.Request] = []
        self.status = status

    async def __call__(self, request: httpx.Request) -> TokenReply:
        self.requests.append(request)
        for _ in range(3):
            await asyncio.sleep(0)
        return TokenReply(self.status, reply(token=f"t{len(self.requests)}", expires_in=120))


class CountingProvider:
    def __init__(self, credential: Credential | None) -> None:
        self.credential = credential
        self.calls = 0

    async def get(self, registry: str) -> Credential | None:
        self.calls += 1
        return self.credential


def authenticator(server: FakeTokenServer, clock: FakeClock, provider: CountingProvider | None = None) -> Authenticator:
    return Authenticator(
        provider,
        server,
        plain_http_allowed=never_plain,
        user_agent="ua",
        clock=clock.monotonic,
        wall_clock=clock.time,
    )


async def test_unknown_registry_sends_nothing() -> None:
    auth = authenticator(FakeTokenServer(), FakeClock())
    assert auth.cached("reg", SCOPE) is None
    assert await auth.authorize("reg", SCOPE) is None


@pytest.mark.parametrize("carried", [None, "Basic c3RhbGU6c3RhbGU=", "Bearer stale"])
async def test_the_flow_sends_what_the_registry_needs_whatever_the_request_carried(carried: str | None) -> None:
    """No scheme known: no Authorization (one the request carried is dropped); a known token: that one."""
    auth = authenticator(FakeTokenServer(), FakeClock())
    auth.first_contact_done("reg")
    headers = {"Accept": "*/*"} | ({"Authorization": carried} if carried else {})
    anonymous = httpx.Request("HEAD", "https://reg/v2/team/app/manifests/1", headers=headers)
    flow = RegistryAuth(auth, "reg", SCOPE, lambda: None).async_auth_flow(anonymous)
    sent = await anext(flow)
    assert "authorization" not in sent.headers
    assert sent.headers["accept"] == "*/*"
    await flow.aclose()

    await auth.challenged("reg", SCOPE, CHALLENGE, None)
    known = httpx.Request("HEAD", "https://reg/v2/team/app/manifests/1", headers=headers)
    flow = RegistryAuth(auth, "reg", SCOPE, lambda: None).async_auth_flow(known)
    sent = await anext(flow)
    assert sent.headers.get_list("authorization") == ["Bearer t1"]
    await flow.aclose()


async def test_challenge_then_cached_fast_path_then_expiry() -> None:
    clock = FakeClock()
    server = FakeTokenServer()
    auth = authenticator(server, clock)
    assert await auth.challenged("reg", SCOPE, CHALLENGE, None) == "Bearer t1"
    assert auth.scheme("reg") == BearerScheme(REALM, "reg")
    assert auth.cached("reg", SCOPE) == "Bearer t1"
    assert auth.cached("reg", "repository:other:pull") is PENDING
    clock.advance(111)  # 120 s lifetime, renewed 10 s early
    assert auth.cached("reg", SCOPE) is PENDING
    assert await auth.authorize("reg", SCOPE) == "Bearer t2"
    assert len(server.requests) == 2


async def test_tokens_are_cached_per_scope_and_identity() -> None:
    clock = FakeClock()
    server = FakeTokenServer()
    auth = authenticator(server, clock)
    await auth.challenged("reg", SCOPE, CHALLENGE, None)
    await auth.authorize("reg", "repository:other:pull")
    await auth.authorize("reg", SCOPE)
    assert [r.url.params["scope"] for r in server.requests] == [SCOPE, "repository:other:pull"]


async def test_single_flight_for_one_key() -> None:
    server = FakeTokenServer()
    auth = authenticator(server, FakeClock())
    headers = await asyncio.gather(*(auth.challenged("reg", SCOPE, CHALLENGE, None) for _ in range(20)))
    assert set(headers) == {"Bearer t1"}
    assert len(server.requests) == 1


async def test_a_cancelled_waiter_does_not_cancel_the_shared_fetch() -> None:
    server = FakeTokenServer()
    auth = authenticator(server, FakeClock())
    first = asyncio.create_task(auth.challenged("reg", SCOPE, CHALLENGE, None))
    second = asyncio.create_task(auth.challenged("reg", SCOPE, CHALLENGE, None))
    await asyncio.sleep(0)
    first.cancel()
    assert await second == "Bearer t1"
    assert len(server.requests) == 1


async def test_rejected_token_is_replaced_once_and_late_rejections_reuse_the_new_one() -> None:
    server = FakeTokenServer()
    auth = authenticator(server, FakeClock())
    old = await auth.challenged("reg", SCOPE, CHALLENGE, None)
    new = await auth.challenged("reg", SCOPE, CHALLENGE, old)
    assert new == "Bearer t2"
    # Another request that was still carrying the old token gets the new one without a fetch.
    assert await auth.challenged("reg", SCOPE, CHALLENGE, old) == new
    assert len(server.requests) == 2


async def test_basic_scheme_uses_the_provider_once() -> None:
    provider = CountingProvider(Credential.basic("alice", "pw"))
    clock = FakeClock()
    auth = authenticator(FakeTokenServer(), clock, provider)
    header = await auth.challenged("reg", SCOPE, ['Basic realm="x"'], None)
    assert header.startswith("Basic ")
    assert auth.scheme("reg") is BasicScheme.BASIC
    assert auth.cached("reg", "repository:any:pull") == header
    assert provider.calls == 1
    clock.advance(301)  # credentials are re-read now and then: helpers and ECR hand out expiring secrets
    assert auth.cached("reg", SCOPE) is PENDING
    assert await auth.authorize("reg", SCOPE) == header
    assert provider.calls == 2


async def test_token_server_refusal_forgets_the_credentials() -> None:
    provider = CountingProvider(Credential.basic("alice", "pw"))
    server = FakeTokenServer(status=401)
    auth = authenticator(server, FakeClock(), provider)
    with pytest.raises(RegistryFailure) as caught:
        await auth.challenged("reg", SCOPE, CHALLENGE, None)
    assert caught.value.reason == "auth failed"
    server.status = 200
    assert await auth.authorize("reg", SCOPE) == "Bearer t2"
    assert provider.calls == 2


async def test_credentials_of_one_registry_are_not_used_for_another() -> None:
    server = FakeTokenServer()
    provider = StaticCredentials({"reg": Credential.basic("alice", "pw")})
    auth = Authenticator(provider, server, plain_http_allowed=never_plain, user_agent="ua")
    await auth.challenged("reg", SCOPE, CHALLENGE, None)
    await auth.challenged("other", SCOPE, CHALLENGE, None)
    assert "authorization" in server.requests[0].headers
    assert "authorization" not in server.requests[1].headers
