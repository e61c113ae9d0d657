"""How hard to push one registry: requests in flight that adapt, a shared 429 pause, and the retry rules.

One `RegistryPolicy` per registry host is the only place that decides when a request may go out, when it is
tried again, and how many may be in flight. Real registries are 20-100 ms away, so the number of requests in
flight decides the time of an audit; a fixed number is either too slow far away or too rude up close. The
limit therefore starts small, doubles every round trip while latency holds (slow start), grows by one per
round trip after the first push-back, and halves at once on 429, 503 or a timeout, never above `maximum`.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Final, Protocol

import httpx

from audit.adapters.registry.failures import FailureKind, RegistryFailure
from audit.adapters.registry.retry import RETRYABLE_STATUS, Backoff, classify_transport_error, parse_retry_after

logger = logging.getLogger(__name__)

#: Requests in flight to a registry before it has answered any: the fixed number per host before issue 11, so
#: no ruder than that, and one round trip of slow start less than 8 (8 -> 16 -> 32 -> 64 costs two round trips
#: of 48 missing requests plus one of 32; 50 ms away that is ~50 ms of a ~1.7 s audit of 2,000 tags).
INITIAL_LIMIT: Final = 16
#: Latency "holds" while it stays under the best seen times this factor, or plus this many seconds: on loopback
#: a round trip is a fraction of a millisecond, and a few ms of queueing there is no sign of trouble.
LATENCY_TOLERANCE: Final = 2.0
LATENCY_SLACK: Final = 0.02
PUSHBACK_STATUS: Final = frozenset({429, 503})


class Reply(Protocol):
    @property
    def status(self) -> int: ...

    @property
    def headers(self) -> httpx.Headers: ...


class AdaptiveLimit:
    """Requests in flight to one registry: slow start, then additive increase, multiplicative decrease.

    Plain counters and a FIFO of waiters: asyncio runs one callback at a time, so no lock is needed.
    """

    def __init__(self, maximum: int, clock: Callable[[], float], initial: int = INITIAL_LIMIT) -> None:
        self.maximum = maximum
        self.limit = float(min(initial, maximum))
        self.in_flight = 0
        self.shrinks = 0
        self._slow_start = True
        self._best_latency: float | None = None
        self._clock = clock
        self._started = 0  # requests admitted so far; a shrink is remembered by this count
        self._shrunk_at = -1  # requests admitted before the last shrink do not shrink it again
        self._waiters: deque[asyncio.Future[None]] = deque()

    def __repr__(self) -> str:
        return f"AdaptiveLimit(limit={self.limit:.1f}, in_flight={self.in_flight}, maximum={self.maximum})"

    async def acquire(self) -> int:
        """Wait for room; returns the admission number to pass to `shrink`."""
        if self.in_flight < int(self.limit) and not self._waiters:
            self.in_flight += 1
        else:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter  # `_wake` counts this request in flight before it wakes it: a hand-off
            except BaseException:
                if waiter.done() and not waiter.cancelled():
                    self.release()  # woken, then cancelled: give the slot back
                elif waiter in self._waiters:
                    self._waiters.remove(waiter)
                raise
        self._started += 1
        return self._started

    def release(self) -> None:
        self.in_flight -= 1
        self._wake()

    def _wake(self) -> None:
        while self.in_flight < int(self.limit) and self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                self.in_flight += 1
                waiter.set_result(None)

    def grow(self, latency: float) -> None:
        """A request was answered without push-back in `latency` seconds."""
        best = self._best_latency
        if best is None or latency < best:
            self._best_latency = best = latency
        if latency > best * LATENCY_TOLERANCE + LATENCY_SLACK:
            return  # queueing somewhere: hold the limit
        step = 1.0 if self._slow_start else 1.0 / max(self.limit, 1.0)
        self.limit = min(float(self.maximum), self.limit + step)
        self._wake()

    def shrink(self, admitted: int) -> None:
        """The registry pushed back (429, 503, timeout): halve at once, once per round of requests."""
        if admitted <= self._shrunk_at:
            return
        self._shrunk_at = self._started
        self._slow_start = False
        self.limit = max(1.0, self.limit / 2)
        self.shrinks += 1


class RegistryPolicy:
    """One registry's rules for sending: adaptive limit, the 429 pause shared by all its requests, retries.

    `send` runs one exchange (a callable that performs it) under these rules and returns its reply, or raises
    RegistryFailure with a kind. `clock`, `wall_clock` and `sleep` are injectable so tests need no waiting.
    """

    def __init__(
        self,
        host: str,
        *,
        maximum: int,
        max_attempts: int,
        max_retry_after: float,
        backoff: Backoff,
        clock: Callable[[], float],
        wall_clock: Callable[[], float],
        sleep: Callable[[float], Awaitable[None]],
        on_retry: Callable[[], None] = lambda: None,
    ) -> None:
        self.host = host
        self.limit = AdaptiveLimit(maximum, clock)
        self._max_attempts = max_attempts
        self._max_retry_after = max_retry_after
        self._backoff = backoff
        self._clock = clock
        self._wall_clock = wall_clock
        self._sleep = sleep
        self._on_retry = on_retry
        self._not_before = 0.0

    def __repr__(self) -> str:
        return f"RegistryPolicy({self.host!r}, {self.limit!r})"

    def pause(self, seconds: float) -> None:
        """Hold back every request to this registry for `seconds` (a 429 answer)."""
        self._not_before = max(self._not_before, self._clock() + seconds)

    def paused_for(self) -> float:
        return max(0.0, self._not_before - self._clock())

    async def send[R: Reply](self, exchange: Callable[[], Awaitable[R]], what: object) -> R:
        """Run `exchange` with retries: 429 (Retry-After, shared pause), 5xx, resets and timeouts."""
        attempt = 0
        while True:
            attempt += 1
            wait = self.paused_for()
            if wait > 0:
                if wait > self._max_retry_after:
                    raise RegistryFailure("rate limited", FailureKind.RATE_LIMITED)
                await self._sleep(wait)
            kind = FailureKind.UNREACHABLE
            admitted = await self.limit.acquire()
            try:  # a plain try, not a context manager: this runs once per request
                started = self._clock()
                try:
                    reply = await exchange()
                except (httpx.HTTPError, TimeoutError) as exc:
                    reason, retryable = classify_transport_error(exc)
                    if reason == "timeout":
                        self.limit.shrink(admitted)
                    if not retryable:
                        raise RegistryFailure(reason, FailureKind.TLS if reason.startswith("tls") else kind) from None
                    delay = self._backoff.delay(attempt)
                else:
                    status = reply.status
                    if status not in RETRYABLE_STATUS:
                        self.limit.grow(self._clock() - started)
                        return reply
                    if status in PUSHBACK_STATUS:
                        self.limit.shrink(admitted)
                    retry_after = parse_retry_after(reply.headers.get("retry-after"), wall_now=self._wall_clock())
                    if status == 429:
                        reason, kind = "rate limited", FailureKind.RATE_LIMITED
                        self.pause(retry_after if retry_after is not None else self._backoff.delay(attempt))
                        if retry_after is not None and retry_after > self._max_retry_after:
                            raise RegistryFailure(reason, kind)
                        delay = 0.0  # the pause holds back this request and every other one to the registry
                    else:
                        reason, kind = f"http {status}", FailureKind.SERVER
                        usable = retry_after is not None and retry_after <= self._max_retry_after
                        delay = retry_after if usable and retry_after is not None else self._backoff.delay(attempt)
            finally:
                self.limit.release()
            if attempt >= self._max_attempts:
                raise RegistryFailure(reason, kind)
            self._on_retry()
            logger.debug("retrying %s after %s (attempt %d)", what, reason, attempt)
            if delay > 0:
                await self._sleep(delay)
