"""The auth flows end to end through the client: challenges, tokens, caching, single flight, refusals."""

from __future__ import annotations

import asyncio
import base64
import logging
from urllib.parse import parse_qs

import httpx
import pytest

from audit.adapters.registry import Credential, StaticCredentials
from audit.errors import CredentialsError
from audit.models import Digest, ImageRef, LiveStatus
from audit.ports import Registry

from .fakes import REALM, REGISTRY, SERVICE, FakeClock, FakeRegistry, image_manifest, make_client

REPO = "team/app"
SECRET = "s3cret-p4ss"
IDENTITY = "refresh-abc-123"


def ref(repository: str = REPO, tag: str = "1.0") -> ImageRef:
    return ImageRef.parse(f"{REGISTRY}/{repository}:{tag}")


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def alice() -> StaticCredentials:
    return StaticCredentials({REGISTRY: Credential.basic("alice", SECRET)})


def bearer_registry(**kwargs: object) -> tuple[FakeRegistry, Digest]:
    registry = FakeRegistry(auth="bearer", **kwargs)  # type: ignore[arg-type]
    digest = registry.push(REPO, "1.0", image_manifest("a"))
    registry.push("team/other", "1.0", image_manifest("b"))
    return registry, digest


async def test_anonymous_registry_gets_no_authorization() -> None:
    registry = FakeRegistry()
    registry.push(REPO, "1.0", image_manifest("a"))
    async with make_client(registry, credentials=alice()) as client:
        port: Registry = client  # the service's port, checked by mypy
        observation = await port.observe(ref())
    assert observation.status is LiveStatus.FOUND
    assert all(r.authorization is None for r in registry.requests)
    assert registry.token_requests() == []


async def test_bearer_challenge_anonymous_token() -> None:
    registry, digest = bearer_registry()
    async with make_client(registry) as client:
        observation = await client.observe(ref())
    assert observation.status is LiveStatus.FOUND
    assert observation.live_digest == digest
    [token_request] = registry.token_requests()
    assert token_request.method == "GET"
    assert token_request.authorization is None
    assert token_request.url.params.get_list("service") == [SERVICE]
    assert token_request.url.params.get_list("scope") == [f"repository:{REPO}:pull"]
    heads = registry.registry_requests("HEAD")
    assert [h.authorization for h in heads] == [None, "Bearer tok-1"]
    assert client.stats.challenges == 1
    assert client.stats.token_requests == 1


async def test_bearer_challenge_with_basic_credentials_sends_them_to_the_realm_only() -> None:
    registry, _ = bearer_registry(users={"alice": SECRET}, anonymous_tokens=False)
    async with make_client(registry, credentials=alice()) as client:
        observation = await client.observe(ref())
    assert observation.status is LiveStatus.FOUND
    [token_request] = registry.token_requests()
    assert token_request.authorization == basic("alice", SECRET)
    assert all(not (r.authorization or "").startswith("Basic") for r in registry.registry_requests())


async def test_identity_token_is_exchanged_with_a_refresh_token_post() -> None:
    registry, _ = bearer_registry(refresh_tokens={IDENTITY}, anonymous_tokens=False)
    credentials = StaticCredentials({REGISTRY: Credential.token(IDENTITY)})
    async with make_client(registry, credentials=credentials) as client:
        observation = await client.observe(ref())
    assert observation.status is LiveStatus.FOUND
    [token_request] = registry.token_requests()
    assert token_request.method == "POST"
    assert token_request.authorization is None
    assert token_request.headers["content-type"] == "application/x-www-form-urlencoded"
    form = {k: v[0] for k, v in parse_qs(token_request.body.decode()).items()}
    assert form == {
        "grant_type": "refresh_token",
        "refresh_token": IDENTITY,
        "client_id": "digest-audit",
        "service": SERVICE,
        "scope": f"repository:{REPO}:pull",
    }
    assert IDENTITY not in str(token_request.url)


async def test_wrong_credentials_at_the_token_server_fail_without_leaking_them() -> None:
    registry, _ = bearer_registry(users={"alice": "the real one"})
    async with make_client(registry, credentials=alice()) as client:
        observation = await client.observe(ref())
    assert observation.status is LiveStatus.UNVERIFIABLE
    assert observation.reason == "auth failed"
    assert SECRET not in repr(observation)
    assert SECRET not in repr(client)


