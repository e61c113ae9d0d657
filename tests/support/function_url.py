"""A local stand-in for a Lambda Function URL: an HTTP server on loopback that turns each request into the
payload v2 event Lambda would build and answers with what the handler returns.

It lets a real registry's notifications reach `receiver.lambda_handler` over real HTTP, as they would in AWS.
"""

from __future__ import annotations

import base64
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

type Handler = Callable[[dict[str, Any], object], dict[str, Any]]

#: Lambda's own limit on a synchronous request payload; a Function URL answers 413 above it.
MAX_PAYLOAD_BYTES = 6 * 1024 * 1024
_TEXT_TYPES = ("application/json", "text/", "application/vnd.docker.distribution.events")


def function_url_event(method: str, path: str, headers: dict[str, str], body: bytes, *, host: str) -> dict[str, Any]:
    """The payload v2 event of one request: lower-case headers, base64 body unless it is text."""
    lowered = {name.lower(): value for name, value in headers.items()}
    is_text = lowered.get("content-type", "").startswith(_TEXT_TYPES)
    raw_path, _, query = path.partition("?")
    now = time.time()
    return {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": raw_path,
        "rawQueryString": query,
        "headers": lowered,
        "requestContext": {
            "accountId": "anonymous",
            "apiId": "local",
            "domainName": host,
            "domainPrefix": "local",
            "http": {
                "method": method,
                "path": raw_path,
                "protocol": "HTTP/1.1",
                "sourceIp": "127.0.0.1",
                "userAgent": lowered.get("user-agent", ""),
            },
            "requestId": str(uuid.uuid4()),
            "routeKey": "$default",
            "stage": "$default",
            "time": time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(now)),
            "timeEpoch": int(now * 1000),
        },
        "body": body.decode("utf-8") if is_text else base64.b64encode(body).decode("ascii"),
        "isBase64Encoded": not is_text,
    }


@dataclass
class FunctionUrl:
    """The running adapter: its base URL and the status of every answered request, in order."""

    url: str
    statuses: list[int] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, status: int) -> None:
        with self._lock:
            self.statuses.append(status)

    def seen(self) -> list[int]:
        with self._lock:
            return list(self.statuses)


@contextmanager
def function_url(handler: Handler) -> Iterator[FunctionUrl]:
    """Serve `handler` on 127.0.0.1 (a free port) until the block exits. Requests are handled one at a time."""
    calls = threading.Lock()  # like one Lambda instance: the receiver's warm caches see one request at a time

    class Adapter(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            if length > MAX_PAYLOAD_BYTES:
                self._reply({"statusCode": 413, "headers": {}, "body": ""})
                return
            body = self.rfile.read(length)
            event = function_url_event(
                self.command, self.path, dict(self.headers.items()), body, host=self.headers.get("host", "")
            )
            with calls:
                answer = handler(event, None)
            self._reply(answer)

        def _reply(self, answer: dict[str, Any]) -> None:
            status = int(answer.get("statusCode", 200))
            payload = str(answer.get("body") or "").encode("utf-8")
            self.send_response(status)
            for name, value in (answer.get("headers") or {}).items():
                self.send_header(name, str(value))
            self.send_header("content-length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
            running.record(status)

        do_POST = _serve
        do_GET = _serve
        do_PUT = _serve

        def log_message(self, format: str, *args: Any) -> None:
            return  # the registry retries often; the statuses above are the useful record

    server = ThreadingHTTPServer(("127.0.0.1", 0), Adapter)
    host, port = server.server_address[:2]
    running = FunctionUrl(url=f"http://{host!s}:{port}")
    # A short poll: shutdown() waits for the loop to notice, 0.5 s by default.
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="function-url", daemon=True
    )
    thread.start()
    try:
        yield running
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
