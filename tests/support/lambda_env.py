"""Fixtures for invoking the Lambda handler as Lambda would: its environment on moto and a local registry,
a fake LambdaContext, a fresh import of `handler` per test (a cold start), and the alert topic's subscriber.
"""

from __future__ import annotations

import importlib
import json
import secrets
import sys
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import pytest
from aws_lambda_powertools.utilities import parameters
from aws_lambda_powertools.utilities.typing import LambdaContext

from audit import bootstrap
from audit.adapters.dynamodb_store import DynamoTrustStore
from audit.config import (
    ENV_CREDENTIALS_SECRET,
    ENV_ENABLE_ECR,
    ENV_INSECURE_REGISTRIES,
    ENV_REVERIFY_DELAY,
    ENV_TIMEOUT,
    ENV_TOPIC_ARN,
)
from audit.models import Digest, ImageRef
from audit.records import TrustedImage
from tests.support.aws_fixtures import AwsClients, TableNames
from tests.support.local_registry import LocalRegistry
from tests.support.push_queue import PushQueue
from tests.support.sqs_drain import drain_bodies

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient
    from mypy_boto3_sqs import SQSClient

ROOT = Path(__file__).resolve().parents[2]
EVENTS = ROOT / "events"

NAMESPACE = "DigestAudit"
SERVICE = "digest-audit"
FUNCTION_NAME = "digest-audit-AuditFunction-0123456789AB"
ACCOUNT = "123456789012"
#: Comfortably more than the handler's margin (reverify delay + 2 x registry timeout + 10 s).
PLENTY_MS = 300_000

#: Powertools warns when a failed or rejected invocation flushes no metrics; that is the expected outcome.
NO_METRICS_WARNING = pytest.mark.filterwarnings("ignore:No application metrics to publish:UserWarning")
#: Each test of a module so marked starts in a new container and leaves none behind.
IN_NEW_CONTAINER = pytest.mark.usefixtures("new_container")

#: Variables of audit.config that a developer's shell might hold; each test starts without them.
_AUDIT_VARIABLES = (
    ENV_CREDENTIALS_SECRET,
    ENV_TIMEOUT,
    "DIGEST_AUDIT_CONCURRENCY",
    "DIGEST_AUDIT_REMINDER_INTERVAL",
    "DIGEST_AUDIT_UNVERIFIABLE_AFTER",
)


def load_event(name: str) -> Any:
    """One of the sample events under events/, exactly as `sam local invoke -e` would send it."""
    return json.loads((EVENTS / name).read_text(encoding="utf-8"))


class FakeContext(LambdaContext):
    """A LambdaContext whose remaining time is `remaining_ms` for the first `drop_after` calls, then `low_ms`."""

    def __init__(self, *, remaining_ms: int = PLENTY_MS, drop_after: int | None = None, low_ms: int = 1_000) -> None:
        self._function_name = FUNCTION_NAME
        self._function_version = "$LATEST"
        self._invoked_function_arn = f"arn:aws:lambda:eu-west-1:{ACCOUNT}:function:{FUNCTION_NAME}"
        self._memory_limit_in_mb = 512
        self._aws_request_id = str(uuid.uuid4())
        self._log_group_name = f"/aws/lambda/{FUNCTION_NAME}"
        self._log_stream_name = "2025/01/01/[$LATEST]0123456789abcdef"
        self.remaining_ms = remaining_ms
        self.drop_after = drop_after
        self.low_ms = low_ms
        self.calls = 0

    def get_remaining_time_in_millis(self) -> int:  # type: ignore[override]  # an instance method here
        self.calls += 1
        if self.drop_after is not None and self.calls > self.drop_after:
            return self.low_ms
        return self.remaining_ms


@dataclass(frozen=True)
class AlertQueue:
    """An SQS queue subscribed to the alert topic (no raw delivery: bodies are SNS envelopes)."""

    sqs: SQSClient
    url: str

    def envelopes(self) -> list[dict[str, Any]]:
        return [json.loads(body) for body in drain_bodies(self.sqs, self.url)]