async def test_basic_challenge_sends_credentials_and_remembers_the_scheme() -> None:
    registry = FakeRegistry(auth="basic", users={"alice": SECRET})
    registry.push(REPO, "1.0", image_manifest("a"))
    registry.push("team/other", "1.0", image_manifest("b"))
    async with make_client(registry, credentials=alice()) as client:
        first = await client.observe(ref())
        second = await client.observe(ref("team/other"))
    assert first.status is LiveStatus.FOUND
    assert second.status is LiveStatus.FOUND
    assert [r.authorization for r in registry.registry_requests()] == [
        None,
        basic("alice", SECRET),
        basic("alice", SECRET),
    ]
    assert client.stats.challenges == 1
    assert registry.token_requests() == []


async def test_basic_challenge_without_credentials_is_auth_failed() -> None:
    registry = FakeRegistry(auth="basic")
    registry.push(REPO, "1.0", image_manifest("a"))
    async with make_client(registry) as client:
        observation = await client.observe(ref())
    assert observation.status is LiveStatus.UNVERIFIABLE
    assert observation.reason == "auth failed"


async def test_basic_credentials_rejected_are_reread_once_then_auth_failed() -> None:
    registry = FakeRegistry(auth="basic", users={"alice": "changed"})
    registry.push(REPO, "1.0", image_manifest("a"))
    async with make_client(registry, credentials=alice()) as client:
        observation = await client.observe(ref())
    assert observation.reason == "auth failed"
    # No auth, then alice's credentials once: a rejected credential is not simply sent again.
    assert [r.authorization for r in registry.registry_requests()] == [None, basic("alice", SECRET)]


async def test_bearer_scheme_is_remembered_so_a_new_repository_skips_the_401() -> None:
    registry, _ = bearer_registry()
    async with make_client(registry) as client:
        await client.observe(ref())
        observation = await client.observe(ref("team/other"))
    assert observation.status is LiveStatus.FOUND
    assert client.stats.challenges == 1
    assert [r.url.params["scope"] for r in registry.token_requests()] == [
        f"repository:{REPO}:pull",
        "repository:team/other:pull",
    ]
    assert registry.registry_requests()[-1].authorization == "Bearer tok-2"


async def test_token_is_cached_until_it_expires() -> None:
    clock = FakeClock()
    registry, _ = bearer_registry()
    async with make_client(registry, clock) as client:
        await client.observe(ref())
        clock.advance(45)
        await client.observe(ref())
        assert len(registry.token_requests()) == 1
        clock.advance(10)  # 55 s: inside the renewal margin of the default 60 s lifetime
        observation = await client.observe(ref())
    assert observation.status is LiveStatus.FOUND
    assert len(registry.token_requests()) == 2
    assert client.stats.challenges == 1  # renewal happened before the request, not after a 401


async def test_short_expires_in_counts_as_60_seconds() -> None:
    clock = FakeClock()
    registry, _ = bearer_registry(token_ttl=5)
    async with make_client(registry, clock) as client:
        await client.observe(ref())
        clock.advance(30)
        await client.observe(ref())
    assert len(registry.token_requests()) == 1


async def test_long_expires_in_is_honoured() -> None:
    clock = FakeClock()
    registry, _ = bearer_registry(token_ttl=300)
    async with make_client(registry, clock) as client:
        await client.observe(ref())
        clock.advance(280)
        await client.observe(ref())
        assert len(registry.token_requests()) == 1
        clock.advance(15)
        await client.observe(ref())
    assert len(registry.token_requests()) == 2


async def test_rejected_token_is_refreshed_once() -> None:
    registry, digest = bearer_registry()
    async with make_client(registry) as client:
        await client.observe(ref())
        registry.valid_tokens.clear()  # the registry revoked everything
        observation = await client.observe(ref())
    assert observation.status is LiveStatus.FOUND
    assert observation.live_digest == digest
    assert registry.tokens_issued == ["tok-1", "tok-2"]
    assert [r.authorization for r in registry.registry_requests()][-2:] == ["Bearer tok-1", "Bearer tok-2"]


async def test_token_rejected_again_after_refresh_gives_up() -> None:
    registry, _ = bearer_registry()
    async with make_client(registry) as client:
        await client.observe(ref())
        registry.hooks.append(
            lambda request: registry._challenge(f"repository:{REPO}:pull") if request.url.host == REGISTRY else None
        )
        before = len(registry.requests)
        observation = await client.observe(ref())
    assert observation.status is LiveStatus.UNVERIFIABLE
    assert observation.reason == "auth failed"
    later = registry.requests[before:]
    assert [(r.url.host, r.authorization) for r in later] == [
        (REGISTRY, "Bearer tok-1"),
        ("auth.example", None),
        (REGISTRY, "Bearer tok-2"),
    ]


