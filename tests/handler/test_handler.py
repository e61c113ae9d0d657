"""The Lambda handler with the sample events under events/, against moto and a real registry, as Lambda runs it."""

from __future__ import annotations

import json
import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

import handler  # noqa: F401 - first import at collection, so Powertools' logger writes to a stable stream
from audit import bootstrap
from audit.adapters.dynamodb_store import DynamoRunLease
from audit.config import ENV_CREDENTIALS_SECRET, ENV_TIMEOUT, ENV_TRUST_TABLE, Settings
from audit.errors import ConfigError, CredentialsError, StoreError
from tests.support.lambda_env import (
    EVENTS,
    IN_NEW_CONTAINER,
    NAMESPACE,
    NO_METRICS_WARNING,
    SERVICE,
    FakeContext,
    Function,
    LambdaEnvironment,
    cold_start,
    emf_documents,
    emitted_metrics,
    load_event,
)
from tests.support.local_registry import LocalRegistry
from tests.support.registry_fixtures import RegistryFactory

pytestmark = [pytest.mark.integration, NO_METRICS_WARNING, IN_NEW_CONTAINER]


VERDICT_METRICS = ("VerdictMatch", "VerdictDrift", "VerdictMissing", "VerdictUnverifiable", "VerdictUntracked")


#: Which test module exercises each sample event (a new file under events/ must be added here and used there).
SAMPLE_EVENT_TESTS = {
    "dry-run.json": "test_handler.py",
    "invalid.json": "test_handler.py",
    "scheduled.json": "test_handler.py",
    "subset.json": "test_handler.py",
    "sqs-batch.json": "test_push_events.py",
    "ecr-push.json": "test_push_events.py",
    "ecr-delete.json": "test_push_events.py",
    "distribution-push.json": "test_receiver.py",
    "github-package.json": "test_receiver.py",
    "dockerhub-push.json": "test_receiver.py",
}


def test_every_sample_event_has_a_test() -> None:
    assert sorted(path.name for path in EVENTS.glob("*.json")) == sorted(SAMPLE_EVENT_TESTS)
    for event, module in SAMPLE_EVENT_TESTS.items():
        assert f'"{event}"' in (Path(__file__).parent / module).read_text(encoding="utf-8"), f"{module} skips {event}"


# --- scheduled.json: the full audit ---------------------------------------------------------------------------


