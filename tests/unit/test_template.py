"""template.yaml keeps the promises the code and operators rely on: names, keys, alarms, least privilege."""

from __future__ import annotations

import copy
import json
import re
import shlex
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from audit.config import ALL_VARIABLES

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "template.yaml"
SAMCONFIG = ROOT / "samconfig.toml"

SERVICE = "digest-audit"
TRUST = "TrustedDigestsTable"
STATE = "AuditStateTable"

# What the SAM policy templates used (or tempting to use) expand to, from aws-sam-translator's
# policy_templates.json. An unknown template name fails the test: add it here with its real actions first.
POLICY_TEMPLATE_ACTIONS: dict[str, tuple[str, tuple[str, ...]]] = {
    "DynamoDBReadPolicy": (
        "TableName",
        (
            "dynamodb:GetItem",
            "dynamodb:Scan",
            "dynamodb:Query",
            "dynamodb:BatchGetItem",
            "dynamodb:DescribeTable",
        ),
    ),
    "DynamoDBCrudPolicy": (
        "TableName",
        (
            "dynamodb:GetItem",
            "dynamodb:DeleteItem",
            "dynamodb:PutItem",
            "dynamodb:Scan",
            "dynamodb:Query",
            "dynamodb:UpdateItem",
            "dynamodb:BatchWriteItem",
            "dynamodb:BatchGetItem",
            "dynamodb:DescribeTable",
            "dynamodb:ConditionCheckItem",
        ),
    ),
    "DynamoDBWritePolicy": (
        "TableName",
        ("dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:BatchWriteItem"),
    ),
    "SNSPublishMessagePolicy": ("TopicName", ("sns:Publish",)),
    "AWSSecretsManagerGetSecretValuePolicy": ("SecretArn", ("secretsmanager:GetSecretValue",)),
}
# Read actions are the only DynamoDB actions the function may hold on the trust table.
DYNAMODB_READ_ACTIONS = frozenset(
    {"dynamodb:GetItem", "dynamodb:BatchGetItem", "dynamodb:Query", "dynamodb:Scan", "dynamodb:DescribeTable"}
)
STATE_TABLE_ACTIONS = frozenset(
    {
        "dynamodb:GetItem",
        "dynamodb:PutItem",
        "dynamodb:BatchWriteItem",
        "dynamodb:Query",
        "dynamodb:Scan",
        "dynamodb:UpdateItem",
    }
)
RECORDER_ACTIONS = frozenset(
    {
        "dynamodb:GetItem",
        "dynamodb:Query",
        "dynamodb:PutItem",
        "dynamodb:UpdateItem",
        "dynamodb:ConditionCheckItem",
    }
)
VERDICT_METRICS = (
    "VerdictMatch",
    "VerdictDrift",
    "VerdictMissing",
    "VerdictUnverifiable",
    "VerdictUntracked",
)
EXPECTED_ENVIRONMENT = (
    "TRUSTED_DIGESTS_TABLE",
    "AUDIT_STATE_TABLE",
    "ALERT_TOPIC_ARN",
    "REGISTRY_CREDENTIALS_SECRET_ARN",
    "DIGEST_AUDIT_ENABLE_ECR",
    "DIGEST_AUDIT_REVERIFY_DELAY",
    "DIGEST_AUDIT_REMINDER_INTERVAL",
    "DIGEST_AUDIT_UNVERIFIABLE_AFTER",
    "DIGEST_AUDIT_INSECURE_REGISTRIES",
    "DIGEST_AUDIT_CONCURRENCY",
    "DIGEST_AUDIT_TIMEOUT",
    "DIGEST_AUDIT_MAX_TAGS_PER_REPOSITORY",
    "POWERTOOLS_SERVICE_NAME",
    "POWERTOOLS_METRICS_NAMESPACE",
    "LOG_LEVEL",
)


# --- loading CloudFormation YAML ----------------------------------------------------------------------------