async def test_concurrent_first_checks_send_one_probe_and_one_token_request() -> None:
    registry, digest = bearer_registry()
    async with make_client(registry, concurrency=16) as client:
        observations = await asyncio.gather(*(client.observe(ref()) for _ in range(50)))
    assert {o.status for o in observations} == {LiveStatus.FOUND}
    assert {o.live_digest for o in observations} == {digest}
    assert len(registry.token_requests()) == 1
    # One request learned the scheme; the 49 others waited for it and went out with the token.
    assert client.stats.challenges == 1
    assert client.stats.heads == 51


async def test_concurrent_checks_of_a_new_repository_share_one_token_request() -> None:
    registry, digest = bearer_registry()
    async with make_client(registry, concurrency=16) as client:
        await client.observe(ref("team/other"))  # the registry's scheme is known from here on
        observations = await asyncio.gather(*(client.observe(ref()) for _ in range(50)))
    assert {o.live_digest for o in observations} == {digest}
    assert [r.url.params["scope"] for r in registry.token_requests()] == [
        "repository:team/other:pull",
        f"repository:{REPO}:pull",
    ]
    assert client.stats.challenges == 1


async def test_first_contact_failure_releases_the_waiting_checks() -> None:
    registry, digest = bearer_registry()
    first = [True]

    def fail_once(request: httpx.Request) -> httpx.Response | None:
        if first[0]:
            first[0] = False
            return httpx.Response(400)
        return None

    registry.hooks.append(fail_once)
    async with make_client(registry) as client:
        observations = await asyncio.gather(*(client.observe(ref()) for _ in range(5)))
    assert [o.reason for o in observations].count("http 400") == 1
    assert [o.live_digest for o in observations].count(digest) == 4


async def test_insecure_realm_found_by_the_first_check_stops_the_others_early() -> None:
    registry, _ = bearer_registry(realm="http://auth.example/token")
    async with make_client(registry) as client:
        observations = await asyncio.gather(*(client.observe(ref()) for _ in range(20)))
    assert {o.reason for o in observations} == {"insecure token realm"}
    assert client.stats.heads == 1


async def test_concurrent_refresh_of_a_rejected_token_is_shared_too() -> None:
    registry, _ = bearer_registry()
    async with make_client(registry) as client:
        await client.observe(ref())
        registry.valid_tokens.clear()
        observations = await asyncio.gather(*(client.observe(ref()) for _ in range(30)))
    assert {o.status for o in observations} == {LiveStatus.FOUND}
    assert registry.tokens_issued == ["tok-1", "tok-2"]


async def test_403_is_access_denied() -> None:
    registry = FakeRegistry()
    registry.hooks.append(lambda request: httpx.Response(403, json={"errors": [{"code": "DENIED"}]}))
    async with make_client(registry) as client:
        observation = await client.observe(ref())
    assert observation.status is LiveStatus.UNVERIFIABLE
    assert observation.reason == "access denied"


async def test_plain_http_realm_is_refused_and_no_credentials_are_sent() -> None:
    registry, _ = bearer_registry(realm="http://auth.example/token", users={"alice": SECRET})
    async with make_client(registry, credentials=alice()) as client:
        observation = await client.observe(ref())
    assert observation.status is LiveStatus.UNVERIFIABLE
    assert observation.reason == "insecure token realm"
    assert registry.token_requests() == []
    assert all(r.authorization is None for r in registry.requests)


async def test_plain_http_realm_is_allowed_when_its_host_is_listed_insecure() -> None:
    registry, _ = bearer_registry(realm="http://auth.example:8080/token", users={"alice": SECRET})
    async with make_client(
        registry, credentials=alice(), insecure_registries=frozenset({"auth.example:8080"})
    ) as client:
        observation = await client.observe(ref())
    assert observation.status is LiveStatus.FOUND
    [token_request] = registry.token_requests()
    assert token_request.url.scheme == "http"
    assert token_request.authorization == basic("alice", SECRET)


