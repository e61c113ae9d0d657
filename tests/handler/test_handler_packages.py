"""The scheduled Lambda audits recorded package files beside image tags: DynamoDB trust and state, SNS alerts,
index credentials from the same Secrets Manager map as registries."""

from __future__ import annotations

import base64
import hashlib
import json
from datetime import UTC, datetime

import pytest

import handler  # noqa: F401 - first import at collection, as in test_handler
from audit.config import ENV_CREDENTIALS_SECRET
from audit.models import Digest
from audit.packages import registry_key
from audit.records import TrustedImage
from tests.support.lambda_env import IN_NEW_CONTAINER, NO_METRICS_WARNING, Function, LambdaEnvironment, load_event
from tests.support.local_registry import LocalRegistry
from tests.support.package_index import RecordedIndex, Route

pytestmark = [pytest.mark.integration, NO_METRICS_WARNING, IN_NEW_CONTAINER]

WHEEL = "demo_pkg-1.0-py3-none-any.whl"


def serve_page(index: RecordedIndex, content: bytes, *, yanked: str | None = None) -> str:
    index.routes[f"/files/{WHEEL}"] = Route(200, "application/octet-stream", content)
    entry: dict[str, object] = {
        "filename": WHEEL,
        "url": f"/files/{WHEEL}",
        "hashes": {"sha256": hashlib.sha256(content).hexdigest()},
    }
    if yanked is not None:
        entry["yanked"] = yanked or True  # PEP 592: a reason, or true without one
    page = {"meta": {"api-version": "1.1"}, "name": "demo-pkg", "files": [entry]}
    index.routes["/simple/demo-pkg/"] = Route(200, "application/vnd.pypi.simple.v1+json", json.dumps(page).encode())
    return "sha256:" + hashlib.sha256(content).hexdigest()


def record_wheel(env: LambdaEnvironment, index: RecordedIndex, digest: str) -> None:
    """CI's record of the wheel, as `digest-audit record pypi:...` writes it."""
    env.trust.record(
        TrustedImage(
            registry=registry_key(index.index_url),
            repository="demo-pkg",
            tag=WHEEL,
            digest=Digest.parse(digest),
            source="https://ci.example/pipelines/9",
            recorded_at=datetime.now(UTC),
        )
    )


def test_the_scheduled_run_audits_packages_beside_images_with_index_credentials_from_the_secret(
    function: Function,
    lambda_env_for: LambdaEnvironment,
    registry: LocalRegistry,
    repository: str,
    recorded_index: RecordedIndex,
) -> None:
    env = lambda_env_for
    env.allow_plain_http(recorded_index.host)
    recorded_index.authorization = "Basic " + base64.b64encode(b"reader:s3cret").decode()
    secret = {recorded_index.host: {"username": "reader", "password": "s3cret"}}
    arn = env.aws.secretsmanager().create_secret(Name="digest-audit/index", SecretString=json.dumps(secret))["ARN"]
    env.setenv(ENV_CREDENTIALS_SECRET, arn)
    image = registry.pusher.push_image(repository, "1.0", "oci")
    env.record(registry.reference_of(image), image.digest)
    trusted = serve_page(recorded_index, b"the wheel CI built")
    record_wheel(env, recorded_index, trusted)

    summary = function.invoke(load_event("scheduled.json"))
    assert summary["by_verdict"] == {"match": 2}
    assert env.state_keys() == {
        (f"{registry.host}/{repository}", "1.0"),
        (f"pypi:{recorded_index.index_url}/demo-pkg", WHEEL),
    }

    live = serve_page(recorded_index, b"a wheel uploaded with a stolen token")
    summary = function.invoke(load_event("scheduled.json"))
    assert summary["by_verdict"] == {"match": 1, "drift": 1}
    (envelope,) = env.alerts.envelopes()
    assert envelope["MessageAttributes"]["registry"]["Value"] == f"pypi:{recorded_index.index_url}"
    (finding,) = json.loads(envelope["Message"])["findings"]
    assert (finding["tag"], finding["trusted_digest"], finding["live_digest"]) == (WHEEL, trusted, live)
    # The credentials went to the index and never to a log, an alert or a file URL elsewhere.
    assert "s3cret" not in json.dumps(envelope)


def test_wrong_index_credentials_make_package_files_unverifiable(
    function: Function, lambda_env_for: LambdaEnvironment, recorded_index: RecordedIndex
) -> None:
    env = lambda_env_for
    env.allow_plain_http(recorded_index.host)
    recorded_index.authorization = "Basic " + base64.b64encode(b"reader:right").decode()
    trusted = serve_page(recorded_index, b"wheel")
    record_wheel(env, recorded_index, trusted)
    summary = function.invoke(load_event("scheduled.json"))
    assert summary["by_verdict"] == {"unverifiable": 1}
    assert "HTTP 401 (access denied)" in summary["unverifiable"][0]["reason"]


def test_a_yanked_recorded_file_is_one_info_notice_kept_in_the_state_table_and_resolved_when_lifted(
    function: Function, lambda_env_for: LambdaEnvironment, recorded_index: RecordedIndex
) -> None:
    env = lambda_env_for
    env.allow_plain_http(recorded_index.host)
    trusted = serve_page(recorded_index, b"wheel")
    record_wheel(env, recorded_index, trusted)
    assert function.invoke(load_event("scheduled.json"))["by_verdict"] == {"match": 1}
    [before] = env.state_items()
    assert "yank_notified" not in before  # an item as every earlier version wrote it: read by the next run

    serve_page(recorded_index, b"wheel", yanked="")  # PEP 592 `"yanked": true`: no reason given
    summary = function.invoke(load_event("scheduled.json"))
    assert summary["by_verdict"] == {"match": 1}
    (envelope,) = env.alerts.envelopes()
    attributes = {name: value["Value"] for name, value in envelope["MessageAttributes"].items()}
    assert (attributes["verdict"], attributes["severity"], attributes["notice"]) == ("yanked", "info", "new")
    (finding,) = json.loads(envelope["Message"])["findings"]
    assert (finding["status"], finding["notice"], finding["yanked"], finding["live_digest"]) == (
        "yanked",
        "new",
        "",
        trusted,
    )
    [item] = env.state_items()
    assert (item["last_verdict"], item["yank_notified"]) == ({"S": "match"}, {"S": ""})

    assert function.invoke(load_event("scheduled.json"))["by_verdict"] == {"match": 1}
    assert env.alerts.envelopes() == []  # once, not every run

    serve_page(recorded_index, b"wheel")
    function.invoke(load_event("scheduled.json"))
    (envelope,) = env.alerts.envelopes()
    assert envelope["MessageAttributes"]["verdict"]["Value"] == "resolved"
    (finding,) = json.loads(envelope["Message"])["findings"]
    assert (finding["status"], finding["notice"], finding["yanked"]) == ("yanked", "resolved", None)
    [item] = env.state_items()
    assert "yank_notified" not in item
