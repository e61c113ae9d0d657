"""The registry client's check loop alone, in a fresh process: its own rate, its request stats, a profile.

`python -m bench.inproc --refs FILE --insecure 127.0.0.1` observes every `host/repo:tag@digest` line like
`digest-audit check` does, but times only the loop (no interpreter start-up, imports or output), reads
`RegistryClient.stats`, and optionally profiles with cProfile. Variants (concurrency, transport limits,
event loop) are for the experiments recorded in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import json
import pstats
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

import httpx

from audit.adapters.registry import RegistryClient, RegistrySettings
from audit.models import ImageRef, Observation
from audit.verdicts import check_verdict
from audit.workers import drain


async def observe_all(
    references: Sequence[ImageRef], settings: RegistrySettings, transport: httpx.AsyncBaseTransport | None
) -> tuple[float, dict[str, int], dict[str, int]]:
    references_order = {ref: index for index, ref in enumerate(references)}
    async with RegistryClient(settings, transport=transport) as client:
        started = time.perf_counter()
        observations: list[Observation] = []

        async def observe(ref: ImageRef) -> None:
            observations.append(await client.observe(ref, expected=ref.digest))

        await drain(references, observe, workers=2 * settings.concurrency)  # as `check` does
        observations.sort(key=lambda observation: references_order[observation.ref])
        seconds = time.perf_counter() - started
        verdicts = Counter(
            check_verdict(observation, ref.digest, None)[0].value
            for ref, observation in zip(references, observations, strict=True)
        )
        return seconds, client.stats.as_dict(), dict(verdicts)


class ShardedTransport(httpx.AsyncBaseTransport):
    """N single-connection httpx transports, each request on an idle one: httpcore's pool bookkeeping
    (a scan of every connection, with a socket poll each, on every request and every close) stays O(1)."""

    def __init__(self, shards: int) -> None:
        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
        self._shards = [httpx.AsyncHTTPTransport(limits=limits) for _ in range(shards)]
        self._idle = list(range(shards))
        self._busy: dict[int, int] = {}

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        index = self._idle.pop() if self._idle else min(self._busy, key=self._busy.__getitem__)
        self._busy[index] = self._busy.get(index, 0) + 1
        try:
            response = await self._shards[index].handle_async_request(request)
        except BaseException:
            self._release(index)
            raise
        stream = response.stream
        assert isinstance(stream, httpx.AsyncByteStream)
        response.stream = _Released(stream, lambda: self._release(index))
        return response

    def _release(self, index: int) -> None:
        self._busy[index] -= 1
        if not self._busy[index]:
            del self._busy[index]
            self._idle.append(index)

    async def aclose(self) -> None:
        for shard in self._shards:
            await shard.aclose()


class _Released(httpx.AsyncByteStream):
    def __init__(self, inner: httpx.AsyncByteStream, release: Callable[[], None]) -> None:
        self._inner = inner
        self._release: Callable[[], None] | None = release

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._inner:
            yield chunk

    async def aclose(self) -> None:
        await self._inner.aclose()
        if self._release is not None:
            self._release()
            self._release = None


def _runner(loop: str) -> Callable[[Coroutine[Any, Any, tuple[float, dict[str, int], dict[str, int]]]], Any]:
    if loop == "uvloop":
        # Only with `uv run --with uvloop`: not a project dependency.
        import uvloop  # type: ignore[import-not-found,unused-ignore]  # noqa: PLC0415

        return uvloop.run  # type: ignore[no-any-return,unused-ignore]
    return asyncio.run


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.inproc")
    parser.add_argument("--refs", required=True, type=Path)
    parser.add_argument("--insecure", default="127.0.0.1")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--loop", choices=["asyncio", "uvloop"], default="asyncio")
    parser.add_argument(
        "--transport",
        choices=["default", "explicit", "sharded"],
        default="default",
        help="default: the client's own (httpx over wire.py); explicit: httpcore's AsyncHTTPTransport "
        "(pool limits = concurrency); "
        "sharded: `concurrency` single-connection transports",
    )
    parser.add_argument("--profile", type=Path, help="write a cProfile text report (top 40, tottime) here")
    args = parser.parse_args(argv)

    references = [ImageRef.parse(line) for line in args.refs.read_text().split()]
    settings = RegistrySettings(
        insecure_registries=frozenset({args.insecure}),
        concurrency=args.concurrency,
    )
    run = _runner(args.loop)
    seconds: list[float] = []
    stats: dict[str, int] = {}
    verdicts: dict[str, int] = {}

    def make_transport() -> httpx.AsyncBaseTransport | None:
        if args.transport == "sharded":
            return ShardedTransport(args.concurrency)
        if args.transport == "explicit":
            size = args.concurrency
            return httpx.AsyncHTTPTransport(limits=httpx.Limits(max_connections=size, max_keepalive_connections=size))
        return None

    for _ in range(args.rounds):
        elapsed, stats, verdicts = run(observe_all(references, settings, make_transport()))
        seconds.append(elapsed)
    if args.profile is not None:  # one more round, profiled and not timed: cProfile roughly halves the rate
        profiler = cProfile.Profile()
        profiler.enable()
        run(observe_all(references, settings, make_transport()))
        profiler.disable()
        buffer = io.StringIO()
        pstats.Stats(profiler, stream=buffer).sort_stats("tottime").print_stats(40)
        args.profile.write_text(buffer.getvalue())
    json.dump({"tags": len(references), "seconds": seconds, "stats": stats, "verdicts": verdicts}, sys.stdout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
