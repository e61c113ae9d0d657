"""A real HTTP/1.1 server on loopback that answers as a test tells it and records every request: for registry
behaviour the local docker-registry cannot show (redirects, endless listings, hostile answers)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import override


@dataclass(frozen=True)
class Recorded:
    method: str
    path: str
    headers: Mapping[str, str]  # lowercased names


@dataclass(frozen=True)
class Reply:
    status: int
    headers: Mapping[str, str]
    body: bytes = b""


class LoopbackServer:
    """A real HTTP/1.1 server on 127.0.0.1 that answers with `respond` and records every request it gets."""

    def __init__(self, respond: Callable[[Recorded], Reply]) -> None:
        self._respond = respond
        self._lock = threading.Lock()
        self._requests: list[Recorded] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _answer(self) -> None:
                request = Recorded(self.command, self.path, {k.lower(): v for k, v in self.headers.items()})
                with server._lock:
                    server._requests.append(request)
                reply = server._respond(request)
                self.send_response(reply.status)
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(reply.body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(reply.body)

            do_GET = do_HEAD = _answer  # the names BaseHTTPRequestHandler dispatches to

            @override
            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05})

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self._server.server_address[1]}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    @property
    def requests(self) -> list[Recorded]:
        with self._lock:
            return list(self._requests)

    def __enter__(self) -> LoopbackServer:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
