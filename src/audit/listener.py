"""`digest-audit listen` without AWS: a small stdlib HTTP server in front of `hooks.receive`, and the scheduler
that waits the grace, coalesces requests per tag and runs targeted audits one at a time.

The HTTP side is deliberately minimal (one request per connection, `Content-Length` bodies only, bounded header
and body sizes, a read deadline): it serves webhooks from registries, not browsers. Put a TLS proxy in front of
it when it listens beyond loopback.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime

from audit import hooks
from audit.errors import AuditError
from audit.hooks import CheckRequest, HookResult, HookSecrets, SeenDeliveries
from audit.models import utcnow
from audit.untrusted import printable

log = logging.getLogger(__name__)

MAX_HEADER_BYTES = 16 * 1024
MAX_HEADERS = 100
READ_DEADLINE_SECONDS = 10.0
#: Connections served at once; more are closed unanswered, so slow clients cannot exhaust file descriptors.
MAX_CONNECTIONS = 64

_REASONS = {
    100: "Continue",
    202: "Accepted",
    204: "No Content",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    411: "Length Required",
    413: "Content Too Large",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
}


class _BadRequest(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass
class _Pending:
    first_at: float  # monotonic time of the first request for this key
    requests: list[CheckRequest] = field(default_factory=list)
    attempts: int = 0


class PendingChecks:
    """Requests waiting out the grace, one entry per (image, tag): a burst of events becomes one check.

    The grace runs from the first request, so a tag pushed over and over is still checked `grace` seconds after
    the first push; requests arriving while their check runs wait for the next one.
    """

    def __init__(self, grace: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.grace = grace
        self._clock = clock
        self._pending: dict[tuple[str, str | None], _Pending] = {}
        self.changed = asyncio.Event()

    def __len__(self) -> int:
        return len(self._pending)

    def add(self, requests: Iterable[CheckRequest], *, delay: float | None = None, attempts: int = 0) -> None:
        now = self._clock()
        for request in requests:
            entry = self._pending.get(request.key)
            if entry is None:
                start = now if delay is None else now - self.grace + delay
                entry = self._pending[request.key] = _Pending(first_at=start, attempts=attempts)
            entry.requests.append(request)
        self.changed.set()

    def next_due_in(self) -> float | None:
        """Seconds until the earliest entry is due (0 when one is due), None when nothing waits."""
        if not self._pending:
            return None
        earliest = min(entry.first_at for entry in self._pending.values())
        return max(0.0, earliest + self.grace - self._clock())

    def take_due(self) -> list[tuple[list[CheckRequest], int]]:
        """Remove and return the entries whose grace is over, with their earlier attempts."""
        now = self._clock()
        due = [key for key, entry in self._pending.items() if entry.first_at + self.grace <= now]
        return [(self._pending[key].requests, self._pending.pop(key).attempts) for key in due]


#: Runs one targeted audit for a batch of requests; raising means "not done, try again later".
type AuditBatch = Callable[[list[CheckRequest]], Awaitable[None]]


class Listener:
    """The HTTP receiver and the audit worker of one `listen` process."""

    def __init__(
        self,
        secrets: HookSecrets,
        audit: AuditBatch,
        *,
        grace: float,
        seen: SeenDeliveries | None = None,
        aliases: Mapping[str, str] | None = None,
        retry_delay: float = 30.0,
        max_attempts: int = 5,
        now: Callable[[], datetime] = utcnow,
    ) -> None:
        self._secrets = secrets
        self._audit = audit
        self._seen = seen or hooks.MemorySeen()
        self._aliases = dict(aliases or {})
        self._now = now
        self._retry_delay = retry_delay
        self._max_attempts = max_attempts
        self.pending = PendingChecks(grace)
        self._stopping = False
        self._connections = 0

    # --- HTTP ---------------------------------------------------------------------------------------------------

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One request per connection; never raises (a broken client only loses its own connection)."""
        peer = writer.get_extra_info("peername")
        method, path = "-", "-"
        if self._connections >= MAX_CONNECTIONS:
            log.warning("connection from %s refused: %d connections open", printable(str(peer)), self._connections)
            writer.close()
            return
        self._connections += 1
        try:
            try:
                async with asyncio.timeout(READ_DEADLINE_SECONDS):
                    method, path, headers = await _read_head(reader)
                    body = await self._read_body(reader, writer, headers)
            except _BadRequest as bad:
                result = HookResult(bad.status, reason=bad.reason)
            else:
                result = hooks.receive(
                    method,
                    path,
                    headers,
                    body,
                    self._secrets,
                    now=self._now(),
                    seen=self._seen,
                    aliases=self._aliases,
                )
            await _respond(writer, result)
            if result.requests:
                self.pending.add(result.requests)
                for request in result.requests:
                    log.info("queued check: %s (grace %g s)", request.display, self.pending.grace)
            log.log(
                logging.DEBUG if result.status == 204 else logging.INFO,
                "%s %s %s -> %d",
                printable(str(peer)),
                printable(method),
                _redacted(path),
                result.status,
            )
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError) as exc:
            log.info("connection from %s dropped: %s", printable(str(peer)), type(exc).__name__)
        finally:
            self._connections -= 1
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _read_body(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, headers: Mapping[str, str]
    ) -> bytes:
        if "transfer-encoding" in headers:
            raise _BadRequest(411, "chunked bodies are not accepted; send Content-Length")
        raw_length = headers.get("content-length", "0")
        if not raw_length.isdigit() or len(raw_length) > 12:
            raise _BadRequest(400, "invalid Content-Length")
        length = int(raw_length)
        if length > hooks.MAX_BODY_BYTES:
            raise _BadRequest(413, f"Content-Length {length} is over the limit")  # never read
        if headers.get("expect", "").lower() == "100-continue":
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            await writer.drain()
        return await reader.readexactly(length)

    # --- audits -------------------------------------------------------------------------------------------------

    async def work(self) -> None:
        """Run due batches one at a time until `stop()`; a batch already running is finished first."""
        while not self._stopping:
            due_in = self.pending.next_due_in()
            if due_in is None or due_in > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.pending.changed.wait(), timeout=due_in)
                self.pending.changed.clear()
                continue
            for requests, attempts in self.pending.take_due():
                if self._stopping:
                    log.warning("stopping: %s dropped; the scheduled run covers it", hooks.describe(requests))
                    continue
                await self._run_batch(requests, attempts)

    async def _run_batch(self, requests: list[CheckRequest], attempts: int) -> None:
        try:
            await self._audit(requests)
        except AuditError as exc:  # a store or the topic failed: nothing was saved, try again later
            self._retry(requests, attempts + 1, exc.message)
        except Exception as exc:  # a bug must not end the listener; the traceback is for us
            log.exception("targeted audit crashed")
            self._retry(requests, attempts + 1, type(exc).__name__)

    def _retry(self, requests: list[CheckRequest], attempts: int, why: str) -> None:
        if attempts >= self._max_attempts:
            log.error(
                "giving up on %s after %d attempts (%s); the scheduled run still audits them",
                hooks.describe(requests),
                attempts,
                printable(why),
            )
            return
        log.error("targeted audit failed (%s); retrying in %g s", printable(why), self._retry_delay)
        self.pending.add(requests, delay=self._retry_delay, attempts=attempts)

    def stop(self) -> None:
        """Stop taking batches; what is still waiting out its grace is dropped (the schedule covers it)."""
        self._stopping = True
        self.pending.changed.set()
        if len(self.pending):
            log.warning("stopping: %d pending check(s) dropped; the scheduled run covers them", len(self.pending))


