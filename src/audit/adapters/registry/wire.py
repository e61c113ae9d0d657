"""HTTP/1.1 keep-alive connections on asyncio streams: the transport under httpx for direct connections.

A manifest check is one small request and one response head, so the per-request cost of the transport
decides how close `check` gets to the registry's own ceiling. This transport does only what the registry API
needs, on `asyncio` streams: one idle list per origin (the last connection used is reused first), requests
written in one piece, response heads read in one piece and parsed here. Through a proxy, httpx's own transport
is used instead (client.py): this one never speaks to proxies.

Everything a server sends is untrusted and bounded: a response head of at most `MAX_HEAD` bytes and
`MAX_HEADERS` fields, no bare CR or LF, no NUL, no folded lines, one Content-Length or a chunked body, chunk
size lines of at most 16 hex digits. Anything else is `httpx.RemoteProtocolError`, and the connection is
closed. Bodies are streamed as they arrive; `CappedTransport` (transport.py) bounds what is read.
A connection goes back to the idle list only after its response was read to the end and both sides agreed to
keep it; a cancelled or half-read exchange closes it. Requests refuse CR, LF or NUL in any header.
"""

from __future__ import annotations

import asyncio
import re
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Final

import httpx

MAX_HEAD: Final = 64 * 1024  # bytes of a response head (status line and fields); registries send about 600
MAX_HEADERS: Final = 256
MAX_INFORMATIONAL: Final = 8  # 1xx heads skipped before the final response
IDLE_SECONDS: Final = 20.0  # an idle connection older than this is closed, not reused (servers drop them)
_CHUNK: Final = 64 * 1024
_END_OF_HEAD: Final = b"\r\n\r\n"
_FIELD_NAME: Final = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_STATUS_LINE: Final = re.compile(rb"HTTP/1\.([01]) ([1-9][0-9][0-9])(?: ([^\r\n]*))?")
MAX_FIELD_BLOCKS: Final = 256  # distinct request field sets remembered, serialized and checked, per transport
_DIGITS: Final = re.compile(rb"[0-9]{1,18}")
_HEX: Final = re.compile(rb"[0-9A-Fa-f]{1,16}")
_NO_BODY_STATUS: Final = frozenset({204, 304})

type Origin = tuple[str, str, int]