def test_scheduled_event_audits_every_recorded_tag_and_alerts_a_tamper(
    function: Function,
    lambda_env_for: LambdaEnvironment,
    registry: LocalRegistry,
    repository: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    env = lambda_env_for
    pushed = [
        registry.pusher.push_image(repository, "1.0", "docker"),
        registry.pusher.push_image(repository, "1.1", "oci"),
        registry.pusher.push_image(repository, "2.0", "oci-index"),
    ]
    for image in pushed:
        env.record(registry.reference_of(image), image.digest)
    capsys.readouterr()

    summary = function.invoke(load_event("scheduled.json"))

    assert summary["checked"] == 3
    assert summary["by_verdict"] == {"match": 3}
    assert (summary["alerts_published"], summary["findings"]) == (0, 0)
    assert (summary["unreached"], summary["unverifiable"], summary["dry_run"]) == ([], [], False)
    assert env.alerts.envelopes() == []
    assert env.state_keys() == {(f"{registry.host}/{repository}", tag) for tag in ("1.0", "1.1", "2.0")}
    metrics = emitted_metrics(capsys.readouterr().out)
    assert metrics.namespace == NAMESPACE
    assert metrics.dimensions == [["service"]]
    assert metrics.dimension_values == {"service": SERVICE}
    assert metrics.values["AuditCompleted"] == 1
    assert metrics.values["TagsChecked"] == 3
    assert {name: metrics.values[name] for name in VERDICT_METRICS} == {
        "VerdictMatch": 3,
        "VerdictDrift": 0,
        "VerdictMissing": 0,
        "VerdictUnverifiable": 0,
        "VerdictUntracked": 0,
    }
    assert (metrics.values["AlertsPublished"], metrics.values["TagsUnreached"]) == (0, 0)
    assert metrics.units["RunDuration"] == "Milliseconds"

    tampered = registry.pusher.tamper(repository, "1.1")
    assert tampered.digest != pushed[1].digest
    summary = function.invoke(load_event("scheduled.json"))

    assert summary["checked"] == 3
    assert summary["by_verdict"] == {"match": 2, "drift": 1}
    assert (summary["alerts_published"], summary["findings"]) == (1, 1)
    (envelope,) = env.alerts.envelopes()
    assert envelope["Subject"].startswith("DRIFT: ")
    assert envelope["MessageAttributes"]["verdict"] == {"Type": "String", "Value": "drift"}
    payload = json.loads(envelope["Message"])
    assert payload["run_id"] == summary["run_id"]
    (finding,) = payload["findings"]
    assert (finding["registry"], finding["repository"], finding["tag"]) == (registry.host, repository, "1.1")
    assert finding["status"] == "drift"
    assert finding["trusted_digest"] == pushed[1].digest
    assert finding["live_digest"] == tampered.digest
    assert finding["notice"] == "new"
    metrics = emitted_metrics(capsys.readouterr().out)
    assert (metrics.values["VerdictDrift"], metrics.values["AlertsPublished"]) == (1, 1)
    assert metrics.values["AuditCompleted"] == 1


# --- subset.json: only the named repositories -----------------------------------------------------------------


def test_subset_event_checks_only_its_repositories(
    function: Function,
    lambda_env_for: LambdaEnvironment,
    registry: LocalRegistry,
    repository: str,
) -> None:
    """subset.json names public repositories this sandbox cannot reach: they must come out unverifiable
    (never match), and a recorded local repository outside the subset must not be checked at all."""
    env = lambda_env_for
    event = load_event("subset.json")
    named: list[str] = event["repositories"]
    assert named and event["dry_run"] is False
    for name in named:
        env.record(f"{name}:1.0", "sha256:" + "ab" * 32)
    outside = registry.pusher.push_image(repository, "1.0")
    env.record(registry.reference_of(outside), outside.digest)
    registry.pusher.tamper(repository, "1.0")  # a drift here would show if the subset filter leaked
    env.setenv(ENV_TIMEOUT, "2")

    summary = function.invoke(event)

    assert summary["checked"] == len(named)
    assert summary["by_verdict"] == {"unverifiable": len(named)}
    assert sorted(item["reference"] for item in summary["unverifiable"]) == sorted(f"{name}:1.0" for name in named)
    assert all(item["reason"] for item in summary["unverifiable"])
    assert env.state_keys() == {(name, "1.0") for name in named}
    # Every tag of each of those registries failed (network, not one tag), which is alerted at once: one
    # unverifiable message per named repository, nothing about the repository outside the subset.
    envelopes = env.alerts.envelopes()
    assert summary["alerts_published"] == len(envelopes) == len(named)
    alerted = {
        (e["MessageAttributes"]["registry"]["Value"], e["MessageAttributes"]["repository"]["Value"]) for e in envelopes
    }
    assert alerted == {(name.partition("/")[0], name.partition("/")[2]) for name in named}
    assert {e["MessageAttributes"]["verdict"]["Value"] for e in envelopes} == {"unverifiable"}


# --- dry-run.json: decide, but publish and save nothing ------------------------------------------------------


def test_dry_run_event_reports_drift_but_publishes_and_saves_nothing(
    function: Function,
    lambda_env_for: LambdaEnvironment,
    registry: LocalRegistry,
    repository: str,
) -> None:
    env = lambda_env_for
    for tag in ("1.0", "2.0"):
        image = registry.pusher.push_image(repository, tag)
        env.record(registry.reference_of(image), image.digest)
    assert function.invoke(load_event("scheduled.json"))["by_verdict"] == {"match": 2}
    state_before = env.state_items()
    assert len(state_before) == 2
    registry.pusher.tamper(repository, "2.0")

    summary = function.invoke(load_event("dry-run.json"))

    assert summary["dry_run"] is True
    assert summary["by_verdict"] == {"match": 1, "drift": 1}
    assert summary["findings"] == 1
    assert summary["alerts_published"] == 0
    assert env.alerts.envelopes() == []
    assert env.state_items() == state_before

    # The dry run left no trace: the next real run still sees the drift as news and alerts it.
    summary = function.invoke(load_event("scheduled.json"))
    assert summary["alerts_published"] == 1
    (envelope,) = env.alerts.envelopes()
    assert json.loads(envelope["Message"])["findings"][0]["tag"] == "2.0"


# --- invalid.json: rejected before anything is checked -------------------------------------------------------


def test_invalid_event_is_rejected_naming_each_bad_field(
    function: Function,
    lambda_env_for: LambdaEnvironment,
    registry: LocalRegistry,
    repository: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    env = lambda_env_for
    image = registry.pusher.push_image(repository, "1.0")
    env.record(registry.reference_of(image), image.digest)
    capsys.readouterr()

    with pytest.raises(ConfigError) as raised:
        function.invoke(load_event("invalid.json"))

    message = raised.value.message
    assert "dry_run" in message and "repos" in message
    assert raised.value.hint
    assert env.state_items() == []
    assert env.alerts.envelopes() == []
    # A rejected event is not a completed audit: the heartbeat alarm must not count it.
    assert not any("AuditCompleted" in document for document in emf_documents(capsys.readouterr().out))


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        ({"dry_run": "true"}, ["dry_run:"]),
        ({"dry_run": 1}, ["dry_run:"]),
        ({"repositories": []}, ["repositories:"]),
        ({"repositories": ["Not/Valid"]}, ["repositories:", "'Not/Valid'"]),
        ({"detail-type": "Scheduled Event"}, ["detail-type:"]),
        ([], ["event:"]),
    ],
)
def test_bad_events_are_refused_with_the_field_named(
    function: Function, lambda_env_for: LambdaEnvironment, event: object, expected: list[str]
) -> None:
    with pytest.raises(ConfigError) as raised:
        function.invoke(event)
    for text in expected:
        assert text in raised.value.message