async def _read_head(reader: asyncio.StreamReader) -> tuple[str, str, dict[str, str]]:
    """Request line and headers, bounded in size and count; header names lowercased."""
    total = 0
    lines: list[bytes] = []
    while True:
        try:
            line = await reader.readuntil(b"\n")
        except asyncio.LimitOverrunError:
            raise _BadRequest(431, "header line too long") from None
        total += len(line)
        if total > MAX_HEADER_BYTES or len(lines) > MAX_HEADERS:
            raise _BadRequest(431, "request head too large")
        if line in (b"\r\n", b"\n"):
            break
        lines.append(line.rstrip(b"\r\n"))
    if not lines:
        raise _BadRequest(400, "empty request")
    parts = lines[0].decode("latin-1").split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise _BadRequest(400, "malformed request line")
    method, target = parts[0], parts[1]
    headers: dict[str, str] = {}
    for raw in lines[1:]:
        name, sep, value = raw.decode("latin-1").partition(":")
        if not sep or not name or name != name.strip():
            raise _BadRequest(400, "malformed header line")
        key = name.lower()
        if key in headers and key in ("content-length", "authorization", "x-hub-signature-256"):
            raise _BadRequest(400, "duplicate header")
        headers[key] = value.strip()
    return method, target, headers


async def _respond(writer: asyncio.StreamWriter, result: HookResult) -> None:
    body = (result.body + "\n").encode() if result.body else b""
    lines = [f"HTTP/1.1 {result.status} {_REASONS.get(result.status, 'Status')}", "Connection: close"]
    if result.status != 204:
        lines += ["Content-Type: text/plain; charset=utf-8", f"Content-Length: {len(body)}"]
    if result.allow:
        lines.append(f"Allow: {result.allow}")
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("ascii") + body)
    await writer.drain()


def _redacted(path: str) -> str:
    """The Docker Hub route carries its token in the path: never log it."""
    if path.startswith("/hooks/dockerhub/"):
        return "/hooks/dockerhub/<token>"
    return printable(path, max_chars=100)
