"""A loopback HTTP/1.1 proxy that delays every request and logs it, to model a distant registry and to count.

It sits in front of the registry (latency runs) or moto (counting DynamoDB/SNS calls of a subprocess). Each
client connection gets its own upstream connection; requests on it are handled one at a time, as HTTP/1.1
without pipelining is, so N connections give at most N requests per latency period: the bound we compare to.
A connection that does not start with an HTTP method (TLS) is piped through, each chunk from the client held
back by the same latency without holding back the chunks behind it: one request costs one latency whether it
travels alone on an HTTP/1.1 connection or among many streams of one HTTP/2 connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import urllib.parse
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

_MAX_HEAD = 64 * 1024
_METHOD_START = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ")


@dataclass(frozen=True, slots=True)
class LoggedRequest:
    method: str
    path: str
    status: int
    operation: str | None  # X-Amz-Target (DynamoDB) or the form `Action` (SNS), when there is one
    user_agent: str


@dataclass
class RequestLog:
    """Requests seen by a proxy; thread-safe, because the proxy loop runs in its own thread."""

    _entries: list[LoggedRequest] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    raw_connections: int = 0

    def add(self, entry: LoggedRequest) -> None:
        with self._lock:
            self._entries.append(entry)

    def entries(self) -> list[LoggedRequest]:
        with self._lock:
            return list(self._entries)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self.raw_connections = 0

    def methods(self) -> Counter[str]:
        return Counter(entry.method for entry in self.entries())

    def operations(self) -> Counter[str]:
        return Counter(entry.operation or entry.method for entry in self.entries())


@dataclass(slots=True)
class _Head:
    raw: bytes
    first_line: str
    headers: dict[str, str]  # lower-cased names; the last value wins (enough for the fields used here)


async def _read_head(reader: asyncio.StreamReader, prefix: bytes = b"") -> _Head | None:
    try:
        raw = prefix + await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    except asyncio.LimitOverrunError as exc:
        raise ConnectionError("HTTP head too large") from exc
    lines = raw[:-4].decode("latin-1").split("\r\n")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return _Head(raw, lines[0], headers)


async def _read_body(reader: asyncio.StreamReader, head: _Head, *, no_body: bool) -> tuple[bytes, bool]:
    """The body as it appeared on the wire, and whether it was delimited by the connection closing."""
    if no_body:
        return b"", False
    if head.headers.get("transfer-encoding", "").lower() == "chunked":
        parts: list[bytes] = []
        while True:
            size_line = await reader.readuntil(b"\r\n")
            parts.append(size_line)
            size = int(size_line.split(b";")[0].strip(), 16)
            if size == 0:
                while True:  # trailers, then the empty line
                    trailer = await reader.readuntil(b"\r\n")
                    parts.append(trailer)
                    if trailer == b"\r\n":
                        return b"".join(parts), False
            parts.append(await reader.readexactly(size + 2))
    length = head.headers.get("content-length")
    if length is not None:
        return await reader.readexactly(int(length)), False
    return b"", True


def _operation(head: _Head, body: bytes) -> str | None:
    target = head.headers.get("x-amz-target")
    if target:
        return target.rpartition(".")[2]
    if head.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
        action = urllib.parse.parse_qs(body.decode("latin-1")).get("Action")
        if action:
            return action[0]
    return None


class LatencyProxy:
    """`with LatencyProxy(upstream_host, upstream_port, latency=0.05) as proxy:` then talk to `proxy.host`."""

    def __init__(self, upstream_host: str, upstream_port: int, *, latency: float = 0.0) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.latency = latency
        self.log = RequestLog()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="bench-proxy", daemon=True)
        self._server: asyncio.Server | None = None
        self._port = 0

    @property
    def port(self) -> int:
        return self._port

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self._port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def __enter__(self) -> LatencyProxy:
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(self._start(), self._loop)
        future.result(timeout=10)
        return self

    def __exit__(self, *exc_info: object) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, limit=_MAX_HEAD, backlog=1024)
        self._port = self._server.sockets[0].getsockname()[1]

    async def _stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()
            await self._server.wait_closed()

    async def _serve(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        upstream_writer: asyncio.StreamWriter | None = None
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self.upstream, limit=_MAX_HEAD)
            first = await client_reader.read(1)
            if not first:
                return
            if first[0] not in _METHOD_START:
                self.log.raw_connections += 1
                upstream_writer.write(first)
                await _pipe_both(client_reader, client_writer, upstream_reader, upstream_writer, self.latency)
                return
            prefix = first
            while True:
                head = await _read_head(client_reader, prefix)
                prefix = b""
                if head is None:
                    return
                method, path = head.first_line.split(" ")[:2]
                request_body, _ = await _read_body(client_reader, head, no_body=False)
                if self.latency > 0:
                    await asyncio.sleep(self.latency)
                upstream_writer.write(head.raw + request_body)
                await upstream_writer.drain()
                response = await _read_head(upstream_reader)
                if response is None:
                    return
                status = int(response.first_line.split(" ")[1])
                no_body = method == "HEAD" or status in (204, 304) or 100 <= status < 200
                response_body, until_close = await _read_body(upstream_reader, response, no_body=no_body)
                client_writer.write(response.raw + response_body)
                if until_close:
                    await _pipe(upstream_reader, client_writer)
                await client_writer.drain()
                self.log.add(
                    LoggedRequest(
                        method=method,
                        path=path,
                        status=status,
                        operation=_operation(head, request_body),
                        user_agent=head.headers.get("user-agent", ""),
                    )
                )
                closing = "close" in (
                    head.headers.get("connection", "").lower(),
                    response.headers.get("connection", "").lower(),
                )
                if until_close or closing or response.first_line.startswith("HTTP/1.0"):
                    return
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
            return
        finally:
            for writer in (client_writer, upstream_writer):
                if writer is not None:
                    writer.close()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while chunk := await reader.read(65536):
        writer.write(chunk)
        await writer.drain()


async def _delayed_pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, latency: float) -> None:
    """Forward every chunk `latency` seconds after it arrived, in order, without serialising the waits."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue()

    async def forward() -> None:
        while (item := await queue.get()) is not None:
            due, chunk = item
            if (wait := due - loop.time()) > 0:
                await asyncio.sleep(wait)
            writer.write(chunk)
            await writer.drain()

    forwarder = asyncio.create_task(forward())
    try:
        while chunk := await reader.read(65536):
            queue.put_nowait((loop.time() + latency, chunk))
    finally:
        queue.put_nowait(None)
        await forwarder


async def _pipe_both(
    client_reader: asyncio.StreamReader,
    client_writer: asyncio.StreamWriter,
    upstream_reader: asyncio.StreamReader,
    upstream_writer: asyncio.StreamWriter,
    latency: float = 0.0,
) -> None:
    async def one_way(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            await (_delayed_pipe(reader, writer, delay) if delay > 0 else _pipe(reader, writer))
        with contextlib.suppress(ConnectionError, OSError):
            writer.write_eof()

    await asyncio.gather(one_way(client_reader, upstream_writer, latency), one_way(upstream_reader, client_writer, 0.0))


@contextlib.contextmanager
def proxied(upstream_host: str, upstream_port: int, latency: float) -> Iterator[LatencyProxy]:
    with LatencyProxy(upstream_host, upstream_port, latency=latency) as proxy:
        yield proxy
