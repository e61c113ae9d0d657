"""When to try a registry request again: jittered exponential back-off, Retry-After, a per-host pause."""

from __future__ import annotations

import ssl
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC
from email.utils import parsedate_to_datetime
from typing import Final

import httpx

RETRYABLE_STATUS: Final = frozenset({429, 500, 502, 503, 504})
MAX_BACKOFF: Final = 5.0


@dataclass(frozen=True, slots=True)
class Backoff:
    """Jittered exponential back-off: attempt 1 waits about `base`, each later attempt twice as long."""

    base: float
    random: Callable[[], float]

    def delay(self, attempt: int) -> float:
        return min(MAX_BACKOFF, self.base * 2.0 ** (attempt - 1)) * (0.5 + self.random())


def parse_retry_after(value: str | None, *, wall_now: float) -> float | None:
    """Seconds to wait for a `Retry-After` value (delta-seconds or HTTP date); None if absent or invalid."""
    if value is None:
        return None
    text = value.strip()
    if text.isdigit():
        return float(text)
    try:
        moment = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return max(0.0, moment.timestamp() - wall_now)


class PauseBoard:
    """A "not before" time per host, set by a 429 and honoured by every worker before it sends.

    Plain dict and float arithmetic: asyncio runs one callback at a time, so no lock is needed, and a host
    that never rate-limits costs one dict lookup per request.
    """

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._not_before: dict[str, float] = {}

    def pause(self, host: str, seconds: float) -> None:
        until = self._clock() + seconds
        if until > self._not_before.get(host, 0.0):
            self._not_before[host] = until

    def remaining(self, host: str) -> float:
        until = self._not_before.get(host)
        if until is None:
            return 0.0
        left = until - self._clock()
        if left <= 0:
            del self._not_before[host]
            return 0.0
        return left


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def classify_transport_error(exc: Exception) -> tuple[str, bool]:
    """A short reason for a failed exchange, and whether trying again may help."""
    chain = _chain(exc)
    for link in chain:
        if isinstance(link, ssl.SSLCertVerificationError):
            return "tls: certificate verify failed", False
        if isinstance(link, ssl.SSLError):
            detail = getattr(link, "reason", None) or "handshake failed"
            return f"tls: {detail.lower().replace('_', ' ')}", False
    text = " ".join(str(link) for link in chain)
    if "CERTIFICATE_VERIFY_FAILED" in text:
        return "tls: certificate verify failed", False
    if isinstance(exc, httpx.TimeoutException | TimeoutError):
        return "timeout", True
    if any(isinstance(link, ConnectionRefusedError) for link in chain):
        return "connection refused", True
    if isinstance(exc, httpx.ConnectError):
        if "name or service not known" in text.lower() or "nodename nor servname" in text.lower():
            return "dns lookup failed", True
        return "connection failed", True
    if isinstance(exc, httpx.NetworkError | httpx.RemoteProtocolError):
        return "connection reset", True
    if isinstance(exc, httpx.DecodingError):
        return "malformed response encoding", False
    return f"http error ({type(exc).__name__})", False