def test_a_failed_audit_raises_and_emits_no_heartbeat(
    function: Function, lambda_env_for: LambdaEnvironment, capsys: pytest.CaptureFixture[str]
) -> None:
    lambda_env_for.setenv(ENV_TRUST_TABLE, "no-such-table")
    capsys.readouterr()

    with pytest.raises(StoreError, match="no-such-table"):
        function.invoke(load_event("scheduled.json"))

    assert not any("AuditCompleted" in document for document in emf_documents(capsys.readouterr().out))


# --- the remaining-time guard ---------------------------------------------------------------------------------


def test_checks_stop_starting_when_the_remaining_time_runs_low(
    function: Function,
    lambda_env_for: LambdaEnvironment,
    registry: LocalRegistry,
    repository: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    env = lambda_env_for
    tags = [f"1.{n}" for n in range(5)]
    for tag in tags:
        image = registry.pusher.push_image(repository, tag)
        env.record(registry.reference_of(image), image.digest)
    capsys.readouterr()
    context = FakeContext(drop_after=2)

    summary = function.invoke(load_event("scheduled.json"), context)

    assert summary["checked"] == 2
    assert summary["by_verdict"] == {"match": 2}
    assert len(summary["unreached"]) == 3
    reached = {tag for image, tag in env.state_keys()}
    unreached = {reference.rpartition(":")[2] for reference in summary["unreached"]}
    assert len(reached) == 2
    assert reached | unreached == set(tags) and not reached & unreached
    assert all(reference.startswith(f"{registry.host}/{repository}:") for reference in summary["unreached"])
    assert env.alerts.envelopes() == []
    metrics = emitted_metrics(capsys.readouterr().out)
    assert metrics.values["TagsUnreached"] == 3
    assert metrics.values["TagsChecked"] == 2
    assert metrics.values["VerdictMatch"] == 2
    assert metrics.values["AuditCompleted"] == 1


def test_no_check_starts_when_the_invocation_is_already_short_of_time(
    function: Function, lambda_env_for: LambdaEnvironment, registry: LocalRegistry, repository: str
) -> None:
    """Margin: reverify delay (0 here) + 2 x registry timeout (10 s) + 10 s = 30 s."""
    env = lambda_env_for
    image = registry.pusher.push_image(repository, "1.0")
    env.record(registry.reference_of(image), image.digest)

    summary = function.invoke(load_event("scheduled.json"), FakeContext(remaining_ms=29_000))

    assert (summary["checked"], summary["by_verdict"]) == (0, {})
    assert summary["unreached"] == [registry.reference_of(image)]
    assert env.state_items() == []


# --- credentials from Secrets Manager, and the warm container -------------------------------------------------


def _token_registry_with_secret(
    env: LambdaEnvironment, registry_factory: RegistryFactory, *, password: str | None = None
) -> LocalRegistry:
    """A token-auth registry over plain http (the handler has no CA option), its realm listed insecure too,
    and the secret the function reads its credentials from."""
    token_registry = registry_factory(auth="token", tls=False)
    assert token_registry.credentials is not None and token_registry.token_server is not None
    env.allow_plain_http(token_registry.host, token_registry.token_server.host)
    username, real_password = token_registry.credentials
    secret = {token_registry.host: {"username": username, "password": password or real_password}}
    arn = env.aws.secretsmanager().create_secret(
        Name="digest-audit/registry-credentials", SecretString=json.dumps(secret)
    )["ARN"]
    env.setenv(ENV_CREDENTIALS_SECRET, arn)
    return token_registry


def test_credentials_come_from_the_secret_and_a_warm_container_reuses_its_tokens(
    lambda_env: LambdaEnvironment,
    registry_factory: RegistryFactory,
    repository: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    env = lambda_env
    token_registry = _token_registry_with_secret(env, registry_factory)
    assert token_registry.token_server is not None
    for tag in ("1.0", "2.0"):
        image = token_registry.pusher.push_image(repository, tag)
        env.record(token_registry.reference_of(image), image.digest)
    built: list[bootstrap.App] = []
    build = bootstrap.build

    def recorded_build(settings: Settings, **overrides: Any) -> bootstrap.App:
        app = build(settings, **overrides)
        built.append(app)
        return app

    monkeypatch.setattr(bootstrap, "build", recorded_build)
    function = cold_start(monkeypatch)

    first = function.invoke(load_event("scheduled.json"))

    assert first["by_verdict"] == {"match": 2}
    requests = token_registry.token_server.requests
    assert requests, "the registry demands tokens: the function must have fetched some"
    assert {(r.authorization, r.username, r.status) for r in requests} == {("basic", "auditor", 200)}
    tokens_after_first = token_registry.token_server.request_count

    second = function.invoke(load_event("scheduled.json"))

    assert second["by_verdict"] == {"match": 2}
    assert len(built) == 1, "a warm container must reuse its app (clients, token cache, event loop)"
    # Tokens live 300 s: the warm container's client still holds them.
    assert token_registry.token_server.request_count == tokens_after_first


def test_wrong_secret_credentials_make_tags_unverifiable_not_drifted(
    lambda_env: LambdaEnvironment,
    registry_factory: RegistryFactory,
    repository: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    env = lambda_env
    token_registry = _token_registry_with_secret(env, registry_factory, password="not-the-password")
    assert token_registry.token_server is not None
    image = token_registry.pusher.push_image(repository, "1.0")
    env.record(token_registry.reference_of(image), image.digest)
    function = cold_start(monkeypatch)

    summary = function.invoke(load_event("scheduled.json"))

    assert summary["by_verdict"] == {"unverifiable": 1}
    (unverifiable,) = summary["unverifiable"]
    assert "not-the-password" not in json.dumps(summary)
    assert unverifiable["reference"] == token_registry.reference_of(image)
    assert {r.status for r in token_registry.token_server.requests} == {401}


def test_an_unreadable_secret_fails_the_invocation_with_a_credentials_error(
    lambda_env_for: LambdaEnvironment, monkeypatch: pytest.MonkeyPatch
) -> None:
    arn = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:digest-audit/never-created-AbCdEf"
    lambda_env_for.setenv(ENV_CREDENTIALS_SECRET, arn)
    function = cold_start(monkeypatch)

    with pytest.raises(CredentialsError, match="cannot read registry credentials secret") as raised:
        function.invoke(load_event("scheduled.json"))

    assert ENV_CREDENTIALS_SECRET in raised.value.hint


def test_the_function_steps_aside_while_another_run_holds_the_lease(
    function: Function,
    lambda_env_for: LambdaEnvironment,
    registry: LocalRegistry,
    repository: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """An operator's CLI run holds the lease: the scheduled run returns a summary, not an error (no retries,
    no error alarm), sends nothing, and does not count as a completed audit (the heartbeat notices a stuck lease)."""
    env = lambda_env_for
    pushed = registry.pusher.push_image(repository, "1.0", "docker")
    env.record(registry.reference_of(pushed), pushed.digest)
    registry.pusher.tamper(repository, "1.0")
    lease = DynamoRunLease(env.tables.state, env.dynamodb, duration=timedelta(minutes=15))
    assert lease.acquire("operator-run").acquired
    capsys.readouterr()

    summary = function.invoke(load_event("scheduled.json"))

    assert summary["stepped_aside"] is True
    assert "operator-run" in summary["lease_holder"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", summary["lease_expires_at"])  # like every output
    assert (summary["checked"], summary["alerts_published"]) == (0, 0)
    assert env.alerts.envelopes() == []
    metrics = emitted_metrics(capsys.readouterr().out)
    assert metrics.values["RunSteppedAside"] == 1
    assert "AuditCompleted" not in metrics.values

    lease.release("operator-run")
    summary = function.invoke(load_event("scheduled.json"))
    assert summary["stepped_aside"] is False
    assert summary["by_verdict"] == {"drift": 1}
    assert len(env.alerts.envelopes()) == 1
