"""Real package indexes on 127.0.0.1 for tests: a `pypiserver` process (overwrite allowed) and a `devpi-server`
(volatile indexes, PEP 691 JSON) fed by `twine`, and a small HTTP server that serves recorded-format PyPI
responses (PEP 691 JSON, error pages, a huge simple page).

Wheels and sdists are written by hand here (a zip with METADATA/WHEEL/RECORD, a tar.gz with PKG-INFO): enough
for twine and pypiserver, and each build can carry different content under the same filename.
"""

from __future__ import annotations

import base64
import io
import shutil
import subprocess
import sys
import tarfile
import threading
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from tests.support.registry_process import free_port


def build_wheel(directory: Path, project: str, version: str, *, tag: str = "py3-none-any", content: str = "1") -> Path:
    """A minimal valid wheel; `content` changes its bytes (and hash) without changing its name."""
    dist = project.replace("-", "_")
    path = directory / f"{dist}-{version}-{tag}.whl"
    info = f"{dist}-{version}.dist-info"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(f"{dist}/__init__.py", f"VALUE = {content!r}\n")
        archive.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {project}\nVersion: {version}\n")
        archive.writestr(f"{info}/WHEEL", f"Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: {tag}\n")
        archive.writestr(f"{info}/RECORD", "")
    return path


def build_sdist(directory: Path, project: str, version: str, *, content: str = "1") -> Path:
    dist = project.replace("-", "_")
    path = directory / f"{dist}-{version}.tar.gz"
    files = {
        f"{dist}-{version}/PKG-INFO": f"Metadata-Version: 2.1\nName: {project}\nVersion: {version}\n",
        f"{dist}-{version}/{dist}/__init__.py": f"VALUE = {content!r}\n",
    }
    with tarfile.open(path, "w:gz") as archive:
        for name, text in files.items():
            data = text.encode()
            member = tarfile.TarInfo(name)
            member.size = len(data)
            member.mtime = 0
            archive.addfile(member, io.BytesIO(data))
    return path