class CfnLoader(yaml.SafeLoader):
    """SafeLoader turning short-form intrinsics (!Ref, !GetAtt, !Sub, !If, ...) into their long form."""


def _intrinsic(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> dict[str, Any]:
    value: Any
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        assert isinstance(node, yaml.MappingNode)
        value = loader.construct_mapping(node, deep=True)
    if suffix in ("Ref", "Condition"):
        return {suffix: value}
    if suffix == "GetAtt" and isinstance(value, str):
        return {"Fn::GetAtt": value.split(".", 1)}
    return {f"Fn::{suffix}": value}


CfnLoader.add_multi_constructor("!", _intrinsic)


def load_template(path: Path = TEMPLATE) -> dict[str, Any]:
    loaded = yaml.load(path.read_text(encoding="utf-8"), Loader=CfnLoader)
    assert isinstance(loaded, dict)
    return loaded


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return load_template()


def resources(template: dict[str, Any]) -> dict[str, Any]:
    found = template["Resources"]
    assert isinstance(found, dict)
    return found


def function_properties(template: dict[str, Any]) -> dict[str, Any]:
    function = resources(template)["AuditFunction"]
    assert function["Type"] == "AWS::Serverless::Function"
    properties = function["Properties"]
    assert isinstance(properties, dict)
    return properties


def parameter_default(template: dict[str, Any], name: str) -> Any:
    return template["Parameters"][name]["Default"]


_SUB_NAME = re.compile(r"\$\{([A-Za-z0-9]+)(?:\.[A-Za-z0-9]+)?\}")


def references(node: Any) -> set[str]:
    """Logical ids and parameters a fragment points at through Ref, GetAtt or Sub."""
    found: set[str] = set()
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "Ref" and isinstance(value, str):
                if not value.startswith("AWS::"):  # pseudo parameters
                    found.add(value)
            elif key == "Fn::GetAtt":
                found.add(value[0] if isinstance(value, list) else str(value).split(".", 1)[0])
            elif key == "Fn::Sub":
                text = value if isinstance(value, str) else value[0]
                found.update(name for name in _SUB_NAME.findall(text) if not name.startswith("AWS"))
                if isinstance(value, list):
                    found.update(references(value[1]))
            else:
                found.update(references(value))
    elif isinstance(node, list | tuple):
        for item in node:
            found.update(references(item))
    return found


# --- IAM statements of the function, with SAM policy templates and conditions expanded ----------------------


@dataclass(frozen=True)
class Grant:
    actions: frozenset[str]
    resources: tuple[Any, ...]
    condition: str | None  # the template Condition guarding it, None when unconditional

    def touches(self, logical_id: str) -> bool:
        """Whether the grant can apply to a resource: by reference, or through a wildcard."""
        return any(logical_id in references(resource) or _is_wildcard(resource) for resource in self.resources)


def _is_wildcard(resource: Any) -> bool:
    if isinstance(resource, str):
        return resource == "*" or resource.endswith(":table/*") or resource.endswith(":*")
    if isinstance(resource, dict) and "Fn::Sub" in resource:
        text = resource["Fn::Sub"]
        text = text if isinstance(text, str) else text[0]
        return bool(re.search(r"table/\*$|:\*$", text))
    return False


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _statement_grants(statements: Any, condition: str | None) -> Iterator[Grant]:
    for statement in _as_list(statements):
        if statement.get("Effect", "Allow") != "Allow":
            continue
        assert "NotAction" not in statement and "NotResource" not in statement, "NotAction/NotResource: unsafe"
        yield Grant(
            actions=frozenset(_as_list(statement["Action"])),
            resources=tuple(_as_list(statement["Resource"])),
            condition=condition,
        )


def policy_grants(policies: list[Any], condition: str | None = None) -> Iterator[Grant]:
    """Every Allow of a SAM `Policies` list; fails on what it cannot judge (managed policies, new names)."""
    for policy in policies:
        if isinstance(policy, dict) and "Fn::If" in policy:
            guard, when_true, when_false = policy["Fn::If"]
            yield from policy_grants([when_true], guard)
            if when_false != {"Ref": "AWS::NoValue"}:
                yield from policy_grants([when_false], f"!{guard}")
        elif isinstance(policy, dict) and "Statement" in policy:
            yield from _statement_grants(policy["Statement"], condition)
        elif isinstance(policy, dict) and len(policy) == 1:
            ((name, arguments),) = policy.items()
            assert name in POLICY_TEMPLATE_ACTIONS, f"unknown SAM policy template {name}: add its actions above"
            parameter, actions = POLICY_TEMPLATE_ACTIONS[name]
            yield Grant(frozenset(actions), (arguments[parameter],), condition)
        else:
            pytest.fail(f"cannot judge policy {policy!r}: use a SAM policy template or an inline Statement")


def function_grants(template: dict[str, Any]) -> list[Grant]:
    return list(policy_grants(function_properties(template)["Policies"]))


def trust_table_write_violations(grants: list[Grant]) -> list[Grant]:
    return [
        grant
        for grant in grants
        if grant.touches(TRUST)
        and any(
            action == "*" or (action.startswith("dynamodb:") and action not in DYNAMODB_READ_ACTIONS)
            for action in grant.actions
        )
    ]


# --- the function -------------------------------------------------------------------------------------------


def test_function_runtime_architecture_and_build(template: dict[str, Any]) -> None:
    function = resources(template)["AuditFunction"]
    properties = function["Properties"]
    assert properties["Runtime"] == "python3.13"
    assert properties["Architectures"] == ["arm64"]
    assert properties["Handler"] == "handler.lambda_handler"
    assert properties["ReservedConcurrentExecutions"] == 1
    assert properties["Tracing"] == "Active"
    assert properties["MemorySize"] >= 256
    assert 60 <= properties["Timeout"] <= 900
    assert function["Metadata"]["BuildMethod"] == "makefile"


def test_code_uri_holds_the_handler_and_the_build_target(template: dict[str, Any]) -> None:
    properties = function_properties(template)
    code_dir = ROOT / properties["CodeUri"]
    module, _, function_name = properties["Handler"].partition(".")
    assert f"def {function_name}(" in (code_dir / f"{module}.py").read_text(encoding="utf-8")
    # sam build runs `make build-<LogicalId>` with the Makefile found in CodeUri.
    assert re.search(r"^build-AuditFunction:", (code_dir / "Makefile").read_text(encoding="utf-8"), re.M)


def test_logs_go_to_a_group_with_retention(template: dict[str, Any]) -> None:
    log_group_id = function_properties(template)["LoggingConfig"]["LogGroup"]["Ref"]
    log_group = resources(template)[log_group_id]
    assert log_group["Type"] == "AWS::Logs::LogGroup"
    assert references(log_group["Properties"]["RetentionInDays"]) == {"LogRetentionDays"}
    assert parameter_default(template, "LogRetentionDays") > 0


def test_environment_has_every_variable_the_code_reads(template: dict[str, Any]) -> None:
    variables = function_properties(template)["Environment"]["Variables"]
    assert set(EXPECTED_ENVIRONMENT) <= set(variables)
    assert set(ALL_VARIABLES) <= set(variables), "a variable audit.config reads is not set by the template"
    assert references(variables["TRUSTED_DIGESTS_TABLE"]) == {TRUST}
    assert references(variables["AUDIT_STATE_TABLE"]) == {STATE}
    assert references(variables["ALERT_TOPIC_ARN"]) == {"AlertTopic"}
    assert variables["POWERTOOLS_SERVICE_NAME"] == SERVICE
    assert references(variables["POWERTOOLS_METRICS_NAMESPACE"]) == {"MetricsNamespace"}
    assert parameter_default(template, "MetricsNamespace") == "DigestAudit"


@pytest.mark.parametrize(
    ("variable", "parameter", "default"),
    [
        ("REGISTRY_CREDENTIALS_SECRET_ARN", "RegistryCredentialsSecretArn", ""),
        ("DIGEST_AUDIT_ENABLE_ECR", "EnableEcr", "false"),
        ("DIGEST_AUDIT_REVERIFY_DELAY", "ReverifyDelaySeconds", 5),
        ("DIGEST_AUDIT_REMINDER_INTERVAL", "ReminderIntervalSeconds", 86400),
        ("DIGEST_AUDIT_UNVERIFIABLE_AFTER", "UnverifiableAfter", 3),
        ("DIGEST_AUDIT_INSECURE_REGISTRIES", "InsecureRegistries", ""),
        ("DIGEST_AUDIT_CONCURRENCY", "RegistryConcurrency", 64),
        ("DIGEST_AUDIT_TIMEOUT", "RegistryTimeoutSeconds", 10),
        ("DIGEST_AUDIT_MAX_TAGS_PER_REPOSITORY", "MaxTagsPerRepository", 10000),
    ],
)
def test_tunables_come_from_parameters_with_the_code_defaults(
    template: dict[str, Any], variable: str, parameter: str, default: object
) -> None:
    assert references(function_properties(template)["Environment"]["Variables"][variable]) == {parameter}
    assert parameter_default(template, parameter) == default


# --- tables -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("logical_id", "sort_key"), [(TRUST, "sk"), (STATE, "tag")])
def test_table_key_schema_and_protection(template: dict[str, Any], logical_id: str, sort_key: str) -> None:
    table = resources(template)[logical_id]
    properties = table["Properties"]
    assert table["Type"] == "AWS::DynamoDB::Table"
    assert properties["KeySchema"] == [
        {"AttributeName": "image", "KeyType": "HASH"},
        {"AttributeName": sort_key, "KeyType": "RANGE"},
    ]
    assert sorted(properties["AttributeDefinitions"], key=lambda a: a["AttributeName"]) == sorted(
        [{"AttributeName": "image", "AttributeType": "S"}, {"AttributeName": sort_key, "AttributeType": "S"}],
        key=lambda a: a["AttributeName"],
    )
    assert properties["BillingMode"] == "PAY_PER_REQUEST"
    assert properties["PointInTimeRecoverySpecification"] == {"PointInTimeRecoveryEnabled": True}
    assert properties["SSESpecification"]["SSEEnabled"] is True
    assert table["DeletionPolicy"] == "Retain"
    assert table["UpdateReplacePolicy"] == "Retain"


# --- least privilege ----------------------------------------------------------------------------------------


def test_function_can_only_read_the_trust_table(template: dict[str, Any]) -> None:
    grants = function_grants(template)
    assert trust_table_write_violations(grants) == []
    reads = [grant for grant in grants if grant.touches(TRUST)]
    assert reads, "the function must be able to read the trust table"
    assert {"dynamodb:GetItem", "dynamodb:Query", "dynamodb:Scan"} <= set().union(*(g.actions for g in reads))


@pytest.mark.parametrize(
    "tempting_policy",
    [
        {"DynamoDBCrudPolicy": {"TableName": {"Ref": TRUST}}},
        {"Statement": [{"Effect": "Allow", "Action": "dynamodb:PutItem", "Resource": {"Fn::GetAtt": [TRUST, "Arn"]}}]},
        {"Statement": [{"Effect": "Allow", "Action": ["dynamodb:*"], "Resource": "*"}]},
        {
            "Fn::If": [
                "EcrEnabled",
                {"DynamoDBWritePolicy": {"TableName": {"Ref": TRUST}}},
                {"Ref": "AWS::NoValue"},
            ]
        },
    ],
)
def test_trust_write_check_catches_a_write_grant(template: dict[str, Any], tempting_policy: dict[str, Any]) -> None:
    """The check above is not vacuous: each of these would make the function able to write trusted digests."""
    tampered = copy.deepcopy(template)
    function_properties(tampered)["Policies"].append(tempting_policy)
    assert trust_table_write_violations(function_grants(tampered))


def test_state_table_access_is_minimal(template: dict[str, Any]) -> None:
    state_grants = [grant for grant in function_grants(template) if grant.touches(STATE)]
    granted = {action for grant in state_grants for action in grant.actions if action.startswith("dynamodb:")}
    assert granted <= STATE_TABLE_ACTIONS
    # What the state store does on every run: load everything, then write what changed.
    assert {"dynamodb:Scan", "dynamodb:BatchWriteItem"} <= granted


def test_function_publishes_only_to_the_alert_topic_with_its_key(template: dict[str, Any]) -> None:
    grants = function_grants(template)
    publish = [grant for grant in grants if "sns:Publish" in grant.actions]
    assert publish
    assert all(references(grant.resources) == {"AlertTopic"} for grant in publish)
    key_use = [grant for grant in grants if any(action.startswith("kms:") for action in grant.actions)]
    assert {"kms:GenerateDataKey", "kms:Decrypt"} <= set().union(*(grant.actions for grant in key_use))
    assert all(references(grant.resources) == {"AlertKey"} for grant in key_use)


def test_secret_and_ecr_access_exist_only_under_their_conditions(template: dict[str, Any]) -> None:
    grants = function_grants(template)
    secret = [grant for grant in grants if any(a.startswith("secretsmanager:") for a in grant.actions)]
    ecr = [grant for grant in grants if any(a.startswith("ecr:") for a in grant.actions)]
    assert secret and all(grant.condition == "HasRegistryCredentials" for grant in secret)
    assert all(references(grant.resources) == {"RegistryCredentialsSecretArn"} for grant in secret)
    assert ecr and all(grant.condition == "EcrEnabled" for grant in ecr)
    assert "ecr:GetAuthorizationToken" in set().union(*(grant.actions for grant in ecr))
    conditions = template["Conditions"]
    assert conditions["HasRegistryCredentials"] == {
        "Fn::Not": [{"Fn::Equals": [{"Ref": "RegistryCredentialsSecretArn"}, ""]}]
    }
    assert conditions["EcrEnabled"] == {"Fn::Equals": [{"Ref": "EnableEcr"}, "true"]}


def test_recorder_policy_writes_trust_and_nothing_else(template: dict[str, Any]) -> None:
    policy = resources(template)["RecorderPolicy"]
    assert policy["Type"] == "AWS::IAM::ManagedPolicy"
    grants = list(_statement_grants(policy["Properties"]["PolicyDocument"]["Statement"], None))
    granted = {action for grant in grants for action in grant.actions}
    assert granted == RECORDER_ACTIONS
    for grant in grants:
        assert references(grant.resources) == {TRUST}
        assert not any(_is_wildcard(resource) for resource in grant.resources)
        assert not grant.touches(STATE)


def test_alert_topic_uses_a_rotating_key_cloudwatch_can_use(template: dict[str, Any]) -> None:
    topic = resources(template)["AlertTopic"]["Properties"]
    assert references(topic["KmsMasterKeyId"]) == {"AlertKey"}
    key = resources(template)["AlertKey"]["Properties"]
    assert key["EnableKeyRotation"] is True
    statements = key["KeyPolicy"]["Statement"]
    principals = [json.dumps(statement["Principal"]) for statement in statements]
    assert any(":root" in principal for principal in principals)
    cloudwatch = [s for s in statements if s["Principal"] == {"Service": "cloudwatch.amazonaws.com"}]
    assert cloudwatch
    assert {"kms:Decrypt", "kms:GenerateDataKey*"} <= set(_as_list(cloudwatch[0]["Action"]))


def test_email_subscription_only_when_an_address_is_given(template: dict[str, Any]) -> None:
    subscriptions = [r for r in resources(template).values() if r["Type"] == "AWS::SNS::Subscription"]
    assert len(subscriptions) == 1
    assert subscriptions[0]["Condition"] == "HasAlertEmail"
    assert subscriptions[0]["Properties"]["Protocol"] == "email"
    assert template["Conditions"]["HasAlertEmail"] == {"Fn::Not": [{"Fn::Equals": [{"Ref": "AlertEmail"}, ""]}]}
    assert parameter_default(template, "AlertEmail") == ""


# --- schedule and failure handling --------------------------------------------------------------------------


def test_schedule(template: dict[str, Any]) -> None:
    events = function_properties(template)["Events"]
    schedules = [event["Properties"] for event in events.values() if event["Type"] == "ScheduleV2"]
    assert len(schedules) == 1
    schedule = schedules[0]
    assert references(schedule["ScheduleExpression"]) == {"ScheduleExpression"}
    assert parameter_default(template, "ScheduleExpression") == "rate(1 hour)"
    assert references(schedule["ScheduleExpressionTimezone"]) == {"ScheduleExpressionTimezone"}
    assert schedule["RetryPolicy"]["MaximumRetryAttempts"] >= 1
    assert schedule["FlexibleTimeWindow"]["Mode"] in ("OFF", "FLEXIBLE")
    assert schedule["OmitName"] is True
    dead_letter = schedule["DeadLetterConfig"]
    queue_id = dead_letter.get("QueueLogicalId") or next(iter(references(dead_letter["Arn"])))
    assert resources(template)[queue_id]["Type"] == "AWS::SQS::Queue"
    # Scheduler passes Input verbatim: the sample event is exactly what the schedule sends.
    scheduled = json.loads((ROOT / "events" / "scheduled.json").read_text(encoding="utf-8"))
    assert json.loads(schedule["Input"]) == scheduled


def test_failed_runs_are_not_retried_and_land_in_a_queue(template: dict[str, Any]) -> None:
    config = function_properties(template)["EventInvokeConfig"]
    assert config["MaximumRetryAttempts"] == 0
    on_failure = config["DestinationConfig"]["OnFailure"]
    assert on_failure["Type"] == "SQS"
    assert references(on_failure["Destination"]) == {"FailedInvocationQueue"}
    assert resources(template)["FailedInvocationQueue"]["Type"] == "AWS::SQS::Queue"


# --- alarms -------------------------------------------------------------------------------------------------


def alarms(template: dict[str, Any]) -> list[dict[str, Any]]:
    return [r["Properties"] for r in resources(template).values() if r["Type"] == "AWS::CloudWatch::Alarm"]


def test_every_alarm_notifies_the_alert_topic(template: dict[str, Any]) -> None:
    found = alarms(template)
    assert len(found) >= 4
    for alarm in found:
        assert [references(action) for action in alarm["AlarmActions"]] == [{"AlertTopic"}]


def test_function_errors_alarm(template: dict[str, Any]) -> None:
    (alarm,) = [a for a in alarms(template) if a["Namespace"] == "AWS/Lambda" and a["MetricName"] == "Errors"]
    assert alarm["Dimensions"] == [{"Name": "FunctionName", "Value": {"Ref": "AuditFunction"}}]
    assert (alarm["ComparisonOperator"], alarm["Threshold"]) == ("GreaterThanThreshold", 0)


def test_both_queues_have_a_backlog_alarm(template: dict[str, Any]) -> None:
    watched = {
        next(iter(references(alarm["Dimensions"])))
        for alarm in alarms(template)
        if alarm["Namespace"] == "AWS/SQS"
        and alarm["MetricName"] == "ApproximateNumberOfMessagesVisible"
        and alarm["ComparisonOperator"] == "GreaterThanThreshold"
        and alarm["Threshold"] == 0
    }
    schedule = next(
        e["Properties"] for e in function_properties(template)["Events"].values() if e["Type"] == "ScheduleV2"
    )
    dead_letter = schedule["DeadLetterConfig"]
    schedule_queue = dead_letter.get("QueueLogicalId") or next(iter(references(dead_letter["Arn"])))
    assert watched == {schedule_queue, "FailedInvocationQueue"}


def test_missing_heartbeat_alarm(template: dict[str, Any]) -> None:
    (alarm,) = [a for a in alarms(template) if a["MetricName"] == "AuditCompleted"]
    variables = function_properties(template)["Environment"]["Variables"]
    # Same namespace and the `service` dimension Powertools adds from POWERTOOLS_SERVICE_NAME.
    assert alarm["Namespace"] == variables["POWERTOOLS_METRICS_NAMESPACE"] == {"Ref": "MetricsNamespace"}
    assert alarm["Dimensions"] == [{"Name": "service", "Value": variables["POWERTOOLS_SERVICE_NAME"]}]
    assert alarm["Statistic"] == "Sum"
    assert (alarm["ComparisonOperator"], alarm["Threshold"]) == ("LessThanThreshold", 1)
    assert alarm["TreatMissingData"] == "breaching"
    assert references(alarm["Period"]) == {"HeartbeatPeriodSeconds"}
    # Two hourly schedule periods: one late run alone does not page anyone.
    assert parameter_default(template, "HeartbeatPeriodSeconds") == 7200


def test_custom_metric_names_are_the_documented_ones(template: dict[str, Any]) -> None:
    """The alarms read only metric names from the contract with src/handler.py."""
    contract = {
        "TagsChecked",
        *VERDICT_METRICS,
        "AlertsPublished",
        "AuditCompleted",
        "RunDuration",
        "TagsUnreached",
    }
    custom = {a["MetricName"] for a in alarms(template) if not str(a["Namespace"]).startswith("AWS/")}
    assert custom
    assert custom <= contract


# --- outputs and samconfig ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("output", "logical_id"),
    [
        ("TrustedDigestsTableName", TRUST),
        ("AuditStateTableName", STATE),
        ("AlertTopicArn", "AlertTopic"),
        ("AuditFunctionName", "AuditFunction"),
        ("RecorderPolicyArn", "RecorderPolicy"),
        ("DeadLetterQueueUrl", "ScheduleDeadLetterQueue"),
    ],
)
def test_outputs(template: dict[str, Any], output: str, logical_id: str) -> None:
    assert template["Outputs"][output]["Value"] == {"Ref": logical_id}