@dataclass
class LambdaEnvironment:
    """What the function's environment points at, and helpers to arrange and inspect it."""

    aws: AwsClients
    tables: TableNames
    topic_arn: str
    alerts: AlertQueue
    monkeypatch: pytest.MonkeyPatch
    insecure: list[str] = field(default_factory=list)

    @property
    def dynamodb(self) -> DynamoDBClient:
        return self.aws.dynamodb()

    @property
    def trust(self) -> DynamoTrustStore:
        return DynamoTrustStore(self.tables.trust, self.dynamodb)

    def allow_plain_http(self, *hosts: str) -> None:
        """Add hosts to DIGEST_AUDIT_INSECURE_REGISTRIES (read when the app is built, at the first invocation)."""
        self.insecure.extend(hosts)
        self.monkeypatch.setenv(ENV_INSECURE_REGISTRIES, ",".join(self.insecure))

    def setenv(self, name: str, value: str) -> None:
        self.monkeypatch.setenv(name, value)

    def record(self, reference: str, digest: str) -> TrustedImage:
        """What CI's `digest-audit record` would store for `reference` (written to the trust table)."""
        ref = ImageRef.parse(reference)
        assert ref.tag is not None
        item = TrustedImage(
            registry=ref.registry,
            repository=ref.repository,
            tag=ref.tag,
            digest=Digest.parse(digest),
            source="https://ci.example/pipelines/1",
            recorded_at=datetime.now(UTC),
            recorded_by="handler-tests",
        )
        self.trust.record(item)
        return item

    def state_items(self) -> list[dict[str, Any]]:
        """The raw state table, sorted by key: compared before and after a run that must write nothing."""
        pages = self.dynamodb.get_paginator("scan").paginate(TableName=self.tables.state, ConsistentRead=True)
        items = [dict(item) for page in pages for item in page.get("Items", [])]
        return sorted(items, key=lambda item: (str(item["image"]), str(item["tag"])))

    def state_keys(self) -> set[tuple[str, str]]:
        return {(item["image"]["S"], item["tag"]["S"]) for item in self.state_items()}


def _forget_warm_container() -> None:
    """Everything a warm Lambda container keeps between invocations, dropped (a new container)."""
    bootstrap.reset_lambda_app()
    bootstrap.dynamodb_client.cache_clear()
    bootstrap.sns_client.cache_clear()
    parameters.clear_caches()  # type: ignore[no-untyped-call]  # Powertools leaves it unannotated


@pytest.fixture
def new_container() -> Iterator[None]:
    """Each test starts in a new container and leaves none behind (the app's loop and clients closed)."""
    _forget_warm_container()
    yield
    _forget_warm_container()


