"""A fixed set of workers over a stream of items, so memory stays flat however many tags an audit has.

One coroutine (and task) per tag cost about 3 KiB each and made 10,000 tags a 126 MiB process; a few dozen
workers pulling from a shared source cost the same at 100 tags and at 100,000. The registry client still
decides how many requests are really in flight per registry; the workers only keep it fed.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, Awaitable, Callable, Coroutine, Iterable


async def drain[T](
    source: Iterable[T] | AsyncIterable[T], work: Callable[[T], Awaitable[None]], *, workers: int
) -> None:
    """Call `work` on every item of `source` with at most `workers` calls at once; items are taken in order.

    An async source is read by one feeder into a small queue, so items are worked on while the source is still
    producing (a Scan page is checked while the next one is read). The first exception, from the source or
    from `work`, stops everything and is raised as itself.
    """
    if workers < 1:
        raise ValueError("workers must be at least 1")
    if isinstance(source, AsyncIterable):
        await _drain_async(source, work, workers)
        return
    items = iter(source)

    async def worker() -> None:
        for item in items:  # one shared iterator: each item is taken by exactly one worker
            await work(item)

    await _together([worker() for _ in range(workers)])


async def _drain_async[T](source: AsyncIterable[T], work: Callable[[T], Awaitable[None]], workers: int) -> None:
    queue: asyncio.Queue[tuple[T] | None] = asyncio.Queue(maxsize=workers)

    async def feed() -> None:
        async for item in source:
            await queue.put((item,))
        for _ in range(workers):
            await queue.put(None)  # one end mark per worker (a failed source ends everything instead)

    async def worker() -> None:
        while (entry := await queue.get()) is not None:
            await work(entry[0])

    await _together([feed(), *(worker() for _ in range(workers))])


async def _together(coroutines: list[Coroutine[None, None, None]]) -> None:
    try:
        async with asyncio.TaskGroup() as group:
            for coroutine in coroutines:
                group.create_task(coroutine)
    except BaseExceptionGroup as failed:
        first = failed.exceptions[0]
        while isinstance(first, BaseExceptionGroup):
            first = first.exceptions[0]
        raise first from None