def test_every_referenced_name_exists(template: dict[str, Any]) -> None:
    """A typo in a Ref/GetAtt/Sub would otherwise only show at deploy time."""
    known = set(template["Parameters"]) | set(resources(template)) | {"AuditFunctionRole"}
    assert references(template["Resources"]) | references(template["Outputs"]) <= known


def test_samconfig_is_readable_by_sam_and_names_real_parameters(template: dict[str, Any]) -> None:
    text = SAMCONFIG.read_text(encoding="utf-8")
    assert text.splitlines()[0] == "version = 0.1"  # sam refuses the file otherwise
    config = tomllib.loads(text)
    assert config["default"]["validate"]["parameters"]["lint"] is True
    stacks = set()
    for environment in ("default", "prod"):
        stacks.add(config[environment]["global"]["parameters"]["stack_name"])
        deploy = config[environment]["deploy"]["parameters"]
        assert "CAPABILITY_IAM" in deploy["capabilities"]
        assert deploy["resolve_s3"] is True
        assert deploy["confirm_changeset"] is True
        overrides = dict(item.split("=", 1) for item in shlex.split(deploy["parameter_overrides"]))
        assert set(overrides) <= set(template["Parameters"])
        assert overrides["ScheduleExpression"].startswith(("rate(", "cron("))
    assert len(stacks) == 2
