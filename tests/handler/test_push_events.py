"""The audit function consuming the push-event queue: SQS batches (events/sqs-batch.json, ECR events as the rule
forwards them, receiver messages) against a real registry and moto, with partial batch responses."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

import handler
from audit import push_events
from audit.adapters.dynamodb_store import DynamoRunLease
from audit.config import ENV_STATE_TABLE
from audit.hooks import CheckRequest, HookAction, HookSource
from audit.models import Digest
from audit.records import WatchSettings
from tests.support.aws_fixtures import AwsClients
from tests.support.lambda_env import (
    IN_NEW_CONTAINER,
    NO_METRICS_WARNING,
    SERVICE,
    Function,
    LambdaEnvironment,
    emf_documents,
    emitted_metrics,
    load_event,
    push_queue,
)
from tests.support.local_registry import LocalRegistry
from tests.support.push_queue import PushQueue

pytestmark = [pytest.mark.integration, NO_METRICS_WARNING, IN_NEW_CONTAINER]


@pytest.fixture
def queue(aws: AwsClients) -> PushQueue:
    return push_queue(aws)


@pytest.fixture
def function_log(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """The function's log records (Powertools' logger is named after the service and does not propagate)."""
    powertools = logging.getLogger(SERVICE)
    powertools.addHandler(caplog.handler)
    yield caplog
    powertools.removeHandler(caplog.handler)


def send(queue: PushQueue, *bodies: str) -> dict[str, Any]:
    """Put bodies on the queue and read them back as the Lambda event source would deliver them."""
    for body in bodies:
        queue.sqs.send_message(QueueUrl=queue.url, MessageBody=body)
    return queue.receive_batch(expect=len(bodies))


def check(
    registry: LocalRegistry,
    repository: str,
    tag: str | None,
    *,
    action: HookAction = HookAction.PUSH,
    digest: str | None = None,
    pushed_at: datetime | None = None,
) -> str:
    """The message the receiver queues for a distribution notification about this registry."""
    return CheckRequest(
        registry=registry.host,
        repository=repository,
        tag=tag,
        digest=Digest.parse(digest) if digest else None,
        action=action,
        source=HookSource.DISTRIBUTION,
        event_time=pushed_at,
    ).to_message()


# --- the sample batch and the ECR samples -----------------------------------------------------------------------


def test_sample_batch_drops_the_malformed_message_and_fails_none(
    function: Function, capsys: pytest.CaptureFixture[str], function_log: pytest.LogCaptureFixture
) -> None:
    """events/sqs-batch.json: a receiver message, a raw ECR event, a tag with an escape character. Nothing is
    recorded for those images, so nothing is checked; the malformed message is reported and dropped."""
    capsys.readouterr()

    response = function.invoke(load_event("sqs-batch.json"))

    assert response == {"batchItemFailures": []}
    dropped = [record for record in function_log.records if record.getMessage() == "dropped push event message"]
    assert dropped
    assert all("tag grammar" in str(record.__dict__.get("error")) for record in dropped)
    assert "\x1b" not in function_log.text
    metrics = emitted_metrics(capsys.readouterr().out)
    assert (metrics.values["PushEventsReceived"], metrics.values["PushEventsDropped"]) == (3, 1)
    assert metrics.values["TagsChecked"] == 0
    assert "AuditCompleted" not in metrics.values  # push runs must not feed the schedule's heartbeat


@pytest.mark.parametrize(
    ("sample", "action", "tag"), [("ecr-push.json", HookAction.PUSH, "1.4.0"), ("ecr-delete.json", "delete", "1.3.0")]
)
def test_ecr_events_as_the_rule_forwards_them(
    function: Function, queue: PushQueue, sample: str, action: str, tag: str
) -> None:
    event = load_event(sample)
    (request,) = [push_events.parse_queue_message(json.dumps(event))]
    assert request is not None
    assert (request.image, request.tag, request.action) == (
        "123456789012.dkr.ecr.eu-west-1.amazonaws.com/team/app",
        tag,
        action,
    )
    assert request.event_time == datetime(2026, 11, 28, 10, 0, 1, tzinfo=UTC)

    # Untracked there: the batch is consumed without a check and without a failure.
    assert function.invoke(send(queue, json.dumps(event))) == {"batchItemFailures": []}


# --- the verdicts a push can bring, through the normal engine ----------------------------------------------------


def test_a_tampered_push_alerts_once_with_time_to_detect_and_the_schedule_adds_no_duplicate(
    function: Function,
    lambda_env_for: LambdaEnvironment,
    registry: LocalRegistry,
    repository: str,
    queue: PushQueue,
    capsys: pytest.CaptureFixture[str],
) -> None:
    env = lambda_env_for
    released = registry.pusher.push_image(repository, "1.0", "docker")
    other = registry.pusher.push_image(repository, "2.0", "docker")
    env.record(registry.reference_of(released), released.digest)
    env.record(registry.reference_of(other), other.digest)
    tampered = registry.pusher.tamper(repository, "1.0")
    pushed_at = datetime.now(UTC) - timedelta(seconds=30)
    capsys.readouterr()

    batch = send(queue, check(registry, repository, "1.0", digest=tampered.digest, pushed_at=pushed_at))
    response = function.invoke(batch)

    assert response == {"batchItemFailures": []}
    (envelope,) = env.alerts.envelopes()
    (finding,) = json.loads(envelope["Message"])["findings"]
    assert (finding["tag"], finding["status"], finding["live_digest"]) == ("1.0", "drift", tampered.digest)
    metrics = emitted_metrics(capsys.readouterr().out)
    assert metrics.values["TagsChecked"] == 1  # only the named tag, not 2.0
    assert metrics.units["TimeToDetect"] == "Seconds"
    assert metrics.values["TimeToDetect"] >= 30
    assert "AuditCompleted" not in metrics.values

    # The hourly run sees the same drift under the same dedup key: no second alert.
    summary = function.invoke(load_event("scheduled.json"))
    assert summary["by_verdict"] == {"drift": 1, "match": 1}
    assert env.alerts.envelopes() == []


def test_a_push_that_ci_recorded_in_the_grace_is_a_match(
    function: Function,
    lambda_env_for: LambdaEnvironment,
    registry: LocalRegistry,
    repository: str,
    queue: PushQueue,
    capsys: pytest.CaptureFixture[str],
) -> None:
    env = lambda_env_for
    env.trust.put_watch_settings(WatchSettings(registry=registry.host, repository=repository, track_new_tags=True))
    pushed = registry.pusher.push_image(repository, "1.1", "oci")
    env.record(registry.reference_of(pushed), pushed.digest)  # CI records before the grace ran out
    capsys.readouterr()

    response = function.invoke(send(queue, check(registry, repository, "1.1", pushed_at=datetime.now(UTC))))

    assert response == {"batchItemFailures": []}
    assert env.alerts.envelopes() == []
    metrics = emitted_metrics(capsys.readouterr().out)
    assert (metrics.values["VerdictMatch"], metrics.values["AlertsPublished"]) == (1, 0)
    assert "TimeToDetect" not in metrics.values


def test_a_push_nobody_recorded_is_untracked_where_new_tags_are_tracked(
    function: Function, lambda_env_for: LambdaEnvironment, registry: LocalRegistry, repository: str, queue: PushQueue
) -> None:
    env = lambda_env_for
    env.trust.put_watch_settings(WatchSettings(registry=registry.host, repository=repository, track_new_tags=True))
    registry.pusher.push_image(repository, "1.2", "docker")

    assert function.invoke(send(queue, check(registry, repository, "1.2"))) == {"batchItemFailures": []}

    (envelope,) = env.alerts.envelopes()
    (finding,) = json.loads(envelope["Message"])["findings"]
    assert (finding["tag"], finding["status"]) == ("1.2", "untracked")


def test_a_delete_by_digest_checks_every_tag_trusted_with_that_digest(
    function: Function, lambda_env_for: LambdaEnvironment, registry: LocalRegistry, repository: str, queue: PushQueue
) -> None:
    env = lambda_env_for
    image = registry.pusher.push_image(repository, "3.0", "docker")
    alias = registry.pusher.tag(image, "3")
    kept = registry.pusher.push_image(repository, "4.0", "docker")
    for pushed in (image, alias, kept):
        env.record(registry.reference_of(pushed), pushed.digest)
    registry.pusher.delete_manifest(repository, image.digest)

    message = check(registry, repository, None, action=HookAction.DELETE, digest=image.digest)
    assert function.invoke(send(queue, message)) == {"batchItemFailures": []}

    (envelope,) = env.alerts.envelopes()
    findings = json.loads(envelope["Message"])["findings"]
    assert sorted((f["tag"], f["status"]) for f in findings) == [("3", "missing"), ("3.0", "missing")]


def test_a_failed_audit_returns_every_valid_message_and_drops_the_malformed(
    function: Function,
    lambda_env_for: LambdaEnvironment,
    registry: LocalRegistry,
    repository: str,
    queue: PushQueue,
    monkeypatch: pytest.MonkeyPatch,
    function_log: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv(ENV_STATE_TABLE, "no-such-table")
    pushed = registry.pusher.push_image(repository, "5.0", "docker")
    lambda_env_for.record(registry.reference_of(pushed), pushed.digest)
    batch = send(queue, check(registry, repository, "5.0"), check(registry, repository, "5.1"), "{not json")
    valid = {record["messageId"] for record in batch["Records"] if record["body"] != "{not json"}

    response = function.invoke(batch)

    assert {item["itemIdentifier"] for item in response["batchItemFailures"]} == valid
    assert "push event audit failed" in function_log.messages
    queue.delete(batch, response)
    assert queue.counts()["visible"] == 0  # the failures become visible again after the visibility timeout only


def test_the_scheduler_input_is_not_mistaken_for_a_batch() -> None:
    assert handler.is_sqs_batch(load_event("sqs-batch.json"))
    others: list[Any] = [load_event("scheduled.json"), {}, {"Records": []}, {"Records": [{"eventSource": "aws:s3"}]}]
    for event in others:
        assert not handler.is_sqs_batch(event)
    # A scheduler input with a Records key is refused by the scheduled path, never consumed as a batch.
    assert not handler.is_sqs_batch({"Records": [{"eventSource": "aws:sqs"}], "dry_run": True})


def test_emits_one_metrics_document_per_batch(function: Function, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    function.invoke(load_event("sqs-batch.json"))
    assert len(emf_documents(capsys.readouterr().out)) == 1


def test_a_batch_that_meets_another_runs_lease_goes_back_to_the_queue(
    function: Function,
    lambda_env_for: LambdaEnvironment,
    registry: LocalRegistry,
    repository: str,
    queue: PushQueue,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """An operator's `run` or `listen` holds the lease: the batch checked nothing, so every message is retried."""
    env = lambda_env_for
    released = registry.pusher.push_image(repository, "1.0", "docker")
    env.record(registry.reference_of(released), released.digest)
    tampered = registry.pusher.tamper(repository, "1.0")
    lease = DynamoRunLease(env.tables.state, env.dynamodb, duration=timedelta(minutes=15))
    assert lease.acquire("operator-run").acquired
    batch = send(queue, check(registry, repository, "1.0", digest=tampered.digest))
    capsys.readouterr()

    response = function.invoke(batch)

    assert response == {"batchItemFailures": [{"itemIdentifier": batch["Records"][0]["messageId"]}]}
    assert env.alerts.envelopes() == []
    assert emitted_metrics(capsys.readouterr().out).values["RunSteppedAside"] == 1

    lease.release("operator-run")
    assert function.invoke(batch) == {"batchItemFailures": []}
    assert len(env.alerts.envelopes()) == 1
