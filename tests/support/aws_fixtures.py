"""Fixtures that start moto in server mode on loopback, so AWS adapters are tested over real HTTP."""

from __future__ import annotations

import functools
import logging
import os
import secrets
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import boto3
import pytest
from botocore.config import Config
from moto.server import ThreadedMotoServer

from audit import bootstrap
from audit.adapters.dynamodb_store import create_tables
from audit.config import ENV_STATE_TABLE, ENV_TRUST_TABLE

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient
    from mypy_boto3_secretsmanager import SecretsManagerClient
    from mypy_boto3_sns import SNSClient
    from mypy_boto3_sqs import SQSClient

REGION = "eu-west-1"
ACCESS_KEY = "testing"
TRUST_TABLE = "trusted-digests"
STATE_TABLE = "audit-state"
_START_TIMEOUT = 30.0

#: Variables that could send a test to a real account or profile; removed while moto runs.
_REMOVED = ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_ROLE_ARN")


def _dummy_environment(endpoint_url: str, config_dir: str) -> dict[str, str]:
    return {
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": ACCESS_KEY,
        "AWS_SESSION_TOKEN": ACCESS_KEY,
        "AWS_SECURITY_TOKEN": ACCESS_KEY,
        "AWS_DEFAULT_REGION": REGION,
        "AWS_REGION": REGION,
        "AWS_ENDPOINT_URL": endpoint_url,
        "AWS_EC2_METADATA_DISABLED": "true",
        # Nonexistent files: a developer's ~/.aws must not leak profiles or endpoints into tests.
        "AWS_CONFIG_FILE": f"{config_dir}/config",
        "AWS_SHARED_CREDENTIALS_FILE": f"{config_dir}/credentials",
    }


def _apply(environment: dict[str, str], patch: pytest.MonkeyPatch) -> None:
    for name in _REMOVED:
        patch.delenv(name, raising=False)
    for name in list(os.environ):
        if name.startswith("AWS_ENDPOINT_URL_"):  # service-specific endpoints would win over AWS_ENDPOINT_URL
            patch.delenv(name)
    for name, value in environment.items():
        patch.setenv(name, value)


@dataclass(frozen=True)
class MotoServer:
    """A running moto server and the environment that points boto3 at it."""

    endpoint_url: str
    region: str
    environment: dict[str, str]

    def reset(self) -> None:
        """Forget every resource (POST /moto-api/reset)."""
        request = urllib.request.Request(f"{self.endpoint_url}/moto-api/reset", method="POST")
        with urllib.request.urlopen(request, timeout=10) as response:
            if response.status != 200:
                raise RuntimeError(f"moto reset answered HTTP {response.status}")


_SESSION_LOCK = threading.Lock()


@functools.cache
def _shared_session(region: str) -> boto3.session.Session:
    """One boto3 session for the test session: building a session loads botocore's data files (about 70 ms), a
    client from a built one takes about 5 ms. Every call still gets a new client, so the event hooks a test
    registers on its client stay with that client."""
    return boto3.session.Session(aws_access_key_id=ACCESS_KEY, aws_secret_access_key=ACCESS_KEY, region_name=region)


@dataclass(frozen=True)
class AwsClients:
    """Typed boto3 clients bound to the moto server (explicit endpoint, region and dummy credentials)."""

    endpoint_url: str
    region: str

    def _client(self, service: Literal["dynamodb", "sns", "sqs", "secretsmanager"], config: Config | None) -> Any:
        # Few retries: a test that provokes an error should see it at once, not after back-off.
        config = config or Config(retries={"max_attempts": 2, "mode": "standard"})
        with _SESSION_LOCK:  # a boto3 Session is not thread-safe; its clients are
            return _shared_session(self.region).client(service, endpoint_url=self.endpoint_url, config=config)

    def dynamodb(self, config: Config | None = None) -> DynamoDBClient:
        client: DynamoDBClient = self._client("dynamodb", config)
        return client

    def sns(self, config: Config | None = None) -> SNSClient:
        client: SNSClient = self._client("sns", config)
        return client

    def sqs(self, config: Config | None = None) -> SQSClient:
        client: SQSClient = self._client("sqs", config)
        return client

    def secretsmanager(self, config: Config | None = None) -> SecretsManagerClient:
        client: SecretsManagerClient = self._client("secretsmanager", config)
        return client


@dataclass(frozen=True)
class TableNames:
    trust: str
    state: str