@pytest.fixture
def lambda_env(
    aws: AwsClients, tables: TableNames, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> LambdaEnvironment:
    """The environment template.yaml gives the function, pointed at moto; alerts reach an SQS subscriber."""
    topic_arn = aws.sns().create_topic(Name=f"digest-audit-alerts-{secrets.token_hex(3)}")["TopicArn"]
    sqs = aws.sqs()
    queue_url = sqs.create_queue(QueueName=f"alert-subscriber-{secrets.token_hex(3)}")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    aws.sns().subscribe(TopicArn=topic_arn, Protocol="sqs", Endpoint=queue_arn)

    for name in _AUDIT_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("POWERTOOLS_METRICS_NAMESPACE", NAMESPACE)
    monkeypatch.setenv("POWERTOOLS_SERVICE_NAME", SERVICE)
    monkeypatch.setenv(ENV_TOPIC_ARN, topic_arn)
    monkeypatch.setenv(ENV_REVERIFY_DELAY, "0")
    monkeypatch.setenv(ENV_ENABLE_ECR, "false")
    monkeypatch.setenv(ENV_INSECURE_REGISTRIES, "")
    # A developer's ~/.docker/config.json must not lend the function credentials Lambda would not have.
    docker_config = tmp_path / "docker-config"
    docker_config.mkdir()
    monkeypatch.setenv("DOCKER_CONFIG", str(docker_config))
    return LambdaEnvironment(aws, tables, topic_arn, AlertQueue(sqs, queue_url), monkeypatch)


@pytest.fixture
def lambda_env_for(lambda_env: LambdaEnvironment, registry: LocalRegistry) -> LambdaEnvironment:
    """`lambda_env` with the module's plain-http `registry` listed insecure."""
    lambda_env.allow_plain_http(registry.host)
    return lambda_env


@dataclass(frozen=True)
class Function:
    """The handler module as one cold start imported it (Powertools reads its environment at import)."""

    module: ModuleType

    def invoke(self, event: object, context: FakeContext | None = None) -> dict[str, Any]:
        summary = self.module.lambda_handler(event, context or FakeContext())
        assert isinstance(summary, dict)
        return summary


def cold_start(monkeypatch: pytest.MonkeyPatch) -> Function:
    """Import `handler` afresh, after the environment is set (the previous module is restored at teardown)."""
    monkeypatch.delitem(sys.modules, "handler", raising=False)
    return Function(importlib.import_module("handler"))


@pytest.fixture
def function(lambda_env_for: LambdaEnvironment, monkeypatch: pytest.MonkeyPatch) -> Function:
    """The handler, cold-started with `lambda_env_for` in place."""
    return cold_start(monkeypatch)


def emf_documents(stdout: str) -> list[dict[str, Any]]:
    """The CloudWatch EMF documents among the lines written to stdout (Powertools prints one per flush)."""
    documents: list[dict[str, Any]] = []
    for line in stdout.splitlines():
        if not line.startswith("{"):
            continue
        try:
            document = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(document, dict) and "_aws" in document:
            documents.append(document)
    return documents


@dataclass(frozen=True)
class EmittedMetrics:
    """One EMF document: its namespace, dimension names and values, and every metric with its value."""

    namespace: str
    dimensions: list[list[str]]
    dimension_values: dict[str, str]
    values: dict[str, float]
    units: dict[str, str]

    @classmethod
    def parse(cls, document: Mapping[str, Any]) -> EmittedMetrics:
        (directive,) = document["_aws"]["CloudWatchMetrics"]
        names = [metric["Name"] for metric in directive["Metrics"]]
        values: dict[str, float] = {}
        for name in names:
            raw = document[name]
            values[name] = float(sum(raw) if isinstance(raw, list) else raw)
        dimensions: list[list[str]] = directive["Dimensions"]
        return cls(
            namespace=directive["Namespace"],
            dimensions=dimensions,
            dimension_values={name: str(document[name]) for group in dimensions for name in group},
            values=values,
            units={metric["Name"]: metric["Unit"] for metric in directive["Metrics"]},
        )


def emitted_metrics(stdout: str) -> EmittedMetrics:
    """The single EMF document one invocation printed."""
    documents = emf_documents(stdout)
    assert len(documents) == 1, f"expected one EMF document, got {len(documents)}"
    return EmittedMetrics.parse(documents[0])


# --- push events: the queue, the receiver's environment -------------------------------------------------------

#: The documented test credentials of events/README.md (the sample events are signed or addressed with them).
TEST_WEBHOOK_TOKEN = "test-webhook-token-0123456789abcdefghijklmnopqrstuv"
TEST_GITHUB_SECRET = "test-github-webhook-secret-0123456789"


def push_queue(aws: AwsClients, *, name: str | None = None) -> PushQueue:
    sqs = aws.sqs()
    url = sqs.create_queue(QueueName=name or f"push-events-{secrets.token_hex(3)}")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    return PushQueue(sqs, url, arn, aws.region)


@dataclass(frozen=True)
class ReceiverEnvironment:
    """What template.yaml gives the receiver, on moto: the queue, the two generated secrets, the switches."""

    queue: PushQueue
    token_secret_arn: str
    github_secret_arn: str
    monkeypatch: pytest.MonkeyPatch

    def setenv(self, name: str, value: str) -> None:
        self.monkeypatch.setenv(name, value)


@pytest.fixture
def receiver_env(aws: AwsClients, monkeypatch: pytest.MonkeyPatch) -> Iterator[ReceiverEnvironment]:
    """Every source on, grace 0 (tests read the queue at once), secrets holding the documented test values."""
    import receiver  # noqa: PLC0415 - imported here so that the module's own import stays under test elsewhere

    manager = aws.secretsmanager()
    token_arn = manager.create_secret(Name=f"webhook-token-{secrets.token_hex(3)}", SecretString=TEST_WEBHOOK_TOKEN)
    github_arn = manager.create_secret(Name=f"github-secret-{secrets.token_hex(3)}", SecretString=TEST_GITHUB_SECRET)
    queue = push_queue(aws)
    monkeypatch.setenv(receiver.ENV_QUEUE_URL, queue.url)
    monkeypatch.setenv(receiver.ENV_GRACE, "0")
    monkeypatch.setenv(receiver.ENV_SOURCES, "distribution,github,dockerhub")
    monkeypatch.setenv(receiver.ENV_TOKEN_SECRET, token_arn["ARN"])
    monkeypatch.setenv(receiver.ENV_GITHUB_SECRET, github_arn["ARN"])
    receiver.reset_warm_caches()
    yield ReceiverEnvironment(queue, token_arn["ARN"], github_arn["ARN"], monkeypatch)
    receiver.reset_warm_caches()
