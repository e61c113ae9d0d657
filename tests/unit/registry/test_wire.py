"""Http1Transport (wire.py) against a real loopback server that answers with scripted raw bytes.

The server records every request exactly as it arrived, how many connections it accepted, how many were open at
once and how many the client closed, so each test can say which connection carried what.
"""

from __future__ import annotations

import asyncio
import gc
import socket
import ssl
import threading
import warnings
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from audit.adapters.registry import wire
from audit.adapters.registry.wire import Http1Transport
from tests.support.tls import LocalCA

# a connection left for the garbage collector to close (StreamWriter.__del__ warns) fails the test
pytestmark = [
    pytest.mark.filterwarnings("error::ResourceWarning"),
    pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning"),
]

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
MANIFEST_PATH = "/v2/x/manifests/t"


@dataclass(frozen=True)
class Reply:
    """What the server does with one request: send `data` (after `delay`), then close, stall, or await the next."""

    data: bytes = b""
    close: bool = False  # close the connection after sending (with no data: drop the request unanswered)
    stall: bool = False  # send nothing more and keep the connection open until the client closes it
    delay: float = 0.0
    later: bytes = b""  # sent 20 ms after `data`, unasked, while the connection is (likely) idle


class ScriptedServer:
    """A loopback HTTP/1.1 server: each request it reads gets the next scripted reply, whatever its connection."""

    def __init__(self, replies: tuple[bytes | Reply, ...]) -> None:
        self.replies = deque(reply if isinstance(reply, Reply) else Reply(reply) for reply in replies)
        self.requests: list[bytes] = []  # each request as received: head and body
        self.accepted = 0
        self.open = 0
        self.most_open = 0
        self.client_closes = 0  # connections the client ended (EOF or reset seen while waiting for a request)
        self.port = 0
        self._changed = asyncio.Condition()  # notified on every request and every close by the client

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self.open += 1
        self.most_open = max(self.most_open, self.open)
        try:
            while (request := await self._read_request(reader)) is not None:
                self.requests.append(request)
                await self._note()
                reply = self.replies.popleft() if self.replies else Reply(close=True)
                await asyncio.sleep(reply.delay)
                writer.write(reply.data)
                await writer.drain()
                if reply.later:
                    await asyncio.sleep(0.02)
                    writer.write(reply.later)
                if reply.close:
                    return
                if reply.stall:
                    with suppress(OSError):
                        await reader.read()
                    await self._note(closed=True)
                    return
            await self._note(closed=True)
        except OSError:
            pass
        finally:
            self.open -= 1
            writer.close()

    @staticmethod
    async def _read_request(reader: asyncio.StreamReader) -> bytes | None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            return head + await ScriptedServer._read_body(reader, head)
        except (asyncio.IncompleteReadError, ConnectionResetError):
            return None

    @staticmethod
    async def _read_body(reader: asyncio.StreamReader, head: bytes) -> bytes:
        length = 0
        chunked = False
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.lower() == b"content-length":
                length = int(value)
            elif name.lower() == b"transfer-encoding":
                chunked = value.strip().lower() == b"chunked"
        if chunked:
            return await reader.readuntil(b"0\r\n\r\n")
        return await reader.readexactly(length)

    async def _note(self, *, closed: bool = False) -> None:
        self.client_closes += closed
        async with self._changed:
            self._changed.notify_all()

    async def until(self, done: Callable[[], bool]) -> None:
        """Wait (at most 1 s) until `done()` holds."""
        async with asyncio.timeout(1.0), self._changed:
            await self._changed.wait_for(done)

    async def client_closed(self, count: int = 1) -> None:
        """Wait until the client has closed `count` connections."""
        await self.until(lambda: self.client_closes >= count)

    def url(self, path: str = MANIFEST_PATH) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


@asynccontextmanager
async def scripted(*replies: bytes | Reply, per_host: int = 4) -> AsyncIterator[tuple[ScriptedServer, Http1Transport]]:
    """A scripted server on 127.0.0.1 (port 0) and a transport to it; both closed on the way out."""
    server = ScriptedServer(replies)
    listener = await asyncio.start_server(server.serve, "127.0.0.1", 0)
    server.port = listener.sockets[0].getsockname()[1]
    transport = Http1Transport(_no_tls, per_host=per_host)
    try:
        yield server, transport
    finally:
        await transport.aclose()
        listener.close()
        listener.close_clients()
        await listener.wait_closed()


