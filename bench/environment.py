"""The services a benchmark run needs besides the registry: moto (DynamoDB + SNS) and a clean process environment."""

from __future__ import annotations

import logging
import os
import platform
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import boto3
import httpx
import pydantic
from botocore.config import Config
from moto.server import ThreadedMotoServer

from audit.adapters.dynamodb_store import create_tables
from audit.config import (
    ENV_INSECURE_REGISTRIES,
    ENV_REVERIFY_DELAY,
    ENV_STATE_TABLE,
    ENV_TOPIC_ARN,
    ENV_TRUST_TABLE,
)

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

logger = logging.getLogger(__name__)

REGION = "eu-west-1"
DUMMY_KEY = "bench"
TRUST_TABLE = "bench-trusted-digests"
STATE_TABLE = "bench-audit-state"
TOPIC_NAME = "bench-alerts"
_KEPT_VARIABLES = ("PATH", "LANG", "LC_ALL", "TMPDIR", "SYSTEMROOT")


def process_environment(workdir: Path, *, insecure: str = "127.0.0.1") -> dict[str, str]:
    """What every measured subprocess gets: no AWS profile, no docker login, the loopback registry insecure.

    The re-verification delay is 0: the default 5 s pause before re-checking a drift is deliberate waiting,
    not work, and would dominate a run with tampered tags.
    """
    docker_config = workdir / "docker-config"
    docker_config.mkdir(parents=True, exist_ok=True)
    env = {name: os.environ[name] for name in _KEPT_VARIABLES if name in os.environ}
    env.update(
        {
            "HOME": str(workdir / "home"),
            "DOCKER_CONFIG": str(docker_config),
            ENV_INSECURE_REGISTRIES: insecure,
            ENV_REVERIFY_DELAY: "0",
            "AWS_CONFIG_FILE": str(workdir / "no-aws-config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(workdir / "no-aws-credentials"),
            "AWS_EC2_METADATA_DISABLED": "true",
        }
    )
    (workdir / "home").mkdir(exist_ok=True)
    return env


@dataclass(frozen=True)
class Moto:
    """A running moto server with both tables and a topic; `endpoint_url` is where boto3 should go."""

    endpoint_url: str
    topic_arn: str

    def client_environment(self, endpoint_url: str | None = None) -> dict[str, str]:
        return {
            "AWS_ACCESS_KEY_ID": DUMMY_KEY,
            "AWS_SECRET_ACCESS_KEY": DUMMY_KEY,
            "AWS_DEFAULT_REGION": REGION,
            "AWS_REGION": REGION,
            "AWS_ENDPOINT_URL": endpoint_url or self.endpoint_url,
            ENV_TRUST_TABLE: TRUST_TABLE,
            ENV_STATE_TABLE: STATE_TABLE,
            ENV_TOPIC_ARN: self.topic_arn,
        }

    def dynamodb(self) -> DynamoDBClient:
        session = boto3.session.Session(
            aws_access_key_id=DUMMY_KEY, aws_secret_access_key=DUMMY_KEY, region_name=REGION
        )
        return session.client("dynamodb", endpoint_url=self.endpoint_url, config=Config(retries={"max_attempts": 3}))


def _wait_until_serving(endpoint_url: str) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            request = urllib.request.Request(f"{endpoint_url}/moto-api/reset", method="POST")
            with urllib.request.urlopen(request, timeout=5):
                return
        except (OSError, urllib.error.URLError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


@contextmanager
def moto_server() -> Iterator[Moto]:
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    starter = threading.Thread(target=server.start, daemon=True)
    starter.start()
    starter.join(30)
    try:
        host, port = server.get_host_and_port()
        endpoint_url = f"http://{host}:{port}"
        _wait_until_serving(endpoint_url)
        session = boto3.session.Session(
            aws_access_key_id=DUMMY_KEY, aws_secret_access_key=DUMMY_KEY, region_name=REGION
        )
        dynamodb = session.client("dynamodb", endpoint_url=endpoint_url)
        create_tables(dynamodb, TRUST_TABLE, STATE_TABLE)
        topic_arn = session.client("sns", endpoint_url=endpoint_url).create_topic(Name=TOPIC_NAME)["TopicArn"]
        yield Moto(endpoint_url, topic_arn)
    finally:
        server.stop()


def _output(command: list[str]) -> str:
    try:
        return subprocess.run(command, capture_output=True, text=True, check=False, timeout=30).stdout.strip()
    except OSError:
        return "unavailable"


def machine_facts(project: Path) -> dict[str, object]:
    """Machine, versions and revision, for the header of the report."""
    cpu = "unknown"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory_gib = 0.0
    meminfo = Path("/proc/meminfo")
    if meminfo.exists():
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory_gib = int(line.split()[1]) / 1024 / 1024
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(memory_gib, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "httpx": httpx.__version__,
        "pydantic": pydantic.__version__,
        "boto3": boto3.__version__,
        "docker_registry": _output(["docker-registry", "--version"]).rpartition(" ")[2],
        "skopeo": _output(["skopeo", "--version"]).rpartition(" ")[2],
        "git_revision": _output(["git", "-C", str(project), "rev-parse", "--short", "HEAD"]) or "unknown",
        "interpreter": Path(sys.executable).name,
    }


def install_runtime(directory: Path, project: Path) -> Path | None:
    """Install digest-audit into `directory` as a user gets it; returns its `digest-audit`, or None if uv failed.

    The development environment holds the test tools too, and they tax `check`'s start-up: httpx imports its
    command-line module (click, rich, pygments) when they are importable, about 45 ms per process that an
    installed digest-audit (or the Lambda package) never pays. This is `uv sync` of the locked runtime
    dependencies only, the project as a built wheel, and compiled bytecode, as `pip install` leaves it.
    """
    env = {**os.environ, "UV_PROJECT_ENVIRONMENT": str(directory)}
    command = ["uv", "sync", "--frozen", "--no-dev", "--no-editable", "--compile-bytecode", "--quiet"]
    command += ["--reinstall-package", "digest-audit"]  # built from the sources as they are, never a cached wheel
    try:
        done = subprocess.run(command, cwd=project, env=env, capture_output=True, text=True, check=False)
    except OSError as exc:
        logger.warning("cannot install the runtime environment: %s", exc)
        return None
    auditor = directory / "bin" / "digest-audit"
    if done.returncode != 0 or not auditor.exists():
        logger.warning("uv sync failed (exit %s): %s", done.returncode, done.stderr[-500:])
        return None
    return auditor
