"""A fault-injecting HTTP proxy between boto3 and moto server: the AWS failures the alert pipeline must survive.

Point AWS_ENDPOINT_URL at `proxy.url`. Each request's AWS operation is read from `X-Amz-Target` (DynamoDB,
JSON protocol) or the form `Action` (SNS, query protocol); the first armed fault for that operation is applied
and counts down. Kinds:

- `throttle`       answer 400 with the service's throttling error, nothing forwarded
- `error500`       answer 500 InternalServerError / InternalError, nothing forwarded
- `drop`           close the connection before forwarding (the call never happened)
- `lose_response`  forward, let moto apply it, then close without answering (the call happened, nobody knows)
- `unprocessed`    BatchWriteItem: answer that every item is unprocessed, nothing forwarded
- `partial`        PublishBatch: forward only the entries whose Subject lacks `match`, report those as failed
                   (InternalError, not the sender's fault), as SNS does for a partial failure
- `hold`           wait until `release()` before forwarding (to overlap two runs deterministically)

A fault may also run `action` (e.g. kill the process under test) before it takes effect. Every request is
logged with its body, so tests can assert what reached AWS (operations, tables, idempotency tokens).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import urllib.parse
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Literal

FaultKind = Literal["throttle", "error500", "drop", "lose_response", "unprocessed", "partial", "hold"]
_MAX_HEAD = 64 * 1024
_SNS_NS = "http://sns.amazonaws.com/doc/2010-03-31/"
_ENTRY_PREFIX = "PublishBatchRequestEntries.member."


@dataclass
class Fault:
    operation: str
    kind: FaultKind
    times: int = 1
    match: str = ""
    action: Callable[[], None] | None = None
    hits: int = 0
    reached: threading.Event = field(default_factory=threading.Event)
    _released: threading.Event = field(default_factory=threading.Event)

    def release(self) -> None:
        self._released.set()


@dataclass(frozen=True)
class Call:
    operation: str
    body: bytes

    def json(self) -> dict[str, object]:
        value = json.loads(self.body)
        assert isinstance(value, dict)
        return value

    def form(self) -> dict[str, str]:
        return dict(urllib.parse.parse_qsl(self.body.decode(), keep_blank_values=True))


@dataclass
class _Message:
    head: list[str]  # first line, then header lines
    body: bytes

    def header(self, name: str) -> str:
        for line in self.head[1:]:
            key, _, value = line.partition(":")
            if key.strip().lower() == name:
                return value.strip()
        return ""

    def encode(self) -> bytes:
        lines = [self.head[0]]
        lines += [h for h in self.head[1:] if h.partition(":")[0].strip().lower() not in _FRAMING]
        lines.append(f"Content-Length: {len(self.body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + self.body


_FRAMING = frozenset({"content-length", "transfer-encoding"})


async def _read_message(reader: asyncio.StreamReader) -> _Message | None:
    try:
        raw = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    message = _Message(raw[:-4].decode("latin-1").split("\r\n"), b"")
    if message.header("transfer-encoding").lower() == "chunked":
        parts: list[bytes] = []
        while size := int((await reader.readuntil(b"\r\n")).split(b";")[0].strip(), 16):
            parts.append(await reader.readexactly(size))
            await reader.readexactly(2)
        while await reader.readuntil(b"\r\n") != b"\r\n":  # trailers
            pass
        message.body = b"".join(parts)
    else:
        message.body = await reader.readexactly(int(message.header("content-length") or 0))
    return message


def _operation(request: _Message) -> str:
    target = request.header("x-amz-target")
    if target:
        return target.rpartition(".")[2]
    return dict(urllib.parse.parse_qsl(request.body.decode("latin-1"))).get("Action", "")


def _reply(status: str, content_type: str, body: bytes) -> bytes:
    return _Message([f"HTTP/1.1 {status}", f"Content-Type: {content_type}"], body).encode()


def _error(request: _Message, *, throttle: bool) -> bytes:
    status = "400 Bad Request" if throttle else "500 Internal Server Error"
    if request.header("x-amz-target"):
        name = "ProvisionedThroughputExceededException" if throttle else "InternalServerError"
        body = json.dumps({"__type": f"com.amazonaws.dynamodb.v20120810#{name}", "message": "injected fault"})
        return _reply(status, "application/x-amz-json-1.0", body.encode())
    code = "Throttling" if throttle else "InternalError"
    kind = "Sender" if throttle else "Receiver"
    xml = (
        f'<ErrorResponse xmlns="{_SNS_NS}"><Error><Type>{kind}</Type><Code>{code}</Code>'
        "<Message>injected fault</Message></Error><RequestId>fault</RequestId></ErrorResponse>"
    )
    return _reply(status, "text/xml", xml.encode())


def _unprocessed(request: _Message) -> bytes:
    items = json.loads(request.body)["RequestItems"]
    return _reply("200 OK", "application/x-amz-json-1.0", json.dumps({"UnprocessedItems": items}).encode())


def _split_entries(request: _Message, match: str) -> tuple[_Message, list[str]]:
    """The request without the entries whose Subject contains `match` (renumbered), and the failed Ids."""
    pairs = urllib.parse.parse_qsl(request.body.decode(), keep_blank_values=True)
    entries: dict[int, list[tuple[str, str]]] = {}
    others: list[tuple[str, str]] = []
    for key, value in pairs:
        if key.startswith(_ENTRY_PREFIX):
            position, _, rest = key.removeprefix(_ENTRY_PREFIX).partition(".")
            entries.setdefault(int(position), []).append((rest, value))
        else:
            others.append((key, value))
    kept: list[list[tuple[str, str]]] = []
    failed: list[str] = []
    for number in sorted(entries):
        fields = dict(entries[number])
        if match in fields.get("Subject", ""):
            failed.append(fields["Id"])
        else:
            kept.append(entries[number])
    for index, fields_list in enumerate(kept, start=1):
        others += [(f"{_ENTRY_PREFIX}{index}.{rest}", value) for rest, value in fields_list]
    return _Message(request.head, urllib.parse.urlencode(others).encode()), failed


def _partial_response(moto_body: bytes | None, failed: list[str]) -> bytes:
    successful = ""
    if moto_body is not None:
        root = ET.fromstring(moto_body)
        for member in root.iterfind(".//{*}Successful/{*}member"):
            entry_id = member.findtext("{*}Id")
            message_id = member.findtext("{*}MessageId")
            successful += f"<member><Id>{entry_id}</Id><MessageId>{message_id}</MessageId></member>"
    failures = "".join(
        f"<member><Id>{entry_id}</Id><Code>InternalError</Code><Message>injected partial failure</Message>"
        "<SenderFault>false</SenderFault></member>"
        for entry_id in failed
    )
    xml = (
        f'<PublishBatchResponse xmlns="{_SNS_NS}"><PublishBatchResult><Successful>{successful}</Successful>'
        f"<Failed>{failures}</Failed></PublishBatchResult>"
        "<ResponseMetadata><RequestId>fault</RequestId></ResponseMetadata></PublishBatchResponse>"
    )
    return _reply("200 OK", "text/xml", xml.encode())


class FaultProxy:
    """`with FaultProxy("127.0.0.1", moto_port) as proxy:`; arm faults with `proxy.inject(...)`."""

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self._faults: list[Fault] = []
        self._calls: list[Call] = []
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="aws-fault-proxy", daemon=True)
        self._server: asyncio.Server | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def inject(
        self,
        operation: str,
        kind: FaultKind,
        *,
        times: int = 1,
        match: str = "",
        action: Callable[[], None] | None = None,
    ) -> Fault:
        fault = Fault(operation, kind, times=times, match=match, action=action)
        with self._lock:
            self._faults.append(fault)
        return fault

    def clear(self) -> None:
        with self._lock:
            for fault in self._faults:
                fault.release()
            self._faults.clear()
            self._calls.clear()

    def calls(self, operation: str | None = None) -> list[Call]:
        with self._lock:
            return [call for call in self._calls if operation is None or call.operation == operation]

    def _take(self, operation: str) -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.operation == operation and fault.hits < fault.times:
                    fault.hits += 1
                    return fault
        return None

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=10)
        return self

    def __exit__(self, *exc_info: object) -> None:
        with self._lock:
            for fault in self._faults:
                fault.release()
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, limit=_MAX_HEAD)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._server.wait_closed()

    async def _serve(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        try:
            while (request := await _read_message(client_reader)) is not None:
                operation = _operation(request)
                with self._lock:
                    self._calls.append(Call(operation, request.body))
                fault = self._take(operation)
                if fault is not None:
                    fault.reached.set()
                    if fault.action is not None:
                        fault.action()
                    if fault.kind == "hold":
                        await asyncio.get_running_loop().run_in_executor(None, fault._released.wait)
                reply = await self._answer(request, fault, upstream)
                if reply is None:
                    return  # close without answering
                upstream = reply[1]
                client_writer.write(reply[0])
                await client_writer.drain()
        except (ConnectionError, OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            return
        finally:
            client_writer.close()
            if upstream is not None:
                upstream[1].close()

    async def _answer(
        self,
        request: _Message,
        fault: Fault | None,
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None,
    ) -> tuple[bytes, tuple[asyncio.StreamReader, asyncio.StreamWriter] | None] | None:
        kind = fault.kind if fault is not None else None
        if kind == "drop":
            return None
        if kind in ("throttle", "error500"):
            return _error(request, throttle=kind == "throttle"), upstream
        if kind == "unprocessed":
            return _unprocessed(request), upstream
        failed: list[str] = []
        if kind == "partial":
            assert fault is not None
            request, failed = _split_entries(request, fault.match)
            if not dict(urllib.parse.parse_qsl(request.body.decode())).get(f"{_ENTRY_PREFIX}1.Id"):
                return _partial_response(None, failed), upstream  # every entry failed: moto is not asked
        if upstream is None:
            upstream = await asyncio.open_connection(*self.upstream, limit=_MAX_HEAD)
        upstream[1].write(request.encode())
        await upstream[1].drain()
        response = await _read_message(upstream[0])
        if response is None:
            return None
        if kind == "lose_response":
            return None
        if kind == "partial":
            return _partial_response(response.body, failed), upstream
        return response.encode(), upstream


@contextlib.contextmanager
def fault_proxy(endpoint_url: str) -> Iterator[FaultProxy]:
    parsed = urllib.parse.urlsplit(endpoint_url)
    assert parsed.hostname is not None and parsed.port is not None
    with FaultProxy(parsed.hostname, parsed.port) as proxy:
        yield proxy
