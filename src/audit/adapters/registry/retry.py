"""When to try a registry request again: jittered exponential back-off, Retry-After, which errors are worth it."""

from __future__ import annotations

import socket
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
    if any(isinstance(link, ssl.SSLCertVerificationError) for link in chain):
        return "tls: certificate verify failed", False
    tls_errors = [link for link in chain if isinstance(link, ssl.SSLError)]
    if tls_errors:
        detail = next((str(r) for link in tls_errors if (r := getattr(link, "reason", None))), "handshake failed")
        return f"tls: {detail.lower().replace('_', ' ')}", False
    text = " ".join(str(link) for link in chain)
    if "CERTIFICATE_VERIFY_FAILED" in text:
        return "tls: certificate verify failed", False
    if any(isinstance(link, ConnectionRefusedError) for link in chain):
        return "connection refused", True
    if any(isinstance(link, socket.gaierror) for link in chain):
        return "dns lookup failed", True
    if isinstance(exc, httpx.TimeoutException | TimeoutError):
        return "timeout", True
    if isinstance(exc, httpx.ConnectError):
        if "name or service not known" in text.lower() or "nodename nor servname" in text.lower():
            return "dns lookup failed", True
        return "connection failed", True
    if isinstance(exc, httpx.NetworkError | httpx.RemoteProtocolError):
        return "connection reset", True
    if isinstance(exc, httpx.DecodingError):
        return "malformed response encoding", False
    return f"http error ({type(exc).__name__})", False