def _no_tls() -> ssl.SSLContext:
    raise AssertionError("plain http must not build a TLS context")


def request(
    url: str,
    method: str = "GET",
    *,
    timeout: float = 5.0,
    connect: float | None = None,
    **kwargs: object,
) -> httpx.Request:
    built = httpx.Request(method, url, **kwargs)  # type: ignore[arg-type]
    limits = httpx.Timeout(timeout, connect=timeout if connect is None else connect)
    built.extensions["timeout"] = limits.as_dict()
    return built


async def fetch(transport: Http1Transport, built: httpx.Request) -> httpx.Response:
    """One exchange, its body read to the end and the response closed, as client.py does."""
    response = await transport.handle_async_request(built)
    try:
        await response.aread()
    finally:
        await response.aclose()
    return response


async def get(server: ScriptedServer, transport: Http1Transport, method: str = "GET") -> httpx.Response:
    return await fetch(transport, request(server.url(), method))


# -- keep-alive and the request on the wire


async def test_keep_alive_two_requests_one_connection_exact_bytes() -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\nDocker-Content-Digest: sha256:abc\r\n\r\n"
    async with scripted(head, head) as (server, transport):
        headers = {"Accept": "application/vnd.oci.image.manifest.v1+json", "User-Agent": "digest-audit/0.1"}
        responses = [await fetch(transport, request(server.url(), "HEAD", headers=headers)) for _ in range(2)]
    assert server.accepted == 1
    expected = (
        b"HEAD /v2/x/manifests/t HTTP/1.1\r\n"
        b"Host: 127.0.0.1:%d\r\n"
        b"Accept: application/vnd.oci.image.manifest.v1+json\r\n"
        b"User-Agent: digest-audit/0.1\r\n"
        b"\r\n"
    ) % server.port
    assert server.requests == [expected, expected]
    for response in responses:
        assert response.status_code == 200
        assert response.content == b""
        assert response.headers["docker-content-digest"] == "sha256:abc"
        assert response.headers["content-length"] == "7"
        assert response.extensions["reason_phrase"] == b"OK"


async def test_query_is_sent_in_the_request_target() -> None:
    async with scripted(OK) as (server, transport):
        await fetch(transport, request(server.url("/v2/x/tags/list?n=100&last=a%2Fb")))
    assert server.requests[0].startswith(b"GET /v2/x/tags/list?n=100&last=a%2Fb HTTP/1.1\r\n")


async def test_post_sends_content_length_and_the_form_body() -> None:
    reply = b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 15\r\n\r\n{"token": "t1"}'
    form = {"grant_type": "password", "service": "reg", "scope": "repository:x:pull"}
    async with scripted(reply, OK) as (server, transport):
        response = await fetch(transport, request(server.url("/token"), "POST", data=form))
        await get(server, transport)
    body = b"grant_type=password&service=reg&scope=repository%3Ax%3Apull"
    assert server.requests[0] == (
        b"POST /token HTTP/1.1\r\n"
        b"Host: 127.0.0.1:%d\r\n"
        b"Content-Length: %d\r\n"
        b"Content-Type: application/x-www-form-urlencoded\r\n"
        b"\r\n%s"
    ) % (server.port, len(body), body)
    assert response.json() == {"token": "t1"}
    assert server.accepted == 1  # the body was framed exactly: the next request parsed on the same connection


async def _stream(*pieces: bytes) -> AsyncIterator[bytes]:
    for piece in pieces:
        yield piece


@pytest.mark.parametrize(
    ("pieces", "sent"),
    [((b"hello", b" world"), b"b\r\nhello world\r\n0\r\n\r\n"), ((), b"0\r\n\r\n")],
    ids=["body", "empty"],
)
async def test_streamed_post_is_sent_chunked(pieces: tuple[bytes, ...], sent: bytes) -> None:
    async with scripted(OK) as (server, transport):
        await fetch(transport, request(server.url("/upload"), "POST", timeout=0.3, content=_stream(*pieces)))
    assert b"\r\nTransfer-Encoding: chunked\r\n" in server.requests[0]
    assert server.requests[0].endswith(b"\r\n\r\n" + sent)


