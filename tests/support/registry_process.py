"""Runs the real docker-registry binary (distribution 2.8) on 127.0.0.1 for tests, `make demo` and bench."""

from __future__ import annotations

import json
import os
import secrets
import socket
import ssl
import subprocess
import time
import weakref
from dataclasses import dataclass
from pathlib import Path

import httpx

DEFAULT_BINARY = Path("/usr/bin/docker-registry")
_STOP_GRACE_SECONDS = 5.0


class RegistryStartError(RuntimeError):
    """The registry did not come up; the message carries the tail of its log."""


@dataclass(frozen=True)
class HtpasswdAuth:
    """`auth: htpasswd`: Basic auth against a file of bcrypt hashes (see tests.support.htpasswd)."""

    path: Path
    realm: str = "digest-audit-basic-realm"


@dataclass(frozen=True)
class TokenAuth:
    """`auth: token`: bearer tokens from `realm`, verified offline against `rootcertbundle`."""

    realm: str
    service: str
    issuer: str
    rootcertbundle: Path


@dataclass(frozen=True)
class Notifications:
    """`notifications.endpoints`: the registry POSTs event envelopes to `url` with `Authorization: Bearer`."""

    url: str
    token: str
    name: str = "digest-audit"
    timeout: str = "2s"
    threshold: int = 3
    backoff: str = "1s"


@dataclass(frozen=True)
class RegistryTls:
    cert_file: Path
    key_file: Path
    ca_file: Path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _terminate(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=_STOP_GRACE_SECONDS)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=_STOP_GRACE_SECONDS)


class RegistryProcess:
    """One docker-registry subprocess with filesystem storage under `workdir`.

    Use as a context manager, or call start()/stop(). A weakref finaliser (which also runs at interpreter
    exit) terminates the process if the owner forgets, so a failing test run never leaves registries behind.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        auth: HtpasswdAuth | TokenAuth | None = None,
        tls: RegistryTls | None = None,
        binary: Path = DEFAULT_BINARY,
        startup_timeout: float = 15.0,
        notifications: Notifications | None = None,
    ) -> None:
        self.workdir = workdir
        self.auth = auth
        self.tls = tls
        self.notifications = notifications
        self.binary = binary
        self.startup_timeout = startup_timeout
        self.storage_dir = workdir / "storage"
        self.config_path = workdir / "config.yml"
        self.log_path = workdir / "registry.log"
        self._port: int | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._finalizer: weakref.finalize[[subprocess.Popen[bytes]], RegistryProcess] | None = None

    # --- addresses ------------------------------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("registry has not been started")
        return self._port

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        """The registry's process id (the benchmark reads its CPU time)."""
        if self._process is None:
            raise RuntimeError("registry has not been started")
        return self._process.pid

    @property
    def scheme(self) -> str:
        return "https" if self.tls is not None else "http"

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}"

    @property
    def ca_file(self) -> Path | None:
        return self.tls.ca_file if self.tls is not None else None

    @property
    def is_running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    # --- lifecycle ------------------------------------------------------------------------------------------

    def start(self) -> RegistryProcess:
        if self.is_running:
            return self
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.storage_dir.mkdir(exist_ok=True)
        last_error: RegistryStartError | None = None
        # The free port is probed then released, so another process can take it first; retry on that race.
        for _ in range(3):
            self._port = free_port()
            self.config_path.write_text(json.dumps(self._config(), indent=2))  # JSON is valid YAML
            try:
                self._launch()
                return self
            except RegistryStartError as error:
                last_error = error
                if "address already in use" not in str(error):
                    raise
        assert last_error is not None
        raise last_error

    def stop(self) -> None:
        if self._finalizer is not None:
            self._finalizer()  # terminates, then kills after a grace period
            self._finalizer = None
        self._process = None

    def __enter__(self) -> RegistryProcess:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log written)"
        return "\n".join(text.splitlines()[-lines:])

    def _launch(self) -> None:
        with self.log_path.open("ab") as log:
            process = subprocess.Popen(
                [str(self.binary), "serve", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                # A bare environment: stray REGISTRY_* variables would silently override the config file.
                env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
            )
        self._process = process
        self._finalizer = weakref.finalize(self, _terminate, process)
        try:
            self._wait_until_ready(process)
        except RegistryStartError:
            self.stop()
            raise

    def _wait_until_ready(self, process: subprocess.Popen[bytes]) -> None:
        verify: ssl.SSLContext | bool = (
            ssl.create_default_context(cafile=str(self.tls.ca_file)) if self.tls is not None else True
        )
        deadline = time.monotonic() + self.startup_timeout
        with httpx.Client(verify=verify, timeout=2.0, trust_env=False) as client:
            while time.monotonic() < deadline:
                if process.poll() is not None:
                    raise RegistryStartError(
                        f"docker-registry exited with status {process.returncode} during startup; "
                        f"log tail:\n{self.log_tail()}"
                    )
                try:
                    # Any HTTP answer (200, or 401 when auth is on) means the API is serving.
                    client.get(f"{self.url}/v2/")
                    return
                except httpx.TransportError:
                    time.sleep(0.05)
        raise RegistryStartError(
            f"docker-registry did not answer {self.url}/v2/ within {self.startup_timeout:.0f} s; "
            f"log tail:\n{self.log_tail()}"
        )

    def _config(self) -> dict[str, object]:
        http: dict[str, object] = {
            "addr": f"127.0.0.1:{self.port}",
            "secret": secrets.token_hex(16),
            "headers": {"X-Content-Type-Options": ["nosniff"]},
        }
        if self.tls is not None:
            http["tls"] = {"certificate": str(self.tls.cert_file), "key": str(self.tls.key_file)}
        config: dict[str, object] = {
            "version": "0.1",
            "log": {"level": "info", "formatter": "text", "accesslog": {"disabled": False}},
            "storage": {
                "filesystem": {"rootdirectory": str(self.storage_dir)},
                "delete": {"enabled": True},
                # Background purging only adds goroutines and log lines to short-lived test registries.
                "maintenance": {"uploadpurging": {"enabled": False}},
            },
            "http": http,
            "health": {"storagedriver": {"enabled": False}},
        }
        if self.notifications is not None:
            endpoint = self.notifications
            config["notifications"] = {
                "endpoints": [
                    {
                        "name": endpoint.name,
                        "url": endpoint.url,
                        "headers": {"Authorization": [f"Bearer {endpoint.token}"]},
                        "timeout": endpoint.timeout,
                        "threshold": endpoint.threshold,
                        "backoff": endpoint.backoff,
                    }
                ]
            }
        match self.auth:
            case HtpasswdAuth(path=path, realm=realm):
                config["auth"] = {"htpasswd": {"realm": realm, "path": str(path)}}
            case TokenAuth(realm=realm, service=service, issuer=issuer, rootcertbundle=bundle):
                config["auth"] = {
                    "token": {
                        "realm": realm,
                        "service": service,
                        "issuer": issuer,
                        "rootcertbundle": str(bundle),
                    }
                }
            case None:
                pass
        return config
