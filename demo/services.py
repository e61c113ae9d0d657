"""What the demo runs besides the registry: moto in server mode, a Lambda context, and a check for leftovers."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import httpx
from aws_lambda_powertools.utilities.typing import LambdaContext
from moto.server import ThreadedMotoServer

REGION = "eu-west-1"
#: moto accepts any key; these only make boto3 sign requests (and can never reach a real account).
DUMMY_KEY = "testing"
_START_TIMEOUT = 30.0

#: Variables that could send boto3 to a real account or another endpoint; dropped from the demo's environment.
_AWS_LEAKS = ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_ROLE_ARN")


class DemoError(Exception):
    """Something the demo needs failed; the message says what and, when known, what to do."""


@dataclass(frozen=True)
class Moto:
    endpoint_url: str

    @property
    def port(self) -> int:
        return int(self.endpoint_url.rpartition(":")[2])


def aws_environment(moto: Moto, workdir: Path) -> dict[str, str]:
    """Dummy credentials and the moto endpoint; nonexistent config files so a developer's ~/.aws cannot leak in."""
    return {
        "AWS_ACCESS_KEY_ID": DUMMY_KEY,
        "AWS_SECRET_ACCESS_KEY": DUMMY_KEY,
        "AWS_DEFAULT_REGION": REGION,
        "AWS_REGION": REGION,
        "AWS_ENDPOINT_URL": moto.endpoint_url,
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONFIG_FILE": str(workdir / "no-aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(workdir / "no-aws-credentials"),
    }


def isolate_from_real_aws(environ: MutableMapping[str, str]) -> None:
    for name in list(environ):
        if name in _AWS_LEAKS or name.startswith("AWS_ENDPOINT_URL_") or name == "AWS_SESSION_TOKEN":
            del environ[name]


def _answers(endpoint_url: str) -> bool:
    try:
        return httpx.get(f"{endpoint_url}/moto-api/", timeout=2.0, trust_env=False).status_code < 500
    except httpx.TransportError:
        return False


@contextmanager
def moto_server() -> Iterator[Moto]:
    """moto in server mode on 127.0.0.1 (a free port), in this process: its backends stay inspectable."""
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one access-log line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    # start() blocks forever if binding fails; bound it so the demo fails with a message instead.
    starter = threading.Thread(target=server.start, name="moto-start", daemon=True)
    starter.start()
    starter.join(_START_TIMEOUT)
    if starter.is_alive():
        raise DemoError(f"moto server did not start within {_START_TIMEOUT:.0f} s")
    try:
        host, port = server.get_host_and_port()
        moto = Moto(f"http://{host}:{port}")
        deadline = time.monotonic() + _START_TIMEOUT
        while not _answers(moto.endpoint_url):
            if time.monotonic() > deadline:
                raise DemoError(f"moto server at {moto.endpoint_url} does not answer")
            time.sleep(0.05)
        yield moto
    finally:
        server.stop()


class DemoLambdaContext(LambdaContext):
    """What the Lambda runtime passes as `context`, for one invocation with `timeout` seconds to run."""

    def __init__(self, request_id: str, *, timeout: float = 300.0) -> None:
        self._function_name = "digest-audit-AuditFunction"
        self._function_version = "$LATEST"
        self._invoked_function_arn = f"arn:aws:lambda:{REGION}:123456789012:function:digest-audit-AuditFunction"
        self._memory_limit_in_mb = 512
        self._aws_request_id = request_id
        self._log_group_name = "/aws/lambda/digest-audit-AuditFunction"
        self._log_stream_name = "2026/01/01/[$LATEST]demo"
        self._deadline = time.monotonic() + timeout

    def get_remaining_time_in_millis(self) -> int:  # type: ignore[override]  # a staticmethod in the stub class
        return max(0, int((self._deadline - time.monotonic()) * 1000))


def processes_under(marker: str) -> list[tuple[int, str]]:
    """Other processes whose command line or working directory mentions `marker` (the demo's temp dir)."""
    found: list[tuple[int, str]] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
            try:
                cwd = str((entry / "cwd").readlink())
            except OSError:  # another user's process: its cwd is not readable, its cmdline is
                cwd = ""
        except OSError:  # gone meanwhile
            continue
        if marker in command or cwd.startswith(marker):
            found.append((int(entry.name), command))
    return found


def _parent_of(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name in parentheses may contain spaces; the fields after the last ")" are state, ppid, ...
    fields = stat.rpartition(")")[2].split()
    return int(fields[1]) if len(fields) > 1 else None


def stop_own_children_under(marker: str) -> list[int]:
    """Kill and reap our own children still running from the temp dir; returns their pids.

    A signal that arrives while `subprocess.Popen` is starting a child raises before the caller holds the
    Popen object, so nothing else would ever stop that child. Only direct children of this process are touched.
    """
    stopped: list[int] = []
    for pid, _ in processes_under(marker):
        if _parent_of(pid) != os.getpid():
            continue
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        with suppress(ChildProcessError):
            os.waitpid(pid, 0)
        stopped.append(pid)
    return stopped
