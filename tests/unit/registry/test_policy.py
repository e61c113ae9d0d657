"""The per-registry policy: requests in flight adapt (grow while latency holds, halve on push-back), bounded."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from audit.adapters.registry.policy import INITIAL_LIMIT, AdaptiveLimit
from audit.models import Digest, ImageRef, LiveStatus, MediaType

from .fakes import REGISTRY, FakeClock, FakeRegistry, image_manifest, make_client

REPO = "team/app"
BODY = image_manifest("a")
DIGEST = Digest.of(BODY)


def test_slow_start_doubles_per_round_and_stops_at_the_maximum() -> None:
    limit = AdaptiveLimit(3 * INITIAL_LIMIT, FakeClock().monotonic)
    assert limit.limit == INITIAL_LIMIT
    for _ in range(INITIAL_LIMIT):  # one round: every request of the window answered quickly
        limit.grow(0.05)
    assert limit.limit == 2 * INITIAL_LIMIT
    for _ in range(100):
        limit.grow(0.05)
    assert limit.limit == 3 * INITIAL_LIMIT


def test_latency_that_does_not_hold_holds_the_limit() -> None:
    limit = AdaptiveLimit(64, FakeClock().monotonic)
    limit.grow(0.05)
    grown = limit.limit
    limit.grow(0.05 * 2 + 0.03)  # beyond twice the best plus the slack: queueing somewhere
    assert limit.limit == grown


async def test_push_back_halves_at_once_and_only_once_per_round() -> None:
    limit = AdaptiveLimit(64, FakeClock().monotonic, initial=16)
    admitted = [await limit.acquire() for _ in range(4)]
    limit.shrink(admitted[0])
    assert limit.limit == 8
    limit.shrink(admitted[1])  # sent before the first shrink: the same congestion, not a new signal
    assert limit.limit == 8
    for _ in admitted:
        limit.release()
    later = await limit.acquire()
    limit.shrink(later)
    assert limit.limit == 4
    limit.release()
    for _ in range(4):
        limit.grow(0.01)  # after a push-back growth is additive: about one per round, not one per answer
    assert 4 < limit.limit < 5.5


async def test_requests_beyond_the_limit_wait_their_turn() -> None:
    limit = AdaptiveLimit(2, FakeClock().monotonic)
    await limit.acquire()
    await limit.acquire()
    third = asyncio.ensure_future(limit.acquire())
    await asyncio.sleep(0)
    assert not third.done()
    limit.release()
    await asyncio.sleep(0)
    assert third.done()
    assert limit.in_flight == 2


def many_tags(registry: FakeRegistry, count: int) -> list[ImageRef]:
    for n in range(count):
        registry.push(REPO, f"v{n}", BODY)
    return [ImageRef.parse(f"{REGISTRY}/{REPO}:v{n}") for n in range(count)]


async def test_in_flight_requests_grow_to_the_maximum_and_never_beyond() -> None:
    registry = FakeRegistry()
    refs = many_tags(registry, 300)
    in_flight = peak = 0

    async def slow(request: httpx.Request) -> None:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        in_flight -= 1

    registry.hooks.append(slow)
    async with make_client(registry, concurrency=40) as client:
        observations = await asyncio.gather(*(client.observe(r) for r in refs))
        assert client.limits() == {REGISTRY: 40}
    assert {o.status for o in observations} == {LiveStatus.FOUND}
    assert INITIAL_LIMIT < peak <= 40


@pytest.mark.parametrize(
    ("status", "headers"),
    [(429, {"Retry-After": "1"}), (503, {})],
)
async def test_push_back_from_the_registry_shrinks_its_limit(status: int, headers: dict[str, str]) -> None:
    clock = FakeClock()
    registry = FakeRegistry()
    refs = many_tags(registry, 40)
    answered = [0]

    def push_back_once_warm(request: httpx.Request) -> httpx.Response | None:
        answered[0] += 1
        return httpx.Response(status, headers=headers) if answered[0] == 30 else None

    registry.hooks.append(push_back_once_warm)
    async with make_client(registry, clock, concurrency=64) as client:
        for r in refs[:29]:
            await client.observe(r)
        warm = client.limits()[REGISTRY]
        assert (await client.observe(refs[29])).status is LiveStatus.FOUND  # retried after the push-back
        assert client.limits()[REGISTRY] == warm // 2


async def test_a_timeout_shrinks_the_limit() -> None:
    registry = FakeRegistry()
    refs = many_tags(registry, 20)
    stalled = [False]

    async def stall_once(request: httpx.Request) -> None:
        if not stalled[0] and request.url.path.endswith("/v19"):
            stalled[0] = True
            await asyncio.sleep(5)

    registry.hooks.append(stall_once)
    async with make_client(registry, timeout=0.05) as client:
        for r in refs[:19]:
            await client.observe(r)
        warm = client.limits()[REGISTRY]
        assert (await client.observe(refs[19])).status is LiveStatus.FOUND
        assert client.limits()[REGISTRY] == warm // 2


def test_the_limit_starts_at_16_in_flight_and_never_above_the_maximum() -> None:
    assert AdaptiveLimit(64, FakeClock().monotonic).limit == 16
    assert AdaptiveLimit(4, FakeClock().monotonic).limit == 4


def test_the_default_maximum_is_64_in_flight() -> None:
    client = make_client(FakeRegistry())
    assert client.settings.concurrency == 64
    assert MediaType.OCI_MANIFEST  # the fake serves OCI manifests
