"""template.yaml and the code agree where a mismatch only shows after deploying: table keys, the handler path,
the environment the code reads, and the metric names, namespace and dimension the alarms watch."""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

import handler  # noqa: F401 - first import at collection, so Powertools' logger writes to a stable stream
from audit import bootstrap
from audit.config import ALL_VARIABLES, Environment
from tests.support.aws_fixtures import AwsClients, TableNames
from tests.support.cfn_template import ROOT, function_properties, load_template, resources
from tests.support.lambda_env import IN_NEW_CONTAINER, LambdaEnvironment, cold_start, emitted_metrics, load_event

pytestmark = [pytest.mark.integration, IN_NEW_CONTAINER]


TABLES = {"TrustedDigestsTable": "trust", "AuditStateTable": "state"}


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return load_template()


def condition_holds(template: Mapping[str, Any], node: Any) -> bool:
    """A template condition evaluated with default parameters (Equals, Not, And, Or, Condition)."""
    ((function, arguments),) = node.items()
    if function == "Condition":
        return condition_holds(template, template["Conditions"][arguments])
    if function == "Fn::Equals":
        left, right = (resolve(template, argument, {}) for argument in arguments)
        return left == right
    if function == "Fn::Not":
        return not condition_holds(template, arguments[0])
    if function == "Fn::And":
        return all(condition_holds(template, argument) for argument in arguments)
    assert function == "Fn::Or", f"cannot evaluate {function} offline"
    return any(condition_holds(template, argument) for argument in arguments)


def resolve(template: Mapping[str, Any], value: Any, resources_by_id: Mapping[str, str]) -> str:
    """What CloudFormation would put in an environment variable with default parameters (strings only)."""
    if isinstance(value, str | int | float) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, dict) and set(value) == {"Fn::If"}:
        name, when_true, when_false = value["Fn::If"]
        chosen = when_true if condition_holds(template, {"Condition": name}) else when_false
        return resolve(template, chosen, resources_by_id)
    assert isinstance(value, dict) and set(value) == {"Ref"}, f"cannot resolve {value!r} offline"
    name = value["Ref"]
    if name in template["Parameters"]:
        return str(template["Parameters"][name].get("Default", ""))
    assert name in resources_by_id, f"no test stand-in for resource {name}"
    return resources_by_id[name]


def function_environment(template: Mapping[str, Any], tables: TableNames, topic_arn: str) -> dict[str, str]:
    variables: dict[str, Any] = function_properties(dict(template))["Environment"]["Variables"]
    stand_ins = {"TrustedDigestsTable": tables.trust, "AuditStateTable": tables.state, "AlertTopic": topic_arn}
    return {name: resolve(template, value, stand_ins) for name, value in variables.items()}


class RecordingMapping(Mapping[str, str]):
    """An environment that remembers every name looked up, present or not."""

    def __init__(self, values: Mapping[str, str]) -> None:
        self._values = dict(values)
        self.read: set[str] = set()

    def __getitem__(self, name: str) -> str:
        self.read.add(name)
        return self._values[name]

    def get(self, name: str, default: Any = None) -> Any:
        self.read.add(name)
        return self._values.get(name, default)

    def __contains__(self, name: object) -> bool:
        if isinstance(name, str):
            self.read.add(name)
        return name in self._values

    def __iter__(self) -> Iterator[str]:
        raise AssertionError("the code must read named variables, not enumerate the environment")

    def __len__(self) -> int:
        return len(self._values)


# --- tables ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("logical_id", sorted(TABLES))
def test_table_keys_are_the_ones_create_tables_makes(
    template: dict[str, Any], aws: AwsClients, tables: TableNames, logical_id: str
) -> None:
    """`digest-audit init` (create_tables, whose requests the `tables` fixture sends) and the stack agree."""
    declared = resources(template)[logical_id]["Properties"]
    name = getattr(tables, TABLES[logical_id])
    created = aws.dynamodb().describe_table(TableName=name)["Table"]

    assert created.get("KeySchema") == declared["KeySchema"]

    def by_name(definitions: Any) -> list[tuple[str, str]]:
        return sorted((d["AttributeName"], d["AttributeType"]) for d in definitions)

    assert by_name(created.get("AttributeDefinitions", [])) == by_name(declared["AttributeDefinitions"])
    assert created.get("BillingModeSummary", {}).get("BillingMode") == declared["BillingMode"]


# --- the handler path -----------------------------------------------------------------------------------------


