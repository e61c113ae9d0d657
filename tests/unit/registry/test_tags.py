"""list_tags(): every page via Link, credentials kept on the registry's origin, errors with reasons."""

from __future__ import annotations

import httpx
import pytest

from audit.adapters.registry import RegistryRequestError
from audit.adapters.registry.failures import FailureKind, hint_for
from audit.errors import InvalidReferenceError

from .fakes import REGISTRY, FakeRegistry, image_manifest, make_client

REPO = "team/app"


def registry_with_tags(count: int, **kwargs: object) -> FakeRegistry:
    registry = FakeRegistry(**kwargs)  # type: ignore[arg-type]
    for number in range(count):
        registry.push(REPO, f"v{number:04d}", image_manifest(str(number)))
    return registry


async def test_single_page() -> None:
    registry = registry_with_tags(3)
    async with make_client(registry) as client:
        tags = list((await client.list_tags(REGISTRY, REPO)).tags)
    assert tags == ["v0000", "v0001", "v0002"]
    [request] = registry.requests
    assert request.url.path == f"/v2/{REPO}/tags/list"
    assert request.url.params["n"] == "1000"
    assert request.headers["accept"] == "application/json"


async def test_relative_link_pages_are_all_followed_with_credentials() -> None:
    registry = registry_with_tags(25, auth="bearer", page_size_cap=10)
    async with make_client(registry) as client:
        tags = list((await client.list_tags(REGISTRY, REPO)).tags)
    assert tags == [f"v{n:04d}" for n in range(25)]
    pages = registry.registry_requests("GET")
    assert [p.url.params.get("last") for p in pages] == [None, None, "v0009", "v0019"]  # 401, then 3 pages
    assert [p.authorization for p in pages[1:]] == ["Bearer tok-1"] * 3
    assert len(registry.token_requests()) == 1


async def test_absolute_link_to_the_same_origin_keeps_credentials() -> None:
    registry = registry_with_tags(2, auth="bearer")

    def absolute(request: httpx.Request) -> httpx.Response | None:
        if request.url.host == REGISTRY and "authorization" in request.headers and "last" not in request.url.params:
            link = f'<https://{REGISTRY}/v2/{REPO}/tags/list?n=1000&last=v0000>; rel="next"'
            return httpx.Response(200, headers={"Link": link}, json={"name": REPO, "tags": ["v0000"]})
        return None

    registry.hooks.append(absolute)
    async with make_client(registry) as client:
        tags = list((await client.list_tags(REGISTRY, REPO)).tags)
    assert tags == ["v0000", "v0001"]
    assert registry.requests[-1].authorization == "Bearer tok-1"


async def test_link_to_another_origin_gets_no_credentials() -> None:
    registry = registry_with_tags(1, auth="bearer")

    def elsewhere(request: httpx.Request) -> httpx.Response | None:
        if request.url.host == "pages.example":
            return httpx.Response(200, json={"name": REPO, "tags": ["from-elsewhere"]})
        if request.url.host == REGISTRY and "authorization" in request.headers:
            link = '<https://pages.example/next?token=opaque>; rel="next"'
            return httpx.Response(200, headers={"Link": link}, json={"name": REPO, "tags": ["v0000"]})
        return None

    registry.hooks.append(elsewhere)
    async with make_client(registry) as client:
        tags = list((await client.list_tags(REGISTRY, REPO)).tags)
    assert tags == ["v0000", "from-elsewhere"]
    [followed] = [r for r in registry.requests if r.url.host == "pages.example"]
    assert followed.authorization is None


@pytest.mark.parametrize(
    ("link", "reason"),
    [
        pytest.param('<http://registry.example/next>; rel="next"', "insecure tag list link", id="plain-http-refused"),
        pytest.param(f'</v2/{REPO}/tags/list?n=1000>; rel="next"', "tag list pagination loops", id="loop-is-an-error"),
    ],
)
async def test_a_bad_next_link_is_an_error(link: str, reason: str) -> None:
    registry = registry_with_tags(1)
    registry.hooks.append(lambda request: httpx.Response(200, headers={"Link": link}, json={"tags": ["a"]}))
    async with make_client(registry) as client:
        with pytest.raises(RegistryRequestError) as caught:
            await client.list_tags(REGISTRY, REPO)
    assert caught.value.reason == reason


async def test_null_tags_is_an_empty_list() -> None:
    registry = registry_with_tags(0)
    registry.hooks.append(lambda request: httpx.Response(200, json={"name": REPO, "tags": None}))
    async with make_client(registry) as client:
        assert (await client.list_tags(REGISTRY, REPO)).tags == ()


async def test_cosign_tags_are_returned_too() -> None:
    registry = registry_with_tags(1)
    registry.push(REPO, "sha256-" + "a" * 64 + ".sig", b"{}")
    async with make_client(registry) as client:
        tags = list((await client.list_tags(REGISTRY, REPO)).tags)
    assert "sha256-" + "a" * 64 + ".sig" in tags


@pytest.mark.parametrize(
    ("response", "reason", "kind"),
    [
        (
            httpx.Response(404, json={"errors": [{"code": "NAME_UNKNOWN"}]}),
            "repository not found",
            FailureKind.NOT_FOUND,
        ),
        (httpx.Response(404), "not found (http 404)", FailureKind.NOT_FOUND),
        (httpx.Response(403), "access denied", FailureKind.ACCESS_DENIED),
        (httpx.Response(401), "auth failed", FailureKind.AUTH),
        (httpx.Response(429, headers={"Retry-After": "3600"}), "rate limited", FailureKind.RATE_LIMITED),
        (httpx.Response(503), "http 503", FailureKind.SERVER),
        (httpx.Response(200, text="<html>"), "malformed tag list", FailureKind.BAD_RESPONSE),
        (httpx.Response(200, json={"tags": [1, 2]}), "malformed tag list", FailureKind.BAD_RESPONSE),
    ],
)
async def test_errors_raise_registry_error_with_reason_kind_and_its_hint(
    response: httpx.Response, reason: str, kind: FailureKind
) -> None:
    registry = FakeRegistry()
    registry.hooks.append(lambda request: response)
    async with make_client(registry) as client:
        with pytest.raises(RegistryRequestError) as caught:
            await client.list_tags(REGISTRY, REPO)
    assert caught.value.reason == reason
    assert caught.value.kind is kind
    assert caught.value.registry == REGISTRY
    assert reason in caught.value.message
    assert caught.value.hint == hint_for(kind, REGISTRY)  # the hint comes from the kind, not from the wording


def test_every_failure_kind_has_its_own_hint() -> None:
    hints = {kind: hint_for(kind, "registry.example") for kind in FailureKind}
    assert all(hints.values())
    assert hints[FailureKind.TLS] != hints[FailureKind.UNREACHABLE] != hints[FailureKind.AUTH]
    assert "re-push" in hints[FailureKind.SCHEMA1]


async def test_docker_hub_names_are_normalised() -> None:
    seen: list[httpx.URL] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url)
        return httpx.Response(200, json={"tags": ["1.27"]})

    async with make_client(httpx.MockTransport(handler)) as client:
        assert (await client.list_tags("docker.io", "library/nginx")).tags == ("1.27",)
    assert str(seen[0]) == "https://registry-1.docker.io/v2/library/nginx/tags/list?n=1000"


async def test_invalid_repository_is_a_usage_error() -> None:
    async with make_client(FakeRegistry()) as client:
        with pytest.raises(InvalidReferenceError):
            await client.list_tags(REGISTRY, "Team/App?x=1")
