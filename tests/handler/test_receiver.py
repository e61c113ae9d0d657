"""The webhook receiver Lambda with the sample Function URL events and hostile input, against SQS and Secrets
Manager on moto: what it answers, what it queues, and what it never logs."""

from __future__ import annotations

import base64
import copy
import hashlib
import hmac
import json
import logging
import subprocess
import sys
from datetime import UTC, datetime
from typing import Any

import pytest

import receiver
from audit.hooks import CheckRequest
from tests.support.aws_fixtures import AwsClients
from tests.support.lambda_env import ROOT, TEST_GITHUB_SECRET, TEST_WEBHOOK_TOKEN, ReceiverEnvironment, load_event

pytestmark = [pytest.mark.integration]


#: The time of the signed GitHub sample delivery (events/github-package.json), for its stale check.
GITHUB_SAMPLE_TIME = datetime(2026, 11, 28, 10, 0, 5, tzinfo=UTC)
FIXED_BODIES = {
    "accepted",
    "",
    "malformed request",
    "missing or invalid credentials",
    "not found",
    "method not allowed",
    "request body too large",
    "unavailable",
}


@pytest.fixture
def at_sample_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(receiver, "current_time", lambda: GITHUB_SAMPLE_TIME)


def invoke(event: dict[str, Any]) -> dict[str, Any]:
    answer = receiver.lambda_handler(event, None)
    assert answer["body"] in FIXED_BODIES, "the receiver must never reflect input"
    return answer


def queued(env: ReceiverEnvironment) -> list[CheckRequest]:
    return [CheckRequest.from_message(body) for body in env.queue.bodies()]


def with_body(event: dict[str, Any], body: bytes, **headers: str) -> dict[str, Any]:
    changed = copy.deepcopy(event)
    changed["body"] = body.decode("utf-8")
    changed["isBase64Encoded"] = False
    changed["headers"].update(headers)
    return changed


def github_event(payload: bytes, *, delivery: str = "d-1", event: str = "registry_package") -> dict[str, Any]:
    signed = with_body(load_event("github-package.json"), payload)
    signed["headers"]["x-hub-signature-256"] = (
        "sha256=" + hmac.new(TEST_GITHUB_SECRET.encode(), payload, hashlib.sha256).hexdigest()
    )
    signed["headers"]["x-github-delivery"] = delivery
    signed["headers"]["x-github-event"] = event
    return signed


def github_payload() -> bytes:
    sample = load_event("github-package.json")
    return base64.b64decode(sample["body"])


# --- the sample events ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sample", "image", "source"),
    [
        ("distribution-push.json", "registry.example.com/team/app", "distribution"),
        ("github-package.json", "ghcr.io/example-org/app", "github"),
        ("dockerhub-push.json", "registry-1.docker.io/example/app", "dockerhub"),
    ],
)
def test_sample_deliveries_queue_one_check_of_the_pushed_tag(
    receiver_env: ReceiverEnvironment, at_sample_time: None, sample: str, image: str, source: str
) -> None:
    answer = invoke(load_event(sample))

    assert (answer["statusCode"], answer["body"]) == (202, "accepted")
    (request,) = queued(receiver_env)
    assert (request.image, request.tag, request.action.value, request.source.value) == (image, "1.4.0", "push", source)


def test_messages_wait_the_grace_in_the_queue(receiver_env: ReceiverEnvironment) -> None:
    receiver_env.setenv(receiver.ENV_GRACE, "900")

    assert invoke(load_event("distribution-push.json"))["statusCode"] == 202

    assert receiver_env.queue.counts() == {"visible": 0, "delayed": 1}


def test_a_source_switched_off_is_not_found(receiver_env: ReceiverEnvironment, at_sample_time: None) -> None:
    receiver_env.setenv(receiver.ENV_SOURCES, "distribution")

    assert invoke(load_event("dockerhub-push.json"))["statusCode"] == 404
    assert invoke(load_event("github-package.json"))["statusCode"] == 404
    assert invoke(load_event("distribution-push.json"))["statusCode"] == 202
    assert len(queued(receiver_env)) == 1


# --- hostile input: a clear 4xx, nothing queued, nothing logged that should not be -------------------------------