class PypiServer:
    """`pypi-server run --overwrite` on a free port, serving `packages/`; uploads go through `twine`."""

    def __init__(self, workdir: Path) -> None:
        self.packages = workdir / "packages"
        self.packages.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.log = workdir / "pypiserver.log"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def index_url(self) -> str:
        return f"http://{self.host}/simple"

    def start(self) -> None:
        command = [
            sys.executable, "-m", "pypiserver", "run", "-p", str(self.port), "-i", "127.0.0.1",
            "-a", ".", "-P", ".", "--overwrite", "--backend", "simple-dir", str(self.packages),
        ]  # fmt: skip
        with self.log.open("wb") as log:
            self._process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"pypiserver exited: {self.log.read_text()[-2000:]}")
            try:
                if httpx.get(f"http://{self.host}/simple/", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError(f"pypiserver did not start: {self.log.read_text()[-2000:]}")

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            self._process.wait(timeout=10)

    def empty(self) -> None:
        """Serve nothing again: every uploaded file deleted (the simple-dir backend reads the directory on each
        request), then checked through the index itself, so no test sees another's releases."""
        for path in self.packages.iterdir():
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()
        listing = httpx.get(f"http://{self.host}/simple/", timeout=10)
        listing.raise_for_status()
        assert "href=" not in listing.text, f"pypiserver still lists projects after emptying: {listing.text}"

    def upload(self, *paths: Path) -> None:
        command = [
            sys.executable, "-m", "twine", "upload", "--non-interactive", "--disable-progress-bar",
            "--repository-url", f"http://{self.host}/", "-u", "ci", "-p", "unused", *map(str, paths),
        ]  # fmt: skip
        subprocess.run(command, check=True, capture_output=True, timeout=60)

    def delete(self, filename: str) -> None:
        (self.packages / filename).unlink()


@pytest.fixture(scope="module")
def pypi_servers() -> Iterator[list[PypiServer]]:
    """The pypiserver processes one module started (usually one); all stopped when the module is done."""
    started: list[PypiServer] = []
    try:
        yield started
    finally:
        for server in started:
            server.stop()


@pytest.fixture
def pypi_server(pypi_servers: list[PypiServer], tmp_path_factory: pytest.TempPathFactory) -> PypiServer:
    """A pypiserver shared by the tests of one module (starting one takes seconds), serving nothing at the start
    of each test; a new one is started when a test stopped the last."""
    if not pypi_servers or not pypi_servers[-1].running:
        server = PypiServer(tmp_path_factory.mktemp("pypiserver"))
        pypi_servers.append(server)
        server.start()
    server = pypi_servers[-1]
    server.empty()
    return server


class DevpiServer:
    """`devpi-server --offline-mode` on a free port; `new_index()` creates a volatile (overwritable) index."""

    def __init__(self, workdir: Path) -> None:
        self.serverdir = workdir / "devpi"
        self.port = free_port()
        self.log = workdir / "devpi.log"
        self.password = "root-password"
        self._process: subprocess.Popen[bytes] | None = None
        self._auth = ""

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        bin_dir = Path(sys.executable).parent
        subprocess.run(
            [str(bin_dir / "devpi-init"), "--serverdir", str(self.serverdir), "--root-passwd", self.password],
            check=True, capture_output=True, timeout=120,
        )  # fmt: skip
        command = [
            str(bin_dir / "devpi-server"), "--serverdir", str(self.serverdir), "--host", "127.0.0.1",
            "--port", str(self.port), "--offline-mode",
        ]  # fmt: skip
        with self.log.open("wb") as log:
            self._process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 180  # devpi takes its time to import on a busy machine
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"devpi-server exited: {self.log.read_text()[-2000:]}")
            try:
                if httpx.get(f"http://{self.host}/+api", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.3)
        else:
            raise RuntimeError(f"devpi-server did not start: {self.log.read_text()[-2000:]}")
        reply = httpx.post(
            f"http://{self.host}/+login",
            json={"user": "root", "password": self.password},
            headers={"Accept": "application/json"},
        )
        token = reply.json()["result"]["password"]
        self._auth = base64.b64encode(f"root:{token}".encode()).decode()

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            self._process.wait(timeout=20)

    def new_index(self, name: str) -> str:
        """A volatile stage index `root/NAME`; returns its simple-API URL."""
        reply = httpx.put(
            f"http://{self.host}/root/{name}",
            json={"type": "stage", "bases": [], "volatile": True},
            headers={"X-Devpi-Auth": self._auth, "Accept": "application/json"},
        )
        reply.raise_for_status()
        return f"http://{self.host}/root/{name}/+simple"

    def upload(self, name: str, *paths: Path) -> None:
        command = [
            sys.executable, "-m", "twine", "upload", "--non-interactive", "--disable-progress-bar",
            "--repository-url", f"http://{self.host}/root/{name}/", "-u", "root", "-p", self.password,
            *map(str, paths),
        ]  # fmt: skip
        subprocess.run(command, check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="session")
def devpi_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevpiServer]:
    server = DevpiServer(tmp_path_factory.mktemp("devpi"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@dataclass
class Route:
    status: int
    content_type: str
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    declared_length: int | None = None  # a Content-Length that lies: the connection closes short of it


class RecordedIndex:
    """A threaded HTTP server on 127.0.0.1 answering fixed routes (path -> Route); everything else is 404."""

    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.authorization: str | None = None  # when set, any other Authorization header gets a 401
        routes, requests, index = self.routes, self.requests, self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                requests.append((self.path, dict(self.headers.items())))
                route = routes.get(self.path.split("?", 1)[0]) or Route(404, "text/plain", b"not found")
                if index.authorization is not None and self.headers.get("Authorization") != index.authorization:
                    route = Route(401, "text/plain", b"login required", {"WWW-Authenticate": 'Basic realm="index"'})
                self.send_response(route.status)
                self.send_header("Content-Type", route.content_type)
                self.send_header("Content-Length", str(route.declared_length or len(route.body)))
                for name, value in route.headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(route.body)

            def log_message(self, format: str, *args: object) -> None:
                return

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = int(self._server.server_address[1])
        # A short poll: shutdown() waits for the loop to notice, 0.5 s by default, at every test's teardown.
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def index_url(self) -> str:
        return f"http://{self.host}/simple"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def recorded_index() -> Iterator[RecordedIndex]:
    server = RecordedIndex()
    server.start()
    try:
        yield server
    finally:
        server.stop()