def test_handler_setting_resolves_to_the_function_under_test(template: dict[str, Any]) -> None:
    """`CodeUri` is the zip's root; `Handler` is `module.function` inside it, and its package ships with it."""
    properties = function_properties(template)
    code_root = (ROOT / properties["CodeUri"]).resolve()
    module_name, _, function_name = properties["Handler"].rpartition(".")

    module = __import__(module_name)
    entry = getattr(module, function_name)

    assert Path(module.__file__ or "").resolve() == code_root / f"{module_name.replace('.', '/')}.py"
    assert callable(entry)
    assert list(inspect.signature(entry).parameters) == ["event", "context"]
    # The package the handler imports is under CodeUri too, so `sam build` packs it.
    assert Path(bootstrap.__file__).resolve().is_relative_to(code_root)


# --- environment ----------------------------------------------------------------------------------------------


def test_the_app_builds_from_the_template_environment_and_reads_nothing_else(
    template: dict[str, Any], lambda_env: LambdaEnvironment
) -> None:
    environment = function_environment(template, lambda_env.tables, lambda_env.topic_arn)
    recording = RecordingMapping(environment)

    app = bootstrap.lambda_app(Environment(recording))

    assert recording.read <= set(environment), "the code reads a variable the template does not set"
    assert recording.read == set(ALL_VARIABLES), "audit.config.ALL_VARIABLES is not what the code reads"
    # With default parameters the app gets the code's documented defaults and the stack's resources.
    config = app.settings
    assert (config.stores.trust_table, config.stores.state_table) == (lambda_env.tables.trust, lambda_env.tables.state)
    assert config.alerts.topic_arn == lambda_env.topic_arn
    assert config.audit.reverify_delay == 5
    assert config.alerts.reminder_interval == timedelta(hours=24)
    assert config.alerts.unverifiable_after == 3
    assert config.registry.timeout == 10
    assert config.registry.concurrency == 64
    assert config.registry.enable_ecr is False
    assert config.registry.credentials_secret is None
    assert config.registry.insecure_registries == frozenset()


# --- metrics and the alarms that read them --------------------------------------------------------------------


def custom_metric_alarms(template: dict[str, Any]) -> list[dict[str, Any]]:
    alarms = [r["Properties"] for r in resources(template).values() if r["Type"] == "AWS::CloudWatch::Alarm"]
    return [a for a in alarms if not str(a["Namespace"]).startswith("AWS/")]


def test_alarms_watch_what_the_handler_emits(
    template: dict[str, Any],
    lambda_env: LambdaEnvironment,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Run the function with exactly the template's environment and compare its EMF output with every alarm
    on a custom metric: same namespace, a metric of that name, and exactly the alarm's dimensions (CloudWatch
    matches a metric only with its full dimension set)."""
    environment = function_environment(template, lambda_env.tables, lambda_env.topic_arn)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    function = cold_start(monkeypatch)
    capsys.readouterr()

    summary = function.invoke(load_event("scheduled.json"))

    assert summary["checked"] == 0  # nothing recorded: the run still completes and reports in
    emitted = emitted_metrics(capsys.readouterr().out)
    alarms = custom_metric_alarms(template)
    assert any(alarm["MetricName"] == "AuditCompleted" for alarm in alarms), "no heartbeat alarm"
    for alarm in alarms:
        assert resolve(template, alarm["Namespace"], {}) == emitted.namespace
        assert alarm["MetricName"] in emitted.values
        watched = {d["Name"]: resolve(template, d["Value"], {}) for d in alarm.get("Dimensions", [])}
        assert emitted.dimensions == [sorted(watched)]
        assert emitted.dimension_values == watched
    # The heartbeat alarm sums AuditCompleted over its window and wants at least 1: one run must give 1.
    assert emitted.values["AuditCompleted"] == 1


def test_service_name_is_the_same_in_template_alarm_and_handler(
    template: dict[str, Any], lambda_env: LambdaEnvironment, monkeypatch: pytest.MonkeyPatch
) -> None:
    service = function_properties(template)["Environment"]["Variables"]["POWERTOOLS_SERVICE_NAME"]
    (heartbeat,) = [a for a in custom_metric_alarms(template) if a["MetricName"] == "AuditCompleted"]
    assert heartbeat["Dimensions"] == [{"Name": "service", "Value": service}]

    monkeypatch.setenv("POWERTOOLS_SERVICE_NAME", service)
    function = cold_start(monkeypatch)
    assert function.module.metrics.service == service
    assert function.module.logger.service == service