def test_wrong_or_missing_credentials_are_refused_and_never_logged(
    receiver_env: ReceiverEnvironment, at_sample_time: None, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    distribution = load_event("distribution-push.json")
    wrong_bearer = copy.deepcopy(distribution)
    wrong_bearer["headers"]["authorization"] = "Bearer guessed-token-value"
    no_bearer = copy.deepcopy(distribution)
    del no_bearer["headers"]["authorization"]
    dockerhub = load_event("dockerhub-push.json")
    wrong_url = copy.deepcopy(dockerhub)
    wrong_url["rawPath"] = "/hooks/dockerhub/guessed-token-value"
    github = load_event("github-package.json")
    bad_signature = copy.deepcopy(github)
    bad_signature["headers"]["x-hub-signature-256"] = "sha256=" + "0" * 64
    unsigned = copy.deepcopy(github)
    del unsigned["headers"]["x-hub-signature-256"]

    for event in (wrong_bearer, no_bearer, wrong_url, bad_signature, unsigned):
        assert invoke(event)["statusCode"] == 401

    assert receiver_env.queue.counts() == {"visible": 0, "delayed": 0}
    logged = caplog.text
    assert "401" in logged
    for secret in ("guessed-token-value", TEST_WEBHOOK_TOKEN, TEST_GITHUB_SECRET):
        assert secret not in logged


def test_a_replayed_github_delivery_is_queued_once(receiver_env: ReceiverEnvironment, at_sample_time: None) -> None:
    first = invoke(load_event("github-package.json"))
    replay = invoke(load_event("github-package.json"))

    assert (first["statusCode"], replay["statusCode"]) == (202, 204)
    assert len(queued(receiver_env)) == 1


def test_a_stale_github_delivery_is_refused(receiver_env: ReceiverEnvironment) -> None:
    """Without the sample-time clock, the real now is far past the sample's payload time."""
    assert invoke(load_event("github-package.json"))["statusCode"] == 401
    assert receiver_env.queue.counts()["visible"] == 0


def test_unknown_github_events_are_ignored(receiver_env: ReceiverEnvironment, at_sample_time: None) -> None:
    answer = invoke(github_event(github_payload(), event="push"))

    assert answer["statusCode"] == 204
    assert receiver_env.queue.counts()["visible"] == 0


def test_a_huge_body_is_refused_before_it_is_read(receiver_env: ReceiverEnvironment) -> None:
    huge = with_body(load_event("distribution-push.json"), b"{" + b" " * (2 * 1024 * 1024) + b"}")
    answer = invoke(huge)

    assert answer["statusCode"] == 413
    assert receiver_env.queue.counts()["visible"] == 0


@pytest.mark.parametrize(
    "body",
    [b"not json", b"[]", b'{"events": "no list"}', b'{"events": [{"action": "push"}]}', b"\xff\xfe"],
)
def test_malformed_bodies_are_bad_requests(receiver_env: ReceiverEnvironment, body: bytes) -> None:
    event = load_event("distribution-push.json")
    event["body"] = base64.b64encode(body).decode()
    event["isBase64Encoded"] = True

    assert invoke(event)["statusCode"] == 400
    assert receiver_env.queue.counts()["visible"] == 0


def test_a_tag_with_control_characters_is_refused_and_logged_escaped(
    receiver_env: ReceiverEnvironment, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    envelope = json.loads(load_event("distribution-push.json")["body"])
    envelope["events"][0]["target"]["tag"] = "1.4.0\x1b[31m\nFAKE LOG LINE"
    event = with_body(load_event("distribution-push.json"), json.dumps(envelope).encode())

    assert invoke(event)["statusCode"] == 400
    assert receiver_env.queue.counts()["visible"] == 0
    assert "\x1b" not in caplog.text
    assert "\nFAKE LOG LINE" not in caplog.text


@pytest.mark.parametrize(
    "event",
    [{}, {"rawPath": "/hooks/distribution"}, {"requestContext": {"http": {"method": "POST"}}, "headers": "x"}],
)
def test_events_that_are_not_function_url_requests_are_bad_requests(
    receiver_env: ReceiverEnvironment, event: dict[str, Any]
) -> None:
    assert invoke(event)["statusCode"] == 400


def test_invalid_base64_is_a_bad_request(receiver_env: ReceiverEnvironment) -> None:
    event = load_event("distribution-push.json")
    event["body"] = "not base64!"
    event["isBase64Encoded"] = True

    assert invoke(event)["statusCode"] == 400


def test_other_methods_and_paths(receiver_env: ReceiverEnvironment) -> None:
    get = load_event("distribution-push.json")
    get["requestContext"]["http"]["method"] = "GET"
    unknown = load_event("distribution-push.json")
    unknown["rawPath"] = "/hooks/../../etc/passwd"

    answer = invoke(get)
    assert (answer["statusCode"], answer["headers"].get("allow")) == (405, "POST")
    assert invoke(unknown)["statusCode"] == 404


# --- failures of its own dependencies: 503, so the registry delivers again ---------------------------------------


def test_a_queue_that_refuses_gives_503(receiver_env: ReceiverEnvironment, aws: AwsClients) -> None:
    receiver_env.setenv(receiver.ENV_QUEUE_URL, f"{aws.endpoint_url}/123456789012/no-such-queue")

    assert invoke(load_event("distribution-push.json"))["statusCode"] == 503


def test_an_unreadable_secret_gives_503_without_naming_it(
    receiver_env: ReceiverEnvironment, caplog: pytest.LogCaptureFixture
) -> None:
    receiver_env.setenv(receiver.ENV_TOKEN_SECRET, "arn:aws:secretsmanager:eu-west-1:123456789012:secret:gone-AbCdEf")

    assert invoke(load_event("distribution-push.json"))["statusCode"] == 503
    assert receiver_env.queue.counts()["visible"] == 0
    assert "cannot read a webhook secret" in caplog.text


def test_a_short_webhook_token_is_refused_as_misconfiguration(
    receiver_env: ReceiverEnvironment, aws: AwsClients, caplog: pytest.LogCaptureFixture
) -> None:
    aws.secretsmanager().put_secret_value(SecretId=receiver_env.token_secret_arn, SecretString="short")
    short = load_event("dockerhub-push.json")
    short["rawPath"] = "/hooks/dockerhub/short"

    assert invoke(short)["statusCode"] == 503
    assert receiver_env.queue.counts()["visible"] == 0
    assert "shorter than" in caplog.text


def test_a_misconfigured_receiver_answers_503(receiver_env: ReceiverEnvironment) -> None:
    receiver_env.setenv(receiver.ENV_GRACE, "901")
    assert invoke(load_event("distribution-push.json"))["statusCode"] == 503


# --- cold start ---------------------------------------------------------------------------------------------------


def test_importing_the_receiver_does_not_import_boto3() -> None:
    """boto3 is imported on the first request that needs it, so the import itself stays light."""
    probe = "import sys, receiver; print(sorted(m for m in ('boto3', 'botocore') if m in sys.modules))"
    result = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=ROOT / "src",
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert result.stdout.strip() == "[]"
