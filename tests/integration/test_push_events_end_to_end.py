"""Push events end to end with real parts: docker-registry notifications → the receiver Lambda behind a local
Function URL → SQS on moto (1 s grace) → the audit function invoked with the SQS batch → SNS → an SQS subscriber.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import handler  # noqa: F401 - first import at collection, so Powertools' logger writes to a stable stream
import receiver
from tests.support.function_url import FunctionUrl, function_url
from tests.support.lambda_env import (
    IN_NEW_CONTAINER,
    NO_METRICS_WARNING,
    TEST_WEBHOOK_TOKEN,
    Function,
    LambdaEnvironment,
    ReceiverEnvironment,
    cold_start,
    load_event,
)
from tests.support.local_registry import LocalRegistry, local_registry
from tests.support.registry_process import Notifications

pytestmark = [pytest.mark.integration, NO_METRICS_WARNING, IN_NEW_CONTAINER]


REPOSITORY = "team/app"
GRACE_SECONDS = "1"


@pytest.fixture
def receiver_url(receiver_env: ReceiverEnvironment) -> Iterator[FunctionUrl]:
    receiver_env.setenv(receiver.ENV_GRACE, GRACE_SECONDS)
    with function_url(receiver.lambda_handler) as running:
        yield running


@pytest.fixture
def notifying_registry(receiver_url: FunctionUrl, tmp_path: Path) -> Iterator[LocalRegistry]:
    """A docker-registry that sends its notifications to the receiver, with the webhook token."""
    notifications = Notifications(url=f"{receiver_url.url}/hooks/distribution", token=TEST_WEBHOOK_TOKEN)
    with local_registry(tmp_path / "registry", notifications=notifications) as running:
        yield running


def wait_for_accepted(url: FunctionUrl, count: int, *, deadline_seconds: float = 30.0) -> None:
    """Until the receiver accepted `count` deliveries in all (the registry notifies asynchronously)."""
    deadline = time.monotonic() + deadline_seconds
    while url.seen().count(202) < count:
        assert time.monotonic() < deadline, f"the receiver accepted {url.seen().count(202)} of {count}: {url.seen()}"
        time.sleep(0.05)


def consume(function: Function, receiver_env: ReceiverEnvironment) -> dict[str, object]:
    """What the SQS event source does: deliver the waiting messages as one batch, delete what succeeded."""
    batch = receiver_env.queue.receive_batch(expect=1)
    response = function.invoke(batch)
    receiver_env.queue.delete(batch, response)
    return {"batch": batch, "response": response}


def test_a_swapped_tag_is_caught_from_the_registry_notification(
    notifying_registry: LocalRegistry,
    receiver_url: FunctionUrl,
    receiver_env: ReceiverEnvironment,
    lambda_env: LambdaEnvironment,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    registry = notifying_registry
    lambda_env.allow_plain_http(registry.host)
    function = cold_start(monkeypatch)

    # CI pushes a release; its notification is queued before CI records it, and checked after the grace.
    release = registry.pusher.push_image(REPOSITORY, "1.0", "docker")
    wait_for_accepted(receiver_url, 1)
    lambda_env.record(registry.reference_of(release), release.digest)
    first = consume(function, receiver_env)

    assert first["response"] == {"batchItemFailures": []}
    assert lambda_env.alerts.envelopes() == []

    # A leaked push credential swaps the tag: the notification leads to one drift alert.
    tampered = registry.pusher.tamper(REPOSITORY, "1.0")
    wait_for_accepted(receiver_url, 2)
    second = consume(function, receiver_env)

    assert second["response"] == {"batchItemFailures": []}
    (envelope,) = lambda_env.alerts.envelopes()
    assert envelope["Subject"].startswith("DRIFT: ")
    (finding,) = json.loads(envelope["Message"])["findings"]
    assert (finding["registry"], finding["repository"], finding["tag"]) == (registry.host, REPOSITORY, "1.0")
    assert (finding["trusted_digest"], finding["live_digest"]) == (release.digest, tampered.digest)

    # The next scheduled run finds the same drift and stays silent.
    summary = function.invoke(load_event("scheduled.json"))
    assert summary["by_verdict"] == {"drift": 1}
    assert lambda_env.alerts.envelopes() == []

    # Every delivery was authenticated and well formed (202 manifests, 204 blobs and pulls), none refused.
    assert set(receiver_url.seen()) <= {202, 204}