@pytest.mark.parametrize(
    "field",
    [
        b"X-Note: plain",
        "X-Note: caf\u00e9".encode(),  # UTF-8
        "X-Note: caf\u00e9".encode("latin-1"),  # neither ASCII nor UTF-8
    ],
)
async def test_response_fields_decode_as_httpx_decodes_them(field: bytes) -> None:
    """The wire presets the ascii encoding only for an all-ASCII head; others keep httpx's own fallbacks."""
    reply = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n%s\r\n\r\n" % field
    async with scripted(reply) as (server, transport):
        response = await get(server, transport)
    name, value = field.split(b": ", 1)
    by_httpx = httpx.Headers([(b"Content-Length", b"0"), (name, value)])
    assert response.headers.encoding == by_httpx.encoding
    assert response.headers["x-note"] == by_httpx["x-note"]
    assert response.headers.get("docker-content-digest") is None


# -- framing


async def test_content_length_body_is_read_exactly() -> None:
    async with scripted(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", OK) as (server, transport):
        first = await get(server, transport)
        second = await get(server, transport)
    assert (first.content, second.content) == (b"hello", b"ok")
    assert server.accepted == 1


async def test_chunked_body_with_extensions_and_trailers_is_decoded() -> None:
    reply = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5;name=value\r\nhello\r\n"
        b"7 ; ext\r\n, world\r\n"
        b"A\r\n0123456789\r\n"
        b"0;last\r\nX-Trailer: t\r\nX-Other: u\r\n\r\n"
    )
    async with scripted(reply, OK) as (server, transport):
        first = await get(server, transport)
        second = await get(server, transport)
    assert first.content == b"hello, world0123456789"
    assert second.content == b"ok"
    assert server.accepted == 1


async def test_body_until_close_is_read_and_connection_not_reused() -> None:
    async with scripted(Reply(b"HTTP/1.1 200 OK\r\n\r\nall of it", close=True), OK) as (server, transport):
        first = await get(server, transport)
        second = await get(server, transport)
    assert (first.content, second.content) == (b"all of it", b"ok")
    assert server.accepted == 2


@pytest.mark.parametrize(
    "reply",
    [
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nConnection: keep-alive, Close\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok",
    ],
    ids=["close", "close-in-list", "http-1.0", "http-1.0-keep-alive"],
)
async def test_connection_close_and_http_1_0_are_not_reused(reply: bytes) -> None:
    async with scripted(reply, OK) as (server, transport):
        first = await get(server, transport)
        await server.client_closed(1)  # the client closed it, the server did not
        second = await get(server, transport)
    assert (first.content, second.content) == (b"ok", b"ok")
    assert server.accepted == 2


async def test_transfer_encoding_with_content_length_is_chunked_and_not_reused() -> None:
    reply = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    async with scripted(reply, OK) as (server, transport):
        first = await get(server, transport)
        await server.client_closed(1)
        await get(server, transport)
    assert first.content == b"hello"
    assert server.accepted == 2


@pytest.mark.parametrize(
    ("fields", "body"),
    [
        (b"Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n", b"ok"),
        (b"Transfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n", b"2\r\nok\r\n0\r\n\r\nextra"),
        (b"Transfer-Encoding: chunked\r\nTransfer-Encoding:\r\n", b"2\r\nok\r\n0\r\n\r\nextra"),
    ],
    ids=["chunked-last", "chunked-not-last", "empty-last"],
)
async def test_transfer_encoding_fields_are_joined(fields: bytes, body: bytes) -> None:
    reply = b"HTTP/1.1 200 OK\r\n" + fields + b"Content-Length: 2\r\n\r\n2\r\nok\r\n0\r\n\r\nextra"
    async with scripted(Reply(reply, close=True), OK) as (server, transport):
        first = await get(server, transport)
        await get(server, transport)
    assert first.content == body  # chunked if it is the last coding, else up to the close; never Content-Length
    assert server.accepted == 2