class _Connection:
    __slots__ = ("idle_since", "reader", "reused", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.idle_since = 0.0
        self.reused = False

    def usable(self, now: float) -> bool:
        """Still open, nothing unread waiting (a server's close or stray bytes), and not idle too long."""
        return (
            not self.writer.transport.is_closing()
            and not self.reader.at_eof()
            and not _unread(self.reader)  # bytes nobody asked for: not clean
            and now - self.idle_since < IDLE_SECONDS
        )

    def close(self) -> None:
        # At once, not after a TLS close_notify exchange: `writer.close()` leaves that running, and whatever is
        # still running when the event loop ends leaks its socket. Nothing unsent matters once we close.
        self.writer.transport.abort()


def _unread(reader: asyncio.StreamReader) -> int:
    """Bytes received and not yet read (StreamReader keeps them in `_buffer`, with no public accessor)."""
    return len(getattr(reader, "_buffer", b""))


class _Pool:
    """The connections of one origin: idle ones (last used first) and a cap on how many exist at once."""

    __slots__ = ("closed", "idle", "slots")

    def __init__(self, limit: int) -> None:
        self.idle: list[_Connection] = []
        self.slots = asyncio.Semaphore(limit)
        self.closed = False  # the transport was closed: connections still in use are closed when done


class Http1Transport(httpx.AsyncBaseTransport):
    """Direct HTTP/1.1 keep-alive connections, at most `per_host` open at once per origin.

    `ssl_context` is called on the first https connection (a plain-http run never loads a CA bundle).
    Timeouts come from the request's `timeout` extension, as httpx sets them: connect, and each read (a read
    timeout of None: the caller bounds the exchange as a whole, as the registry client does).
    """

    def __init__(self, ssl_context: Callable[[], ssl.SSLContext], *, per_host: int) -> None:
        self._ssl_context = ssl_context
        self._per_host = max(1, per_host)
        self._pools: dict[Origin, _Pool] = {}
        self._blocks = _FieldBlocks()
        self._closed = False

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self._closed:
            raise httpx.ConnectError("transport closed", request=request)
        url = request.url
        scheme = url.scheme
        if scheme not in ("http", "https"):
            raise httpx.UnsupportedProtocol(f"unsupported scheme {scheme!r}", request=request)
        port = url.port or (443 if scheme == "https" else 80)
        origin = (scheme, url.host, port)
        pool = self._pools.get(origin)
        if pool is None:
            pool = self._pools[origin] = _Pool(self._per_host)
        timeouts = request.extensions.get("timeout", {})
        message = await _serialize(request, self._blocks)
        await pool.slots.acquire()
        try:
            return await self._exchange(request, message, pool, origin, timeouts)
        except BaseException:
            pool.slots.release()
            raise

    async def _exchange(
        self, request: httpx.Request, message: bytes, pool: _Pool, origin: Origin, timeouts: dict[str, float | None]
    ) -> httpx.Response:
        retried = False
        while True:
            idle = None if retried else self._idle(pool)  # a retry goes on a new connection, not another idle one
            connection = idle or await self._connect(request, origin, timeouts.get("connect"))
            try:
                connection.writer.write(message)
                if len(message) > _CHUNK:  # a large body: wait until the socket took it (the caller's timeout holds)
                    await _drained(connection.writer)
                head = await _read_head(connection.reader, timeouts.get("read"))
            except _StaleConnection:
                connection.close()
                # A reused connection the server had closed before our request reached it: once more, on a new
                # one. Only for methods that may be repeated: a POST may have been seen.
                if connection.reused and not retried and request.method in ("GET", "HEAD"):
                    retried = True
                    continue
                raise httpx.RemoteProtocolError("server disconnected without a response", request=request) from None
            except httpx.HTTPError as exc:
                connection.close()
                exc.request = request
                raise
            except BaseException:
                connection.close()
                raise
            break
        try:
            return _response(request, head, connection, pool, timeouts.get("read"))
        except httpx.HTTPError as exc:
            connection.close()
            exc.request = request
            raise

    def _idle(self, pool: _Pool) -> _Connection | None:
        now = time.monotonic()
        while pool.idle:
            connection = pool.idle.pop()
            if connection.usable(now):
                connection.reused = True
                return connection
            connection.close()
        return None

    async def _connect(self, request: httpx.Request, origin: Origin, limit: float | None) -> _Connection:
        scheme, host, port = origin
        context = self._ssl_context() if scheme == "https" else None
        try:
            async with asyncio.timeout(limit):
                reader, writer = await asyncio.open_connection(
                    host,
                    port,
                    ssl=context,
                    server_hostname=host if context is not None else None,
                    limit=MAX_HEAD,
                    happy_eyeballs_delay=0.25,
                )
        except TimeoutError:
            raise httpx.ConnectTimeout(f"connect to {host}:{port} timed out", request=request) from None
        except OSError as exc:  # refused, unreachable, DNS, TLS (ssl.SSLError is an OSError)
            raise httpx.ConnectError(f"connect to {host}:{port} failed: {exc}", request=request) from exc
        return _Connection(reader, writer)

    async def aclose(self) -> None:
        self._closed = True
        self._blocks.clear()
        for pool in self._pools.values():
            pool.closed = True
            for connection in pool.idle:
                connection.close()
            pool.idle.clear()


class _StaleConnection(Exception):
    """The connection ended before the first byte of a response."""


async def _serialize(request: httpx.Request, blocks: _FieldBlocks) -> bytes:
    """The request line, the fields and the body in one piece; CR, LF or NUL anywhere in the head is refused."""
    # Whatever the method, the body is sent: the fields announce it (the client's requests have none). A byte
    # stream is read as it is; httpx's `aread` would check the stream against a typing ABC every time.
    stream = request.stream
    body = b"".join(stream) if isinstance(stream, httpx.ByteStream) else await request.aread()
    if (body or request.method not in ("GET", "HEAD")) and request.headers.get(
        "transfer-encoding", ""
    ).lower() == "chunked":  # an empty body still needs its last chunk
        body = (b"%x\r\n%s\r\n" % (len(body), body) if body else b"") + b"0\r\n\r\n"
    line = b"%s %s HTTP/1.1\r\n" % (request.method.encode("ascii"), request.url.raw_path)
    if line.count(b"\n") != 1 or line.count(b"\r") != 1 or b"\0" in line:
        raise httpx.LocalProtocolError("the request target contains CR, LF or NUL", request=request)
    head = line + blocks.block(request)
    return head + body if body else head


class _FieldBlocks:
    """Request fields as they go on the wire, checked and joined once per distinct set of fields.

    A client sends a handful of distinct sets (one per Accept, host and Authorization), so each is built once;
    at most `MAX_FIELD_BLOCKS` are kept, per transport (they may hold tokens: never shared beyond it).
    """

    __slots__ = ("_blocks",)

    def __init__(self) -> None:
        self._blocks: dict[tuple[tuple[bytes, bytes], ...], bytes] = {}

    def __len__(self) -> int:
        return len(self._blocks)

    def clear(self) -> None:
        self._blocks.clear()

    def block(self, request: httpx.Request) -> bytes:
        fields = tuple(request.headers.raw)
        block = self._blocks.get(fields)
        if block is None:
            block = _field_block(fields, request)
            if len(self._blocks) >= MAX_FIELD_BLOCKS:
                self._blocks.clear()
            self._blocks[fields] = block
        return block


def _field_block(fields: tuple[tuple[bytes, bytes], ...], request: httpx.Request) -> bytes:
    """`name: value` lines and the empty line; a name that is not a token, or CR, LF or NUL, is refused."""
    lines = [b"%s: %s\r\n" % field for field in fields]
    lines.append(b"\r\n")
    block = b"".join(lines)
    # every line ends in CRLF and has no other CR or LF: a field smuggling a line break changes these counts
    if block.count(b"\n") != len(lines) or block.count(b"\r") != len(lines) or b"\0" in block:
        raise httpx.LocalProtocolError("a request field contains CR, LF or NUL", request=request)
    if any(not _FIELD_NAME.fullmatch(name) for name, _ in fields):
        raise httpx.LocalProtocolError("a request field name is not a token", request=request)
    return block


async def _drained(writer: asyncio.StreamWriter) -> None:
    try:
        await writer.drain()
    except OSError as exc:
        raise httpx.WriteError(f"sending the request failed: {exc}") from exc


async def _read_head(reader: asyncio.StreamReader, limit: float | None) -> _Head:
    for _ in range(MAX_INFORMATIONAL + 1):
        try:
            if limit is None:  # the caller bounds the whole exchange (client.py does): no timer per read
                raw = await reader.readuntil(_END_OF_HEAD)
            else:
                async with asyncio.timeout(limit):
                    raw = await reader.readuntil(_END_OF_HEAD)
        except asyncio.IncompleteReadError as exc:
            if not exc.partial:
                raise _StaleConnection from None
            raise httpx.RemoteProtocolError("server disconnected in the middle of a response head") from None
        except asyncio.LimitOverrunError:
            raise httpx.RemoteProtocolError(f"response head longer than {MAX_HEAD} bytes") from None
        except TimeoutError:
            raise httpx.ReadTimeout("no response head within the read timeout") from None
        except ConnectionResetError as exc:
            raise _StaleConnection from exc
        except OSError as exc:
            raise httpx.ReadError(f"reading the response failed: {exc}") from exc
        head = _Head.parse(raw)
        if head.status >= 200 or head.status == 101:
            return head
    raise httpx.RemoteProtocolError("too many informational responses")


class _Head:
    __slots__ = ("ascii", "fields", "keep_alive", "reason", "status")

    def __init__(
        self, status: int, reason: bytes, fields: list[tuple[bytes, bytes]], keep_alive: bool, *, ascii: bool
    ) -> None:
        self.status = status
        self.reason = reason
        self.fields = fields
        self.keep_alive = keep_alive
        self.ascii = ascii  # every byte of the head is ASCII (as registries send): httpx's header encoding is ascii

    @classmethod
    def parse(cls, raw: bytes) -> _Head:
        """The head `raw` (status line to the empty line), or RemoteProtocolError saying what is wrong with it."""
        lines = raw[:-4].split(b"\r\n")
        if raw.count(b"\n") != len(lines) + 1 or raw.count(b"\r") != len(lines) + 1 or b"\0" in raw:
            raise httpx.RemoteProtocolError("malformed response head (bare CR or LF, or NUL)")
        if len(lines) - 1 > MAX_HEADERS:
            raise httpx.RemoteProtocolError(f"response head with more than {MAX_HEADERS} fields")
        status_line = _STATUS_LINE.fullmatch(lines[0])
        if status_line is None:
            raise httpx.RemoteProtocolError(f"malformed status line {lines[0][:80]!r}")
        fields: list[tuple[bytes, bytes]] = []
        for line in lines[1:]:
            name, colon, value = line.partition(b":")
            if not colon or not _FIELD_NAME.fullmatch(name):  # also refuses obsolete line folding
                raise httpx.RemoteProtocolError(f"malformed response field {line[:80]!r}")
            fields.append((name, value.strip(b" \t")))
        keep_alive = status_line.group(1) == b"1"  # HTTP/1.0: closed after the response
        status, reason = int(status_line.group(2)), status_line.group(3) or b""
        return cls(status, reason, fields, keep_alive, ascii=raw.isascii())


def _response(
    request: httpx.Request, head: _Head, connection: _Connection, pool: _Pool, timeout: float | None
) -> httpx.Response:
    """The httpx response over `connection`, framed as RFC 9112 section 6.3 says."""
    length: int | None = None
    chunked = until_close = False
    keep_alive = head.keep_alive
    lengths: set[bytes] = set()
    codings: bytes | None = None  # every Transfer-Encoding field, joined; an empty one still counts
    for name, value in head.fields:
        lowered = name.lower()
        if lowered == b"content-length":
            lengths.update(part.strip() for part in value.split(b","))
        elif lowered == b"transfer-encoding":
            codings = value.lower() if codings is None else b"%s, %s" % (codings, value.lower())
        elif lowered == b"connection" and b"close" in (token.strip() for token in value.lower().split(b",")):
            keep_alive = False
    if request.method == "HEAD" or head.status < 200 or head.status in _NO_BODY_STATUS:
        length = 0
    elif codings is not None:
        # chunked is the last coding, or the body runs to the close; a Content-Length beside it is ignored and
        # the connection is not reused (RFC 9112 6.3: a message with both may be an attempt at smuggling)
        chunked = codings.rsplit(b",", 1)[-1].strip() == b"chunked"
        until_close = not chunked
        keep_alive = keep_alive and not lengths
    elif lengths:
        if len(lengths) != 1 or not _DIGITS.fullmatch(next(iter(lengths))):
            raise httpx.RemoteProtocolError("malformed or conflicting Content-Length")
        length = int(next(iter(lengths)))
    else:
        until_close = True
    if until_close or head.status == 101:  # after a 101 the connection no longer speaks HTTP/1.1
        keep_alive = False
    stream = _Body(connection, pool, length, chunked=chunked, keep_alive=keep_alive, timeout=timeout)
    response = httpx.Response(
        head.status,
        headers=head.fields,
        stream=stream,
        request=request,
        extensions={"http_version": b"HTTP/1.1", "reason_phrase": head.reason},
    )
    if head.ascii:
        # What httpx would find on the first lookup by decoding every field twice (about 4 us per response):
        # an all-ASCII head decodes as ascii. Any other head is left to httpx's own fallbacks.
        response.headers.encoding = "ascii"
    return response


class _Body(httpx.AsyncByteStream):
    """A response body as it arrives; closing it returns the connection to its pool only if it was read through."""

    def __init__(
        self,
        connection: _Connection,
        pool: _Pool,
        length: int | None,
        *,
        chunked: bool,
        keep_alive: bool,
        timeout: float | None,
    ) -> None:
        self._connection: _Connection | None = connection
        self._pool = pool
        self._length = length  # None: chunked, or until the connection closes
        self._chunked = chunked
        self._keep_alive = keep_alive
        self._timeout = timeout
        self._done = length == 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        connection = self._connection
        if connection is None or self._done:
            return
        reader = connection.reader
        try:
            if self._chunked:
                async for piece in self._chunks(reader):
                    yield piece
            elif self._length is not None:
                async for piece in self._exactly(reader, self._length, "before the end of the body"):
                    yield piece
            else:
                while piece := await self._read(reader.read(_CHUNK)):
                    yield piece
            self._done = True
        except asyncio.IncompleteReadError:
            raise httpx.RemoteProtocolError("server disconnected before the end of the body") from None
        except asyncio.LimitOverrunError:
            raise httpx.RemoteProtocolError("chunk size line too long") from None

    async def _chunks(self, reader: asyncio.StreamReader) -> AsyncIterator[bytes]:
        while True:
            line = await self._read(reader.readuntil(b"\r\n"))
            size_text = line[:-2].split(b";", 1)[0].strip(b" \t")
            if not _HEX.fullmatch(size_text):
                raise httpx.RemoteProtocolError(f"malformed chunk size {line[:40]!r}")
            size = int(size_text, 16)
            if size == 0:
                for _ in range(MAX_HEADERS + 1):  # trailer fields, then the empty line
                    if await self._read(reader.readuntil(b"\r\n")) == b"\r\n":
                        return
                raise httpx.RemoteProtocolError("too many trailer fields")
            async for piece in self._exactly(reader, size, "in the middle of a chunk"):
                yield piece
            if await self._read(reader.readexactly(2)) != b"\r\n":
                raise httpx.RemoteProtocolError("chunk not followed by CRLF")

    async def _exactly(self, reader: asyncio.StreamReader, size: int, where: str) -> AsyncIterator[bytes]:
        """`size` bytes, as they arrive; the connection ending first is `server disconnected <where>`."""
        while size:
            piece = await self._read(reader.read(min(size, _CHUNK)))
            if not piece:
                raise httpx.RemoteProtocolError(f"server disconnected {where}")
            size -= len(piece)
            yield piece

    async def _read[T](self, reading: Awaitable[T]) -> T:
        try:
            if self._timeout is None:
                return await reading
            async with asyncio.timeout(self._timeout):
                return await reading
        except TimeoutError:
            raise httpx.ReadTimeout("no body bytes within the read timeout") from None
        except OSError as exc:
            raise httpx.ReadError(f"reading the response failed: {exc}") from exc

    async def aclose(self) -> None:
        connection, self._connection = self._connection, None
        if connection is None:
            return
        if self._done and self._keep_alive and not self._pool.closed and not _unread(connection.reader):
            connection.idle_since = time.monotonic()
            self._pool.idle.append(connection)
        else:
            connection.close()
        self._pool.slots.release()
