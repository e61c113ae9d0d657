"""A hostile tag list: names outside the grammar set aside (never a URL), the tag cap, the time guard, path escape."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from audit.adapters.registry import RegistryRequestError
from audit.adapters.registry.client import MAX_REJECTED_KEPT, MAX_TAG_PAGE_BYTES
from audit.models import ImageRef, LiveStatus
from audit.reference import is_valid_tag

from .fakes import REGISTRY, FakeRegistry, image_manifest, make_client

REPO = "team/app"
HOSTILE = [
    "v1\x1b[31m",  # ESC: httpx.InvalidURL "non-printable ASCII character in URL"
    "v2\r\nX-Injected: 1",
    "x" * 70_000,  # httpx.InvalidURL "URL too long"
    "v4';id;echo'",
    "v5;id",
    "../../../../escape/manifests/x",
    "-rf",
    "caf\u00e9",
]


def registry_listing(names: list[str], **kwargs: object) -> FakeRegistry:
    registry = FakeRegistry(**kwargs)  # type: ignore[arg-type]
    registry.push(REPO, "1.0", image_manifest("1.0"))
    registry.tags[REPO] = ["1.0", *names, "2.0"]
    registry.push(REPO, "2.0", image_manifest("2.0"))
    return registry


def outside_the_repository(registry: FakeRegistry) -> list[str]:
    """Paths of registry requests that are not under /v2/<REPO>/ (the token server is another host)."""
    return [str(r.url) for r in registry.registry_requests() if not r.url.path.startswith(f"/v2/{REPO}/")] + [
        str(r.url) for r in registry.requests if r.url.host == REGISTRY and not r.url.path.startswith("/v2/")
    ]


async def test_names_outside_the_grammar_are_set_aside_escaped_and_bounded() -> None:
    registry = registry_listing(HOSTILE)
    async with make_client(registry) as client:
        listing = await client.list_tags(REGISTRY, REPO)
    assert listing.tags == ("1.0", "2.0")
    assert listing.complete
    assert listing.rejected_count == len(HOSTILE)
    assert len({rejected.key for rejected in listing.rejected}) == len(HOSTILE)
    for rejected in listing.rejected:
        assert rejected.key.startswith("#invalid-tag-") and len(rejected.key) <= 128
        assert not is_valid_tag(rejected.key)  # a key can never be mistaken for a real tag
        assert len(rejected.name) <= 160  # bounded; escaped by every output, not here
    names = [rejected.name for rejected in listing.rejected]
    assert "v1\x1b[31m" in names and "x" * 160 in names


async def test_rejected_names_kept_for_reporting_are_bounded_but_all_counted() -> None:
    registry = registry_listing([f"bad;{n}" for n in range(MAX_REJECTED_KEPT + 50)])
    async with make_client(registry) as client:
        listing = await client.list_tags(REGISTRY, REPO)
    assert len(listing.rejected) == MAX_REJECTED_KEPT
    assert listing.rejected_count == MAX_REJECTED_KEPT + 50


async def test_the_cap_stops_paginating_and_says_so() -> None:
    registry = FakeRegistry(page_size_cap=10)
    for number in range(95):
        registry.push(REPO, f"v{number:04d}", image_manifest(str(number)))
    async with make_client(registry) as client:
        listing = await client.list_tags(REGISTRY, REPO, max_tags=25)
    assert listing.tags == tuple(f"v{n:04d}" for n in range(25))
    assert listing.stopped == "cap"
    assert len(registry.registry_requests("GET")) == 3  # pages of 10, 10, 10: never a fourth


async def test_the_cap_holds_within_one_page_that_ignores_n() -> None:
    registry = FakeRegistry(page_size_cap=100_000)
    registry.tags[REPO] = [f"t{n}" for n in range(5000)]
    registry.hooks.append(  # ignores `n`, as some registries do
        lambda request: httpx.Response(200, json={"name": REPO, "tags": registry.tags[REPO]})
    )
    async with make_client(registry) as client:
        listing = await client.list_tags(REGISTRY, REPO, max_tags=100)
    assert len(listing.tags) == 100
    assert listing.stopped == "cap"


async def test_a_list_exactly_at_the_cap_is_complete() -> None:
    registry = FakeRegistry(page_size_cap=10)
    for number in range(20):
        registry.push(REPO, f"v{number:04d}", image_manifest(str(number)))
    async with make_client(registry) as client:
        listing = await client.list_tags(REGISTRY, REPO, max_tags=20)
    assert len(listing.tags) == 20
    assert listing.complete


async def test_endless_pagination_stops_when_the_time_guard_says_so() -> None:
    registry = FakeRegistry()
    registry.push(REPO, "v1", image_manifest())

    def endless(request: httpx.Request) -> httpx.Response | None:
        if request.url.path != f"/v2/{REPO}/tags/list":
            return None
        page = int(request.url.params.get("page", "0"))
        link = f'</v2/{REPO}/tags/list?n=1000&page={page + 1}>; rel="next"'
        return httpx.Response(200, headers={"Link": link}, json={"name": REPO, "tags": [f"p{page}"]})

    registry.hooks.append(endless)
    answers = iter([True, True, False])
    async with make_client(registry) as client:
        listing = await client.list_tags(REGISTRY, REPO, should_continue=lambda: next(answers))
    assert listing.tags == ("p0", "p1", "p2")
    assert listing.stopped == "time"
    assert len(registry.registry_requests("GET")) == 3


async def test_a_link_on_the_registry_to_another_repository_is_refused() -> None:
    registry = FakeRegistry()
    registry.push(REPO, "v1", image_manifest())
    registry.hooks.append(
        lambda request: (
            httpx.Response(200, headers={"Link": '</v2/other/secret/tags/list>; rel="next"'}, json={"tags": ["a"]})
            if "other" not in request.url.path
            else None
        )
    )
    async with make_client(registry) as client:
        with pytest.raises(RegistryRequestError) as caught:
            await client.list_tags(REGISTRY, REPO)
    assert caught.value.reason == "tag list link leaves the repository"
    assert outside_the_repository(registry) == []


@pytest.mark.parametrize("tag", HOSTILE)
async def test_observe_never_puts_a_name_outside_the_grammar_in_a_url(tag: str) -> None:
    registry = registry_listing([tag])
    ref = ImageRef(registry=REGISTRY, repository=REPO, tag=tag)
    async with make_client(registry) as client:
        observation = await client.observe(ref)
        fetched = await client.observe(ImageRef(registry=REGISTRY, repository=REPO, tag="1.0"))
    assert observation.status is LiveStatus.UNVERIFIABLE
    assert observation.reason == "invalid tag name (outside the distribution grammar)"
    assert fetched.status is LiveStatus.FOUND
    assert outside_the_repository(registry) == []
    assert all(r.url.path.startswith(f"/v2/{REPO}/manifests/1.0") for r in registry.registry_requests())


async def test_observe_refuses_a_repository_outside_the_grammar() -> None:
    registry = FakeRegistry()
    ref = ImageRef(registry=REGISTRY, repository="team/../../escape", tag="v1")
    async with make_client(registry) as client:
        observation = await client.observe(ref)
    assert observation.status is LiveStatus.UNVERIFIABLE
    assert registry.requests == []


async def test_a_listed_name_that_looks_like_one_of_our_keys_gets_a_hash_of_its_own() -> None:
    registry = registry_listing(["#tag-list-cap", "#invalid-tag-0123456789abcdef0123456789abcdef"])
    async with make_client(registry) as client:
        listing = await client.list_tags(REGISTRY, REPO)
    keys = [rejected.key for rejected in listing.rejected]
    assert len(set(keys)) == 2
    assert "#tag-list-cap" not in keys and "#invalid-tag-0123456789abcdef0123456789abcdef" not in keys


async def test_a_tag_list_page_is_read_up_to_its_byte_cap_only() -> None:
    chunk = b" " * 65536  # valid JSON whitespace, endlessly
    sent: list[int] = []

    async def endless() -> AsyncIterator[bytes]:
        for _ in range(2000):  # 128 MiB if anyone read it all
            sent.append(len(chunk))
            yield chunk

    registry = FakeRegistry()
    registry.hooks.append(lambda request: httpx.Response(200, content=endless()))
    async with make_client(registry) as client:
        with pytest.raises(RegistryRequestError) as caught:
            await client.list_tags(REGISTRY, REPO)
    assert caught.value.reason == "tag list page larger than 4 MiB"
    assert sum(sent) <= MAX_TAG_PAGE_BYTES + len(chunk)