async def test_realm_query_parameters_are_kept() -> None:
    registry, _ = bearer_registry(realm="https://auth.example/token?account=ci")
    async with make_client(registry) as client:
        observation = await client.observe(ref())
    assert observation.status is LiveStatus.FOUND
    [token_request] = registry.token_requests()
    assert token_request.url.params["account"] == "ci"
    assert token_request.url.params["scope"] == f"repository:{REPO}:pull"


async def test_token_server_trouble_is_retried_then_reported() -> None:
    registry, _ = bearer_registry()
    registry.hooks.append(lambda request: httpx.Response(503) if request.url.host == "auth.example" else None)
    async with make_client(registry) as client:
        observation = await client.observe(ref())
    assert observation.status is LiveStatus.UNVERIFIABLE
    assert observation.reason == "token server http 503"
    assert len(registry.token_requests()) == 3


async def test_access_token_field_is_accepted() -> None:
    registry, _ = bearer_registry()
    registry.hooks.append(
        lambda request: (
            httpx.Response(200, json={"access_token": "tok-1", "expires_in": 120})
            if request.url.host == "auth.example"
            else None
        )
    )
    registry.valid_tokens.add("tok-1")
    async with make_client(registry) as client:
        observation = await client.observe(ref())
    assert observation.status is LiveStatus.FOUND


async def test_malformed_token_response_is_auth_failed() -> None:
    registry, _ = bearer_registry()
    registry.hooks.append(
        lambda request: httpx.Response(200, text="<html>") if request.url.host == "auth.example" else None
    )
    async with make_client(registry) as client:
        observation = await client.observe(ref())
    assert observation.reason == "auth failed (malformed token response)"


async def test_bearer_is_preferred_when_several_challenges_are_offered() -> None:
    registry, _ = bearer_registry()
    registry.hooks.append(
        lambda request: (
            httpx.Response(
                401,
                headers=[
                    ("WWW-Authenticate", 'Basic realm="x"'),
                    ("WWW-Authenticate", f'Bearer realm="{REALM}",service="{SERVICE}"'),
                ],
            )
            if request.url.host == REGISTRY and "authorization" not in request.headers
            else None
        )
    )
    async with make_client(registry) as client:
        observation = await client.observe(ref())
    assert observation.status is LiveStatus.FOUND
    assert len(registry.token_requests()) == 1


async def test_credential_provider_failure_is_unverifiable_and_remembered() -> None:
    calls: list[str] = []

    class Broken:
        async def get(self, registry: str) -> Credential | None:
            calls.append(registry)
            raise CredentialsError("docker-credential-nope get failed with exit code 1")

    clock = FakeClock()
    registry, _ = bearer_registry()
    async with make_client(registry, clock, credentials=Broken()) as client:
        observations = [await client.observe(ref()) for _ in range(3)]
        clock.advance(301)
        await client.observe(ref())
    assert {o.status for o in observations} == {LiveStatus.UNVERIFIABLE}
    assert {o.reason for o in observations} == {
        "credentials unavailable: docker-credential-nope get failed with exit code 1"
    }
    assert calls == [REGISTRY, REGISTRY]  # once, then again only after the cache time
    assert registry.token_requests() == []  # never fell back to an anonymous token


@pytest.mark.parametrize("header", ["", "Negotiate", 'Bearer service="x"'])
async def test_unusable_challenge_is_auth_failed(header: str) -> None:
    registry = FakeRegistry()
    registry.hooks.append(lambda request: httpx.Response(401, headers={"WWW-Authenticate": header} if header else {}))
    async with make_client(registry) as client:
        observation = await client.observe(ref())
    assert observation.reason == "auth failed"


async def test_no_secret_or_token_reaches_the_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    registry, _ = bearer_registry(users={"alice": SECRET}, anonymous_tokens=False)
    flaky = [True]

    def one_503(request: httpx.Request) -> httpx.Response | None:
        if flaky[0] and "authorization" in request.headers and request.url.host == REGISTRY:
            flaky[0] = False
            return httpx.Response(503)
        return None

    registry.hooks.append(one_503)
    async with make_client(registry, credentials=alice()) as client:
        observation = await client.observe(ref())
    assert observation.status is LiveStatus.FOUND
    assert client.stats.retries == 1
    assert "retrying" in caplog.text
    for secret in (SECRET, base64.b64encode(f"alice:{SECRET}".encode()).decode(), "tok-1"):
        assert secret not in caplog.text
        assert secret not in repr(observation)