async def test_informational_responses_are_skipped() -> None:
    reply = (
        b"HTTP/1.1 100 Continue\r\n\r\n"
        b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>\r\n\r\n"
        b"HTTP/1.1 201 Created\r\nContent-Length: 4\r\n\r\ndone"
    )
    async with scripted(reply, OK) as (server, transport):
        first = await get(server, transport)
        second = await get(server, transport)
    assert (first.status_code, first.content, "link" in first.headers) == (201, b"done", False)
    assert second.content == b"ok"
    assert server.accepted == 1


@pytest.mark.parametrize(
    ("method", "reply"),
    [
        ("GET", b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n"),
        ("GET", b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n"),
        ("GET", b"HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\n"),
        ("HEAD", b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"),
        ("HEAD", b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n"),
    ],
    ids=["204", "304", "304-chunked", "head", "head-chunked"],
)
async def test_no_body_responses_ignore_their_framing(method: str, reply: bytes) -> None:
    async with scripted(reply, OK) as (server, transport):
        first = await get(server, transport, method)
        second = await get(server, transport)
    assert first.content == b""
    assert second.content == b"ok"
    assert server.accepted == 1


async def test_switching_protocols_connection_is_not_reused() -> None:
    reply = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n"
    async with scripted(reply, OK) as (server, transport):
        first = await get(server, transport)
        second = await get(server, transport)
    assert (first.status_code, second.content) == (101, b"ok")
    assert server.accepted == 2


async def test_head_at_the_field_limit_is_accepted() -> None:
    fields = b"".join(b"X-F%d: v\r\n" % n for n in range(wire.MAX_HEADERS - 1))
    async with scripted(b"HTTP/1.1 200 OK\r\n" + fields + b"Content-Length: 2\r\n\r\nok") as (server, transport):
        response = await get(server, transport)
    assert response.content == b"ok"
    assert len(response.headers) == wire.MAX_HEADERS


# -- malformed responses


def _malformed() -> Iterator[object]:
    def case(name: str, data: bytes, *, server_closes: bool = False) -> object:
        return pytest.param(Reply(data, close=server_closes), server_closes, id=name)

    yield case("status-line-4-digit-code", b"HTTP/1.1 2000 OK\r\nContent-Length: 0\r\n\r\n")
    yield case("status-line-http2", b"HTTP/2 200 OK\r\nContent-Length: 0\r\n\r\n")
    yield case("status-line-not-http", b"ICY 200 OK\r\nContent-Length: 0\r\n\r\n")
    yield case("status-line-leading-space", b" HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    yield case("field-without-colon", b"HTTP/1.1 200 OK\r\nNoColon\r\nContent-Length: 0\r\n\r\n")
    yield case("field-space-before-colon", b"HTTP/1.1 200 OK\r\nContent-Length : 0\r\n\r\n")
    yield case("obs-fold", b"HTTP/1.1 200 OK\r\nX-A: a\r\n folded\r\nContent-Length: 0\r\n\r\n")
    yield case("obs-fold-tab", b"HTTP/1.1 200 OK\r\nX-A: a\r\n\tfolded: x\r\nContent-Length: 0\r\n\r\n")
    yield case("bare-lf-in-field", b"HTTP/1.1 200 OK\r\nX-A: a\nX-B: b\r\nContent-Length: 0\r\n\r\n")
    yield case("bare-cr-in-field", b"HTTP/1.1 200 OK\r\nX-A: a\rb\r\nContent-Length: 0\r\n\r\n")
    yield case("nul-in-field", b"HTTP/1.1 200 OK\r\nX-A: a\0b\r\nContent-Length: 0\r\n\r\n")
    yield case("nul-in-reason", b"HTTP/1.1 200 O\0K\r\nContent-Length: 0\r\n\r\n")
    yield case("two-content-lengths", b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok")
    yield case("content-length-list", b"HTTP/1.1 200 OK\r\nContent-Length: 2, 3\r\n\r\nok")
    yield case("content-length-not-digits", b"HTTP/1.1 200 OK\r\nContent-Length: 2a\r\n\r\nok")
    yield case("content-length-negative", b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\nok")
    yield case("content-length-plus", b"HTTP/1.1 200 OK\r\nContent-Length: +2\r\n\r\nok")
    yield case("content-length-empty", b"HTTP/1.1 200 OK\r\nContent-Length:\r\n\r\nok")
    yield case("content-length-huge", b"HTTP/1.1 200 OK\r\nContent-Length: 1%s\r\n\r\nok" % (b"0" * 18))
    many = b"".join(b"X-F%d: v\r\n" % n for n in range(wire.MAX_HEADERS + 1))
    yield case("too-many-fields", b"HTTP/1.1 200 OK\r\n" + many + b"Content-Length: 0\r\n\r\n")
    yield case("head-too-long", b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * (2 * wire.MAX_HEAD))
    yield case("too-many-1xx", b"HTTP/1.1 100 Continue\r\n\r\n" * (wire.MAX_INFORMATIONAL + 1) + OK)
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    yield case("chunk-size-not-hex", chunked + b"zz\r\nok\r\n0\r\n\r\n")
    yield case("chunk-size-negative", chunked + b"-2\r\nok\r\n0\r\n\r\n")
    yield case("chunk-size-empty", chunked + b"\r\nok\r\n0\r\n\r\n")
    yield case("chunk-size-17-digits", chunked + b"1" * 17 + b"\r\nok\r\n0\r\n\r\n")
    yield case("chunk-size-0x", chunked + b"0x2\r\nok\r\n0\r\n\r\n")
    yield case("chunk-without-crlf", chunked + b"2\r\nokXX0\r\n\r\n")
    yield case("chunk-size-line-too-long", chunked + b"2;" + b"e" * (2 * wire.MAX_HEAD))
    yield case("close-before-head-end", b"HTTP/1.1 200 OK\r\nContent-Le", server_closes=True)
    yield case("close-mid-body", b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", server_closes=True)
    yield case("close-mid-chunk", chunked + b"a\r\nshort", server_closes=True)
    yield case("close-before-last-chunk", chunked + b"2\r\nok\r\n", server_closes=True)
    yield case("close-in-trailers", chunked + b"2\r\nok\r\n0\r\nX-T: 1\r\n", server_closes=True)


@pytest.mark.parametrize(("reply", "server_closes"), list(_malformed()))
async def test_malformed_response_is_refused_and_connection_closed(reply: Reply, server_closes: bool) -> None:
    async with scripted(reply, OK) as (server, transport):
        with pytest.raises(httpx.RemoteProtocolError) as caught:
            await fetch(transport, request(server.url(), timeout=0.5))
        if not server_closes:
            await server.client_closed(1)
        after = await get(server, transport)
    assert caught.value.request.url == server.url()
    assert after.content == b"ok"
    assert server.accepted == 2  # the broken connection was not reused


# -- stale connections


async def test_idle_connection_closed_by_server_is_replaced() -> None:
    async with scripted(Reply(OK, close=True), OK) as (server, transport):
        await get(server, transport)
        await asyncio.sleep(0.05)  # the server's FIN arrives while the connection is idle
        second = await get(server, transport)
    assert second.content == b"ok"
    assert server.accepted == 2
    assert len(server.requests) == 2


@pytest.mark.parametrize("method", ["GET", "HEAD"])
async def test_reused_connection_dropped_unanswered_is_retried_once_for_get_and_head(method: str) -> None:
    reply = OK if method == "GET" else OK.removesuffix(b"ok")  # a HEAD response has no body on the wire
    async with scripted(reply, Reply(close=True), reply) as (server, transport):
        await get(server, transport, method)
        second = await get(server, transport, method)
    assert second.status_code == 200
    assert server.accepted == 2
    assert len(server.requests) == 3  # the dropped request, then once more on a new connection
    assert server.requests[1] == server.requests[2]


async def test_reused_connection_dropped_unanswered_is_not_retried_for_post() -> None:
    async with scripted(OK, Reply(close=True), OK) as (server, transport):
        await get(server, transport)
        with pytest.raises(httpx.RemoteProtocolError):
            await fetch(transport, request(server.url("/token"), "POST", data={"a": "b"}))
    assert server.accepted == 1
    assert len(server.requests) == 2


async def test_new_connection_dropped_unanswered_is_not_retried() -> None:
    async with scripted(Reply(close=True), OK) as (server, transport):
        with pytest.raises(httpx.RemoteProtocolError):
            await get(server, transport)
    assert server.accepted == 1
    assert len(server.requests) == 1


async def test_dropped_twice_is_retried_only_once() -> None:
    async with scripted(OK, Reply(close=True), Reply(close=True), OK) as (server, transport):
        await get(server, transport)
        with pytest.raises(httpx.RemoteProtocolError):
            await get(server, transport)
    assert server.accepted == 2
    assert len(server.requests) == 3


async def test_stray_bytes_after_a_response_make_the_connection_unusable() -> None:
    async with scripted(OK + b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nstray", OK) as (server, transport):
        await get(server, transport)
        await server.client_closed(1)
        second = await get(server, transport)
    assert second.content == b"ok"
    assert server.accepted == 2


async def test_bytes_arriving_on_an_idle_connection_make_it_unusable() -> None:
    async with scripted(Reply(OK, later=b"HTTP/1.1 408 Request Timeout\r\n\r\n"), OK) as (server, transport):
        await get(server, transport)
        await asyncio.sleep(0.05)
        second = await get(server, transport)
    assert second.content == b"ok"
    assert server.accepted == 2


async def test_retry_goes_on_a_new_connection_not_another_idle_one() -> None:
    replies = (Reply(OK, delay=0.02), Reply(OK, delay=0.02), Reply(close=True), OK)
    async with scripted(*replies, per_host=2) as (server, transport):
        await asyncio.gather(get(server, transport), get(server, transport))  # two idle connections
        second = await get(server, transport)
    assert second.content == b"ok"
    assert server.accepted == 3
    assert len(server.requests) == 4


# -- responses not read to the end


async def test_unread_body_closes_the_connection() -> None:
    async with scripted(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n0123456789", OK) as (server, transport):
        response = await transport.handle_async_request(request(server.url()))
        await response.aclose()
        await server.client_closed(1)
        second = await get(server, transport)
    assert second.content == b"ok"
    assert server.accepted == 2


async def test_partly_read_body_closes_the_connection() -> None:
    size = 1024 * 1024
    reply = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (size, b"x" * size)
    async with scripted(reply, OK) as (server, transport):
        response = await transport.handle_async_request(request(server.url()))
        stream = response.aiter_raw()
        first = await anext(stream)
        await response.aclose()
        await server.client_closed(1)
        second = await get(server, transport)
    assert 0 < len(first) < size
    assert second.content == b"ok"
    assert server.accepted == 2


# -- requests refused before anything is sent


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("X-Evil", "a\r\nInjected: 1"),
        ("X-Evil", "a\nInjected: 1"),
        ("X-Evil", "a\rb"),
        ("X-Evil", "a\0b"),
        ("X Evil", "a"),
        ("X-Evil:", "a"),
    ],
    ids=["crlf", "lf", "cr", "nul", "space-in-name", "colon-in-name"],
)
async def test_request_header_injection_is_refused_before_sending(name: str, value: str) -> None:
    async with scripted(OK) as (server, transport):
        for _ in range(2):  # refused every time: a refused set of fields is never remembered as checked
            with pytest.raises(httpx.LocalProtocolError):
                await fetch(transport, request(server.url(), headers={name: value}))
        await asyncio.sleep(0.01)
    assert server.accepted == 0
    assert server.requests == []


async def test_a_request_target_with_a_line_break_is_refused_before_sending() -> None:
    """httpx percent-encodes CR and LF in a URL; should a target ever hold one, it never reaches the wire."""
    async with scripted(OK) as (server, transport):
        smuggling = request(server.url())
        object.__setattr__(smuggling, "url", _RawPath(b"/v2/x/manifests/t HTTP/1.1\r\nX-Injected: 1\r\nY:"))
        with pytest.raises(httpx.LocalProtocolError, match="request target"):
            await transport.handle_async_request(smuggling)
    assert server.accepted == 0


@dataclass(frozen=True)
class _RawPath:
    """Stands in for a request's URL where the transport reads it: the origin and the raw path."""

    raw_path: bytes
    scheme: str = "http"
    host: str = "127.0.0.1"
    port: int | None = 9


async def test_each_distinct_set_of_request_fields_is_joined_once_and_the_sets_are_bounded() -> None:
    replies = [OK] * 4
    async with scripted(*replies) as (server, transport):
        for authorization in ("Bearer a", "Bearer a", "Bearer b"):
            await fetch(transport, request(server.url(), headers={"Authorization": authorization}))
        assert len(transport._blocks) == 2  # "Bearer a" twice: one set
        await get(server, transport)
        assert len(transport._blocks) == 3
    assert [sent.split(b"\r\n")[2] for sent in server.requests[:3]] == [
        b"Authorization: Bearer a",
        b"Authorization: Bearer a",
        b"Authorization: Bearer b",
    ]
    assert len(transport._blocks) == 0  # closing the transport forgets them (they may hold tokens)


def test_remembered_field_sets_never_exceed_their_bound() -> None:
    blocks = wire._FieldBlocks()
    for n in range(wire.MAX_FIELD_BLOCKS + 5):
        built = httpx.Request("GET", "http://127.0.0.1/", headers={"X-N": str(n)})
        assert blocks.block(built).endswith(b"X-N: %d\r\n\r\n" % n)
        assert len(blocks) <= wire.MAX_FIELD_BLOCKS


# -- timeouts and connection failures


async def test_no_response_head_within_the_read_timeout() -> None:
    async with scripted(Reply(b"HTTP/1.1 200 OK\r\n", stall=True), OK) as (server, transport):
        with pytest.raises(httpx.ReadTimeout) as caught:
            await fetch(transport, request(server.url(), timeout=0.1))
        await server.client_closed(1)
        await get(server, transport)
    assert caught.value.request.url == server.url()
    assert server.accepted == 2


async def test_stalled_body_is_a_read_timeout() -> None:
    reply = Reply(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", stall=True)
    async with scripted(reply, OK) as (server, transport):
        with pytest.raises(httpx.ReadTimeout):
            await fetch(transport, request(server.url(), timeout=0.1))
        await server.client_closed(1)
        await get(server, transport)
    assert server.accepted == 2


async def test_connection_refused_is_a_connect_error() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again: nothing listens there
    transport = Http1Transport(_no_tls, per_host=1)
    with pytest.raises(httpx.ConnectError) as caught:
        await fetch(transport, request(f"http://127.0.0.1:{port}/v2/"))
    causes: list[BaseException] = []
    error: BaseException | None = caught.value
    while error is not None:
        causes.append(error)
        error = error.__cause__
    assert any(isinstance(cause, ConnectionRefusedError) for cause in causes)
    await transport.aclose()


async def test_connect_timeout() -> None:
    # Outbound connections are intercepted here (even 10.255.255.1 connects at once), so the timeout is made on
    # loopback: a listener with a full accept queue drops further SYNs and the connect hangs.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        held: list[asyncio.StreamWriter] = []
        for _ in range(8):
            try:
                async with asyncio.timeout(0.05):
                    held.append((await asyncio.open_connection("127.0.0.1", port))[1])
            except TimeoutError:
                break
        else:
            pytest.skip("the accept queue never filled: connects cannot be made to hang here")
        transport = Http1Transport(_no_tls, per_host=1)
        try:
            with pytest.raises(httpx.ConnectTimeout):
                await fetch(transport, request(f"http://127.0.0.1:{port}/v2/", connect=0.1))
        finally:
            await transport.aclose()
            for writer in held:
                writer.close()


# -- limits, closing, cancelling


async def test_per_host_limit_bounds_open_connections() -> None:
    async with scripted(*(Reply(OK, delay=0.05) for _ in range(5)), per_host=2) as (server, transport):
        responses = await asyncio.gather(*(get(server, transport) for _ in range(5)))
    assert [response.content for response in responses] == [b"ok"] * 5
    assert server.most_open == 2
    assert server.accepted == 2  # the other three reused them


async def test_aclose_closes_idle_connections_and_refuses_new_requests() -> None:
    async with scripted(OK, OK) as (server, transport):
        await get(server, transport)
        await transport.aclose()
        await server.client_closed(1)
        with pytest.raises(httpx.ConnectError):
            await get(server, transport)
    assert server.accepted == 1
    assert len(server.requests) == 1


async def test_response_closed_after_transport_aclose_is_not_kept() -> None:
    async with scripted(OK) as (server, transport):
        response = await transport.handle_async_request(request(server.url()))
        await transport.aclose()
        await response.aread()
        await response.aclose()
        await server.client_closed(1)
    assert response.content == b"ok"


async def _read_in_task(transport: Http1Transport, built: httpx.Request) -> None:
    await fetch(transport, built)


@pytest.mark.parametrize(
    "stalled",
    [b"", b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc"],
    ids=["waiting-for-head", "mid-body"],
)
async def test_cancelled_request_closes_its_connection_and_frees_its_slot(stalled: bytes) -> None:
    async with scripted(Reply(stalled, stall=True), OK, per_host=1) as (server, transport):
        task = asyncio.create_task(_read_in_task(transport, request(server.url())))
        await server.until(lambda: bool(server.requests))
        await asyncio.sleep(0.02)  # the stalled bytes (if any) have arrived
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await server.client_closed(1)
        async with asyncio.timeout(1.0):  # a slot left taken would hang here
            after = await get(server, transport)
    assert after.content == b"ok"
    assert server.accepted == 2


async def test_waiting_for_a_slot_can_be_cancelled() -> None:
    async with scripted(Reply(OK, delay=0.1), OK, per_host=1) as (server, transport):
        first = asyncio.create_task(get(server, transport))
        await asyncio.sleep(0.02)
        waiting = asyncio.create_task(get(server, transport))
        await asyncio.sleep(0.02)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert (await first).content == b"ok"
        async with asyncio.timeout(1.0):
            after = await get(server, transport)
    assert after.content == b"ok"
    assert server.accepted == 1


# --- TLS: a closed connection is closed at once -------------------------------------------------------------


def test_tls_connections_are_closed_before_the_event_loop_ends(tmp_path: Path) -> None:
    """A TLS connection closed politely waits for the server's close_notify; one still waiting when the event
    loop ends leaks its socket (a ResourceWarning per connection, as `check` over TLS printed). A server that
    never answers close_notify: the transport's connections are closed at once all the same."""
    certificate = LocalCA(tmp_path).issue_server_certificate("server")
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    done = threading.Event()

    def serve() -> None:  # one blocking TLS connection: answer, then stay silent until the test ends
        with listener, certificate.server_context().wrap_socket(listener.accept()[0], server_side=True) as tls:
            tls.recv(65536)
            tls.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            done.wait(10)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()

    async def get() -> bytes:
        context = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
        transport = Http1Transport(lambda: context, per_host=1)
        request = httpx.Request("GET", f"https://127.0.0.1:{port}/v2/")
        request.extensions["timeout"] = httpx.Timeout(5.0).as_dict()
        response = await transport.handle_async_request(request)
        body = await response.aread()
        await response.aclose()
        await transport.aclose()
        return body

    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert asyncio.run(get()) == b"ok"
            gc.collect()
    finally:
        done.set()
        thread.join(5)
    assert [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)] == []


async def test_a_get_with_a_body_sends_the_body_its_fields_announce() -> None:
    async with scripted(OK, OK) as (server, transport):
        await fetch(transport, request(server.url("/search"), "GET", content=b"query"))
        await get(server, transport)
    assert server.requests[0].endswith(b"Content-Length: 5\r\n\r\nquery")
    assert server.accepted == 1  # framed exactly: the next request parsed on the same connection


async def test_a_large_body_arrives_whole() -> None:
    body = bytes(range(256)) * 4096  # 1 MiB: more than a socket buffer takes at once
    async with scripted(OK, OK) as (server, transport):
        await fetch(transport, request(server.url("/upload"), "PUT", content=body))
        await get(server, transport)
    assert server.requests[0].endswith(b"\r\n\r\n" + body)
    assert server.accepted == 1