def _start(server: ThreadedMotoServer) -> None:
    """ThreadedMotoServer.start() blocks forever if binding fails; bound it so the session fails instead."""
    starter = threading.Thread(target=server.start, name="moto-start", daemon=True)
    starter.start()
    starter.join(_START_TIMEOUT)
    if starter.is_alive():
        pytest.fail(f"moto server did not start within {_START_TIMEOUT:.0f} s")


def _wait_until_serving(server: MotoServer) -> None:
    deadline = time.monotonic() + _START_TIMEOUT
    while True:
        try:
            server.reset()
            return
        except (OSError, urllib.error.URLError, RuntimeError) as exc:
            if time.monotonic() > deadline:
                pytest.fail(f"moto server at {server.endpoint_url} does not answer: {exc}")
            time.sleep(0.05)


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    """One moto server per session on 127.0.0.1, a free port; AWS_* point at it until the session ends."""
    werkzeug_logger = logging.getLogger("werkzeug")
    previous_level = werkzeug_logger.level
    werkzeug_logger.setLevel(logging.WARNING)  # one access-log line per request drowns real failures
    # Port 0: the OS picks a free port when the server binds, so there is no race with other processes.
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    _start(server)
    host, port = server.get_host_and_port()
    endpoint_url = f"http://{host}:{port}"
    config_dir = str(tmp_path_factory.mktemp("aws-config"))
    running = MotoServer(endpoint_url, REGION, _dummy_environment(endpoint_url, config_dir))
    try:
        _wait_until_serving(running)
        with pytest.MonkeyPatch.context() as patch:
            _apply(running.environment, patch)
            yield running
    finally:
        server.stop()
        werkzeug_logger.setLevel(previous_level)


@pytest.fixture
def aws(moto_server: MotoServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[AwsClients]:
    """A clean moto (state reset before the test) and client factories; AWS_* re-applied for this test.

    The process-wide boto3 clients that `audit.bootstrap` caches (a Lambda warm cache) are dropped before and
    after, so code under test always talks to this test's endpoint.
    """
    _apply(moto_server.environment, monkeypatch)
    moto_server.reset()
    bootstrap.dynamodb_client.cache_clear()
    bootstrap.sns_client.cache_clear()
    yield AwsClients(moto_server.endpoint_url, moto_server.region)
    bootstrap.dynamodb_client.cache_clear()
    bootstrap.sns_client.cache_clear()


@pytest.fixture(scope="session")
def create_table_requests(moto_server: MotoServer) -> list[dict[str, Any]]:
    """The CreateTable requests `create_tables` (what `digest-audit init` runs) sends, captured once per session.

    `create_tables` also waits for each table and checks its key schema (six calls, about 90 ms on moto);
    sending the same two requests again after each test's reset makes the same tables in two calls.
    """
    requests: list[dict[str, Any]] = []

    def seen(params: dict[str, Any], **_: object) -> None:
        requests.append(dict(params))

    client = AwsClients(moto_server.endpoint_url, moto_server.region).dynamodb()
    client.meta.events.register("provide-client-params.dynamodb.CreateTable", seen)
    # Names of its own, deleted again: whatever test asks first for this fixture keeps its moto state.
    stem = f"capture-{secrets.token_hex(4)}"
    names = {f"{stem}-trust": TRUST_TABLE, f"{stem}-state": STATE_TABLE}
    create_tables(client, *names)
    for name in names:
        client.delete_table(TableName=name)
    assert [request["TableName"] for request in requests] == list(names), requests
    return [{**request, "TableName": names[request["TableName"]]} for request in requests]


@pytest.fixture
def tables(aws: AwsClients, monkeypatch: pytest.MonkeyPatch, create_table_requests: list[dict[str, Any]]) -> TableNames:
    """Both tables made as `create_tables` (`digest-audit init`) makes them, on the reset moto; env variables set.

    Fresh tables on a reset moto rather than truncated shared ones: a reset is one call, while emptying the tables
    and deleting the topics, queues and secrets a test made takes a dozen (measured: 17-38 ms against 240-380 ms).
    """
    client = aws.dynamodb()
    for request in create_table_requests:
        status = client.create_table(**request)["TableDescription"].get("TableStatus")
        assert status == "ACTIVE", f"moto made {request['TableName']} {status}; create_tables would have waited"
    monkeypatch.setenv(ENV_TRUST_TABLE, TRUST_TABLE)
    monkeypatch.setenv(ENV_STATE_TABLE, STATE_TABLE)
    return TableNames(trust=TRUST_TABLE, state=STATE_TABLE)
