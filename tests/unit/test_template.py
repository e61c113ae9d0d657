"""template.yaml keeps the promises the code and operators rely on: names, keys, alarms, least privilege."""

from __future__ import annotations

import copy
import fnmatch
import json
import re
import shlex
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

import pytest

from audit.adapters.dynamodb_store import LEASE_KEY
from audit.config import ALL_VARIABLES, RECEIVER_VARIABLES
from tests.support.cfn_template import ROOT, function_properties, load_template, resources

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
# The evidence key (tables and log groups): what DynamoDB needs from every principal that reads or writes a table
# encrypted with a customer-managed key, and the only way such a principal may use the key.
EVIDENCE_KEY = "EvidenceKey"
EVIDENCE_KEY_ACTIONS = frozenset({"kms:Decrypt", "kms:Encrypt", "kms:GenerateDataKey*", "kms:DescribeKey"})
VIA_DYNAMODB = {"StringEquals": {"kms:ViaService": {"Fn::Sub": "dynamodb.${AWS::Region}.amazonaws.com"}}}
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


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return load_template()


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
                local = set(value[1]) if isinstance(value, list) else set()  # the Sub's own variable map
                found.update(n for n in _SUB_NAME.findall(text) if not n.startswith("AWS") and n not in local)
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
    iam_condition: Any = None  # the statement's own IAM `Condition` block

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
            iam_condition=statement.get("Condition"),
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


def _kms_actions(grant: Grant) -> set[str]:
    return {action for action in grant.actions if action.startswith("kms:") or action == "*"}


def _dynamodb_actions(grant: Grant) -> set[str]:
    return {action for action in grant.actions if action.startswith("dynamodb:") or action == "*"}


def principal_grants(template: dict[str, Any]) -> dict[str, list[Grant]]:
    """Every identity policy of the template, by the resource that carries it (function roles, IAM policies)."""
    found: dict[str, list[Grant]] = {}
    for logical_id, resource in resources(template).items():
        properties = resource.get("Properties", {})
        guard = resource.get("Condition")
        if resource["Type"] == "AWS::Serverless::Function":
            assert "Role" not in properties, f"{logical_id}: a role given by ARN cannot be judged here"
            found[logical_id] = list(policy_grants(properties.get("Policies", []), guard))
        elif resource["Type"] in ("AWS::IAM::ManagedPolicy", "AWS::IAM::Policy"):
            found[logical_id] = list(_statement_grants(properties["PolicyDocument"]["Statement"], guard))
        elif resource["Type"] == "AWS::IAM::Role":
            found[logical_id] = [
                grant
                for policy in properties.get("Policies", [])
                for grant in _statement_grants(policy["PolicyDocument"]["Statement"], guard)
            ]
    return found


def evidence_key_violations(template: dict[str, Any]) -> list[str]:
    """Who touches a table must be able to use the evidence key, only through DynamoDB; nobody else may use it."""
    problems: list[str] = []
    for principal, grants in principal_grants(template).items():
        table_grants = [g for g in grants if _dynamodb_actions(g) and (g.touches(TRUST) or g.touches(STATE))]
        key_grants = [g for g in grants if _kms_actions(g) and g.touches(EVIDENCE_KEY)]
        # The tables are always there, so the key grant must be too (not only under a template condition).
        always: set[str] = set().union(*(g.actions for g in key_grants if g.condition is None))
        if table_grants and not always >= EVIDENCE_KEY_ACTIONS:
            problems.append(f"{principal} reads or writes a table but lacks {sorted(EVIDENCE_KEY_ACTIONS - always)}")
        if key_grants and not table_grants:
            problems.append(f"{principal} may use {EVIDENCE_KEY} but touches no table")
        for grant in key_grants:
            if not grant.actions <= EVIDENCE_KEY_ACTIONS:
                problems.append(f"{principal}: {sorted(grant.actions - EVIDENCE_KEY_ACTIONS)} on {EVIDENCE_KEY}")
            if grant.iam_condition != VIA_DYNAMODB:
                problems.append(f"{principal} may use {EVIDENCE_KEY} other than through DynamoDB")
            if any(_is_wildcard(resource) for resource in grant.resources):
                problems.append(f"{principal} is granted KMS actions on every key")
    return problems


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


@pytest.mark.parametrize("logical_id", ["AuditFunction", "ReceiverFunction"])
def test_code_uri_holds_the_handler_and_the_build_target(template: dict[str, Any], logical_id: str) -> None:
    function = resources(template)[logical_id]
    properties = function["Properties"]
    code_dir = ROOT / properties["CodeUri"]
    module, _, function_name = properties["Handler"].partition(".")
    assert f"def {function_name}(" in (code_dir / f"{module}.py").read_text(encoding="utf-8")
    # sam build runs `make build-<LogicalId>` with the Makefile found in CodeUri; the makefile packs the module.
    assert function["Metadata"]["BuildMethod"] == "makefile"
    makefile = (code_dir / "Makefile").read_text(encoding="utf-8")
    assert re.search(rf"^(build-\S+ )*build-{logical_id}( build-\S+)*:", makefile, re.M)
    assert f"{module}.py" in makefile


def test_logs_go_to_a_group_with_retention(template: dict[str, Any]) -> None:
    log_group_id = function_properties(template)["LoggingConfig"]["LogGroup"]["Ref"]
    log_group = resources(template)[log_group_id]
    assert log_group["Type"] == "AWS::Logs::LogGroup"
    assert references(log_group["Properties"]["RetentionInDays"]) == {"LogRetentionDays"}
    assert parameter_default(template, "LogRetentionDays") > 0


def test_the_audit_function_skips_pydantic_plugin_discovery_as_no_dependency_brings_a_plugin(
    template: dict[str, Any],
) -> None:
    """PYDANTIC_DISABLE_PLUGINS saves a scan of every package's entry points at each cold start; it would hide a
    plugin, so this fails the day a dependency brings one (the development environment holds every runtime one)."""
    variables = function_properties(template)["Environment"]["Variables"]
    assert variables["PYDANTIC_DISABLE_PLUGINS"] == "__all__"
    assert list(entry_points(group="pydantic")) == []


def test_environment_has_every_variable_the_code_reads(template: dict[str, Any]) -> None:
    variables = function_properties(template)["Environment"]["Variables"]
    assert set(EXPECTED_ENVIRONMENT) <= set(variables)
    assert set(ALL_VARIABLES) <= set(variables), "a variable audit.config reads is not set by the template"
    assert references(variables["TRUSTED_DIGESTS_TABLE"]) == {TRUST}
    assert references(variables["AUDIT_STATE_TABLE"]) == {STATE}
    assert references(variables["ALERT_TOPIC_ARN"]) == {"AlertTopic"}
    # A run lease that expired during a live run would let a second run publish the same alerts.
    assert int(variables["DIGEST_AUDIT_LEASE_SECONDS"]) > int(function_properties(template)["Timeout"])
    assert variables["POWERTOOLS_SERVICE_NAME"] == SERVICE
    assert references(variables["POWERTOOLS_METRICS_NAMESPACE"]) == {"MetricsNamespace"}
    assert parameter_default(template, "MetricsNamespace") == "DigestAudit"


@pytest.mark.parametrize(
    ("variable", "parameter", "default"),
    [
        ("REGISTRY_CREDENTIALS_SECRET_ARN", "RegistryCredentialsSecretArn", ""),
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


# --- encryption at rest -------------------------------------------------------------------------------------

# What CloudFormation substitutes for the pseudo parameters, for judging ARN patterns offline.
PSEUDO = {"AWS::Partition": "aws", "AWS::Region": "eu-west-1", "AWS::AccountId": "123456789012"}


def _sub(text: str, stack_name: str) -> str:
    return re.sub(r"\$\{([A-Za-z:]+)\}", lambda m: {**PSEUDO, "AWS::StackName": stack_name}[m.group(1)], text)


def checkov_skips(resource: dict[str, Any]) -> set[str]:
    return {skip["id"] for skip in resource.get("Metadata", {}).get("checkov", {}).get("skip", [])}


def key_statements(template: dict[str, Any], logical_id: str) -> list[dict[str, Any]]:
    statements = resources(template)[logical_id]["Properties"]["KeyPolicy"]["Statement"]
    assert isinstance(statements, list)
    return statements


@pytest.mark.parametrize("logical_id", [TRUST, STATE])
def test_tables_are_encrypted_with_the_evidence_key(template: dict[str, Any], logical_id: str) -> None:
    assert resources(template)[logical_id]["Properties"]["SSESpecification"] == {
        "SSEEnabled": True,
        "SSEType": "KMS",
        "KMSMasterKeyId": {"Fn::GetAtt": [EVIDENCE_KEY, "Arn"]},
    }


def test_every_log_group_is_encrypted_with_the_evidence_key(template: dict[str, Any]) -> None:
    log_groups = {i: r for i, r in resources(template).items() if r["Type"] == "AWS::Logs::LogGroup"}
    assert {"AuditLogGroup", "ReceiverLogGroup"} <= set(log_groups)
    for log_group in log_groups.values():
        assert log_group["Properties"]["KmsKeyId"] == {"Fn::GetAtt": [EVIDENCE_KEY, "Arn"]}


def retained_data_with_a_deletable_key(template: dict[str, Any]) -> list[str]:
    """Retained resources whose KMS key would be deleted with the stack (the data would become unreadable)."""
    found = resources(template)
    return [
        f"{logical_id} -> {key}"
        for logical_id, resource in found.items()
        if resource.get("DeletionPolicy") == "Retain"
        for key in references(resource.get("Properties", {}))
        if found.get(key, {}).get("Type") == "AWS::KMS::Key"
        and (found[key].get("DeletionPolicy"), found[key].get("UpdateReplacePolicy")) != ("Retain", "Retain")
    ]


def test_evidence_key_is_rotated_and_outlives_the_stack_like_the_evidence(template: dict[str, Any]) -> None:
    key = resources(template)[EVIDENCE_KEY]
    assert key["Type"] == "AWS::KMS::Key"
    assert key["Properties"]["EnableKeyRotation"] is True
    assert retained_data_with_a_deletable_key(template) == []
    tampered = copy.deepcopy(template)
    resources(tampered)[EVIDENCE_KEY]["DeletionPolicy"] = "Delete"
    assert retained_data_with_a_deletable_key(tampered) == [
        f"{TRUST} -> {EVIDENCE_KEY}",
        f"{STATE} -> {EVIDENCE_KEY}",
        f"AuditLogGroup -> {EVIDENCE_KEY}",
    ]


def test_evidence_key_policy_delegates_to_iam_and_names_only_the_services_that_need_it(
    template: dict[str, Any],
) -> None:
    statements = key_statements(template, EVIDENCE_KEY)
    for statement in statements:
        assert statement["Effect"] == "Allow"
        assert not {"NotPrincipal", "NotAction", "NotResource"} & set(statement)
    accounts = [s["Principal"]["AWS"] for s in statements if "AWS" in s["Principal"]]
    assert accounts == [{"Fn::Sub": "arn:${AWS::Partition}:iam::${AWS::AccountId}:root"}]
    services = {json.dumps(s["Principal"]["Service"]): s for s in statements if "Service" in s["Principal"]}
    logs = json.dumps({"Fn::Sub": "logs.${AWS::Region}.amazonaws.com"})
    assert set(services) == {json.dumps("dynamodb.amazonaws.com"), logs}
    # DynamoDB's own principal only reads the key's metadata; the tables' data keys are used with the callers' rights.
    dynamodb = services[json.dumps("dynamodb.amazonaws.com")]
    assert all(re.fullmatch(r"kms:(Describe|Get|List)\*", action) for action in _as_list(dynamodb["Action"]))
    assert set(_as_list(services[logs]["Action"])) == {
        "kms:Encrypt*",
        "kms:Decrypt*",
        "kms:ReEncrypt*",
        "kms:GenerateDataKey*",
        "kms:Describe*",
    }


def logs_key_arn_patterns(template: dict[str, Any], stack_name: str) -> list[str]:
    """The log-group ARNs the evidence key policy lets CloudWatch Logs encrypt for, in a stack of that name."""
    (statement,) = [s for s in key_statements(template, EVIDENCE_KEY) if "logs." in json.dumps(s["Principal"])]
    patterns = statement["Condition"]["ArnLike"]["kms:EncryptionContext:aws:logs:arn"]
    return [_sub(pattern["Fn::Sub"], stack_name) for pattern in _as_list(patterns)]


def test_logs_may_use_the_evidence_key_for_this_stacks_log_groups_only(template: dict[str, Any]) -> None:
    """The encryption-context condition admits the names CloudFormation generates here, and nothing else."""
    config = tomllib.loads(SAMCONFIG.read_text(encoding="utf-8"))
    stacks = {config[env]["global"]["parameters"]["stack_name"] for env in ("default", "prod")}
    log_groups = [i for i, r in resources(template).items() if r["Type"] == "AWS::Logs::LogGroup"]
    prefix = "arn:aws:logs:eu-west-1:123456789012:log-group:"
    for stack in stacks:
        patterns = logs_key_arn_patterns(template, stack)
        admitted = [f"{prefix}{stack}-{log_group}-1A2B3C4D5E6F" for log_group in log_groups]
        refused = [
            *(f"{prefix}{other}-{log_group}-1A2B3C4D5E6F" for other in stacks - {stack} for log_group in log_groups),
            f"{prefix}/aws/lambda/{stack}-AuditFunction-1A2B3C4D5E6F",
            f"{prefix}{stack}-SomeoneElsesLogGroup-1A2B3C4D5E6F",
            f"arn:aws:logs:eu-west-1:210987654321:log-group:{stack}-AuditLogGroup-1A2B3C4D5E6F",
            f"arn:aws:logs:us-east-1:123456789012:log-group:{stack}-AuditLogGroup-1A2B3C4D5E6F",
        ]
        assert all(any(fnmatch.fnmatchcase(arn, p) for p in patterns) for arn in admitted), (stack, patterns)
        assert not [arn for arn in refused if any(fnmatch.fnmatchcase(arn, p) for p in patterns)]


def test_every_role_touching_a_table_uses_the_evidence_key_only_through_dynamodb(template: dict[str, Any]) -> None:
    assert evidence_key_violations(template) == []
    holders = {p for p, grants in principal_grants(template).items() if any(g.touches(EVIDENCE_KEY) for g in grants)}
    assert holders == {"AuditFunction", "RecorderPolicy"}  # the receiver touches no table, so it has no key


def _statements_of(template: dict[str, Any], logical_id: str) -> list[dict[str, Any]]:
    resource = resources(template)[logical_id]
    if resource["Type"] == "AWS::IAM::ManagedPolicy":
        found = resource["Properties"]["PolicyDocument"]["Statement"]
    else:
        found = [s for p in resource["Properties"]["Policies"] if "Statement" in p for s in p["Statement"]]
    assert isinstance(found, list)
    return found


def _drop_recorder_key(template: dict[str, Any]) -> None:
    document = resources(template)["RecorderPolicy"]["Properties"]["PolicyDocument"]
    document["Statement"] = [s for s in document["Statement"] if "kms:Decrypt" not in s["Action"]]


def _drop_via_service(template: dict[str, Any]) -> None:
    for statement in _statements_of(template, "AuditFunction"):
        if statement.get("Sid") == "UseEvidenceKeyThroughDynamoDB":
            del statement["Condition"]


def _key_for_the_receiver(template: dict[str, Any]) -> None:
    (grant,) = [s for s in _statements_of(template, "RecorderPolicy") if "kms:Decrypt" in s["Action"]]
    receiver_properties(template)["Policies"].append({"Statement": [copy.deepcopy(grant)]})


def _every_key(template: dict[str, Any]) -> None:
    function_properties(template)["Policies"].append(
        {"Statement": [{"Effect": "Allow", "Action": "kms:*", "Resource": "*", "Condition": VIA_DYNAMODB}]}
    )


def _new_reader_without_key(template: dict[str, Any]) -> None:
    scan = {"Effect": "Allow", "Action": "dynamodb:Scan", "Resource": {"Fn::GetAtt": [STATE, "Arn"]}}
    resources(template)["ReportPolicy"] = {
        "Type": "AWS::IAM::ManagedPolicy",
        "Properties": {"PolicyDocument": {"Statement": [scan]}},
    }


def _key_only_under_a_condition(template: dict[str, Any]) -> None:
    policies = function_properties(template)["Policies"]
    for policy in policies:
        for statement in policy.get("Statement", []):
            if statement.get("Sid") == "UseEvidenceKeyThroughDynamoDB":
                policy["Statement"].remove(statement)
                policies.append({"Fn::If": ["EcrEnabled", {"Statement": [statement]}, {"Ref": "AWS::NoValue"}]})
                return


@pytest.mark.parametrize(
    ("tamper", "expected"),
    [
        (_drop_recorder_key, "RecorderPolicy reads or writes a table but lacks"),
        (_drop_via_service, "AuditFunction may use EvidenceKey other than through DynamoDB"),
        (_key_for_the_receiver, "ReceiverFunction may use EvidenceKey but touches no table"),
        (_every_key, "AuditFunction is granted KMS actions on every key"),
        (_new_reader_without_key, "ReportPolicy reads or writes a table but lacks"),
        (_key_only_under_a_condition, "AuditFunction reads or writes a table but lacks"),
    ],
)
def test_evidence_key_check_catches(template: dict[str, Any], tamper: Any, expected: str) -> None:
    """The check above is not vacuous: each change breaks recording, auditing or least privilege."""
    tampered = copy.deepcopy(template)
    tamper(tampered)
    assert any(problem.startswith(expected) for problem in evidence_key_violations(tampered))


# checkov 3.3's checks the template now passes, and the property each one inspects.
FIXED_CHECKS = {"CKV_AWS_119": "AWS::DynamoDB::Table", "CKV_AWS_158": "AWS::Logs::LogGroup"}


def test_no_skip_remains_for_a_fixed_check(template: dict[str, Any]) -> None:
    for logical_id, resource in resources(template).items():
        assert not checkov_skips(resource) & set(FIXED_CHECKS), f"{logical_id} still skips a fixed check"
        properties = resource.get("Properties", {})
        if resource["Type"] == "AWS::DynamoDB::Table":  # what CKV_AWS_119 inspects
            assert properties["SSESpecification"]["SSEEnabled"] is True
            assert properties["SSESpecification"].get("KMSMasterKeyId") is not None
        if resource["Type"] == "AWS::Logs::LogGroup":  # what CKV_AWS_158 inspects
            assert properties.get("KmsKeyId") is not None


def test_every_queue_is_encrypted_and_a_sse_sqs_skip_says_what_is_true(template: dict[str, Any]) -> None:
    queues = {i: r for i, r in resources(template).items() if r["Type"] == "AWS::SQS::Queue"}
    assert len(queues) == 4
    for logical_id, queue in queues.items():
        properties = queue["Properties"]
        assert properties.get("SqsManagedSseEnabled") is True or "KmsMasterKeyId" in properties, logical_id
        if "CKV_AWS_27" in checkov_skips(queue):
            # The skip claims SSE-SQS, which CKV_AWS_27 cannot see; with a KmsMasterKeyId the skip would be stale.
            assert properties["SqsManagedSseEnabled"] is True and "KmsMasterKeyId" not in properties, logical_id


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
    assert granted <= STATE_TABLE_ACTIONS | {"dynamodb:DeleteItem"}
    # What the state store does on every run: load everything, then write what changed.
    assert {"dynamodb:Scan", "dynamodb:BatchWriteItem"} <= granted
    # The run lease: a conditional put, a conditional update (renew) and a delete (release).
    assert {"dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:GetItem"} <= granted


def test_the_only_state_delete_is_of_the_run_lease_item(template: dict[str, Any]) -> None:
    deletes = [
        grant
        for grant in function_grants(template)
        if grant.touches(STATE) and ({"dynamodb:DeleteItem", "dynamodb:*"} & grant.actions)
    ]
    assert deletes, "the run lease must be releasable"
    for grant in deletes:
        assert grant.actions == {"dynamodb:DeleteItem"}
        assert grant.iam_condition == {"ForAllValues:StringEquals": {"dynamodb:LeadingKeys": [LEASE_KEY["image"]]}}


def test_function_publishes_only_to_the_alert_topic_with_its_key(template: dict[str, Any]) -> None:
    grants = function_grants(template)
    publish = [grant for grant in grants if "sns:Publish" in grant.actions]
    assert publish
    assert all(references(grant.resources) == {"AlertTopic"} for grant in publish)
    key_use = [grant for grant in grants if grant.touches("AlertKey") and _kms_actions(grant)]
    assert {"kms:GenerateDataKey", "kms:Decrypt"} <= set().union(*(grant.actions for grant in key_use))
    assert all(references(grant.resources) == {"AlertKey"} for grant in key_use)
    # Confined to the topic by the encryption context SNS uses.
    assert all(
        references(grant.iam_condition["StringEquals"]["kms:EncryptionContext:aws:sns:topicArn"]) == {"AlertTopic"}
        for grant in key_use
    )


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


def test_codeartifact_access_exists_only_for_the_one_domain_given(template: dict[str, Any]) -> None:
    grants = [g for g in function_grants(template) if any(a.startswith("codeartifact:") for a in g.actions)]
    bearer = [g for g in function_grants(template) if "sts:GetServiceBearerToken" in g.actions]
    assert grants and bearer
    assert all(grant.condition == "HasCodeArtifact" for grant in [*grants, *bearer])
    assert set().union(*(g.actions for g in grants)) == {
        "codeartifact:GetAuthorizationToken",
        "codeartifact:ReadFromRepository",
    }
    for grant in grants:
        assert all(references(resource) >= {"CodeArtifactDomain"} for resource in grant.resources)
    statements = [
        statement
        for policy in function_properties(template)["Policies"]
        if isinstance(policy, dict) and "Fn::If" in policy and policy["Fn::If"][0] == "HasCodeArtifact"
        for statement in policy["Fn::If"][1]["Statement"]
    ]
    [sts] = [s for s in statements if s["Action"] == "sts:GetServiceBearerToken"]
    assert sts["Condition"] == {"StringEquals": {"sts:AWSServiceName": "codeartifact.amazonaws.com"}}
    assert template["Conditions"]["HasCodeArtifact"] == {
        "Fn::Not": [{"Fn::Equals": [{"Ref": "CodeArtifactDomain"}, ""]}]
    }
    assert template["Parameters"]["CodeArtifactDomain"]["Default"] == ""


def test_recorder_policy_writes_trust_and_nothing_else(template: dict[str, Any]) -> None:
    policy = resources(template)["RecorderPolicy"]
    assert policy["Type"] == "AWS::IAM::ManagedPolicy"
    grants = list(_statement_grants(policy["Properties"]["PolicyDocument"]["Statement"], None))
    table_grants = [grant for grant in grants if not _kms_actions(grant)]
    assert {action for grant in table_grants for action in grant.actions} == RECORDER_ACTIONS
    for grant in grants:
        assert not any(_is_wildcard(resource) for resource in grant.resources)
        assert not grant.touches(STATE)
    assert all(references(grant.resources) == {TRUST} for grant in table_grants)
    # CI must still be able to record into the encrypted trust table: the key, and only through DynamoDB.
    key_grants = [grant for grant in grants if _kms_actions(grant)]
    assert key_grants
    assert {action for grant in key_grants for action in grant.actions} == EVIDENCE_KEY_ACTIONS
    for grant in key_grants:
        assert references(grant.resources) == {EVIDENCE_KEY}
        assert grant.iam_condition == VIA_DYNAMODB


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


def test_ecr_access_follows_either_ecr_switch(template: dict[str, Any]) -> None:
    """ECR push events need ECR read access, so that one parameter is all ECR needs."""
    variable = function_properties(template)["Environment"]["Variables"]["DIGEST_AUDIT_ENABLE_ECR"]
    assert variable == {"Fn::If": ["EcrEnabled", "true", "false"]}
    assert template["Conditions"]["EcrEnabled"] == {
        "Fn::Or": [{"Fn::Equals": [{"Ref": "EnableEcr"}, "true"]}, {"Condition": "EcrPushEventsEnabled"}]
    }
    assert parameter_default(template, "EnableEcr") == parameter_default(template, "EnableEcrPushEvents") == "false"


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
    assert watched == {schedule_queue, "FailedInvocationQueue", "PushEventDeadLetterQueue"}


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
    # Generated by SAM: the function's role, and the Function URL of FunctionUrlConfig.
    known = set(template["Parameters"]) | set(resources(template)) | {"AuditFunctionRole", "ReceiverFunctionUrl"}
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


# --- push events ----------------------------------------------------------------------------------------------

RECEIVER = "ReceiverFunction"
PUSH_QUEUE = "PushEventQueue"
PUSH_DLQ = "PushEventDeadLetterQueue"
SOURCE_SWITCHES = ("EnableEcrPushEvents", "EnableDistributionWebhook", "EnableGithubWebhook", "EnableDockerHubWebhook")


def receiver_properties(template: dict[str, Any]) -> dict[str, Any]:
    properties = resources(template)[RECEIVER]["Properties"]
    assert isinstance(properties, dict)
    return properties


def test_every_source_is_a_switch_that_is_off_by_default(template: dict[str, Any]) -> None:
    for name in SOURCE_SWITCHES:
        parameter = template["Parameters"][name]
        assert (parameter["Default"], parameter["AllowedValues"]) == ("false", ["true", "false"])
    assert resources(template)[RECEIVER]["Condition"] == "ReceiverEnabled"
    assert resources(template)["EcrPushEventRule"]["Condition"] == "EcrPushEventsEnabled"
    assert resources(template)["PushEventSourceMapping"]["Condition"] == "PushEventsEnabled"


def test_receiver_holds_only_its_secrets_and_send_on_the_one_queue(template: dict[str, Any]) -> None:
    grants = list(policy_grants(receiver_properties(template)["Policies"]))
    actions = {action for grant in grants for action in grant.actions}
    assert actions == {"sqs:SendMessage", "secretsmanager:GetSecretValue"}
    for grant in grants:
        assert not any(_is_wildcard(resource) for resource in grant.resources)
        if "sqs:SendMessage" in grant.actions:
            assert references(grant.resources) == {PUSH_QUEUE}
        else:
            assert references(grant.resources) in ({"WebhookTokenSecret"}, {"GithubWebhookSecret"})
    conditions = {grant.condition for grant in grants if "secretsmanager:GetSecretValue" in grant.actions}
    assert conditions == {"WebhookTokenNeeded", "GithubWebhookEnabled"}


def test_receiver_environment_is_what_it_reads_and_holds_no_secret(template: dict[str, Any]) -> None:
    import receiver  # noqa: PLC0415 - src/receiver.py, the function under test

    variables = receiver_properties(template)["Environment"]["Variables"]
    assert set(variables) == set(receiver.FUNCTION_VARIABLES)
    assert not set(variables) & set(RECEIVER_VARIABLES), "webhook secrets in plain environment variables"
    assert references(variables[receiver.ENV_QUEUE_URL]) == {PUSH_QUEUE}
    assert references(variables[receiver.ENV_GRACE]) == {"PushEventGraceSeconds"}
    # Secret ARNs only; the values stay in Secrets Manager.
    assert references(variables[receiver.ENV_TOKEN_SECRET]) == {"WebhookTokenSecret"}
    assert references(variables[receiver.ENV_GITHUB_SECRET]) == {"GithubWebhookSecret"}
    properties = receiver_properties(template)
    assert properties["Handler"] == "receiver.lambda_handler"
    assert (properties["Runtime"], properties["Architectures"]) == ("python3.13", ["arm64"])
    assert properties["FunctionUrlConfig"]["AuthType"] == "NONE"
    assert properties["ReservedConcurrentExecutions"] >= 1
    for secret in ("WebhookTokenSecret", "GithubWebhookSecret"):
        assert "GenerateSecretString" in resources(template)[secret]["Properties"]


def test_push_queue_delays_by_the_grace_and_dead_letters(template: dict[str, Any]) -> None:
    queue = resources(template)[PUSH_QUEUE]["Properties"]
    assert queue["SqsManagedSseEnabled"] is True
    assert references(queue["DelaySeconds"]) == {"PushEventGraceSeconds"}
    grace = template["Parameters"]["PushEventGraceSeconds"]
    assert (grace["Default"], grace["MinValue"], grace["MaxValue"]) == (60, 0, 900)
    assert queue["VisibilityTimeout"] >= 6 * function_properties(template)["Timeout"]
    assert references(queue["RedrivePolicy"]["deadLetterTargetArn"]) == {PUSH_DLQ}
    assert queue["RedrivePolicy"]["maxReceiveCount"] >= 5
    assert resources(template)[PUSH_DLQ]["Properties"]["SqsManagedSseEnabled"] is True


def test_audit_function_consumes_the_queue_with_partial_batch_responses(template: dict[str, Any]) -> None:
    mapping = resources(template)["PushEventSourceMapping"]["Properties"]
    assert references(mapping["FunctionName"]) == {"AuditFunction"}
    assert references(mapping["EventSourceArn"]) == {PUSH_QUEUE}
    assert mapping["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    assert mapping["ScalingConfig"]["MaximumConcurrency"] == 2  # the smallest SQS allows
    assert function_properties(template)["ReservedConcurrentExecutions"] == 1
    sqs = [grant for grant in function_grants(template) if any(a.startswith("sqs:") for a in grant.actions)]
    assert {action for grant in sqs for action in grant.actions} == {
        "sqs:ReceiveMessage",
        "sqs:DeleteMessage",
        "sqs:ChangeMessageVisibility",
        "sqs:GetQueueAttributes",
    }
    assert all(references(grant.resources) == {PUSH_QUEUE} for grant in sqs)


def test_ecr_rule_sends_push_and_delete_successes_to_the_queue_only(template: dict[str, Any]) -> None:
    rule = resources(template)["EcrPushEventRule"]["Properties"]
    assert rule["EventPattern"] == {
        "source": ["aws.ecr"],
        "detail-type": ["ECR Image Action"],
        "detail": {"action-type": ["PUSH", "DELETE"], "result": ["SUCCESS"]},
    }
    (target,) = rule["Targets"]
    assert references(target["Arn"]) == {PUSH_QUEUE}
    assert "InputTransformer" not in target  # the consumer reads the raw event (events/ecr-push.json)
    (statement,) = resources(template)["EcrPushEventQueuePolicy"]["Properties"]["PolicyDocument"]["Statement"]
    assert statement["Principal"] == {"Service": "events.amazonaws.com"}
    assert references(statement["Condition"]) == {"EcrPushEventRule"}


def test_push_queue_alarms(template: dict[str, Any]) -> None:
    by_metric = {
        (alarm["MetricName"], next(iter(references(alarm["Dimensions"])))): alarm
        for alarm in alarms(template)
        if alarm["Namespace"] == "AWS/SQS"
    }
    age = by_metric[("ApproximateAgeOfOldestMessage", PUSH_QUEUE)]
    assert references(age["Threshold"]) == {"PushEventQueueAgeAlarmSeconds"}
    assert template["Parameters"]["PushEventQueueAgeAlarmSeconds"]["Default"] > 900 - 1  # above the longest grace
    assert (by_metric[("ApproximateNumberOfMessagesVisible", PUSH_DLQ)]["Threshold"]) == 0


def test_dashboard_shows_the_metrics_the_handler_emits(template: dict[str, Any]) -> None:
    body_template, variables = resources(template)["Dashboard"]["Properties"]["DashboardBody"]["Fn::Sub"]
    assert references(variables) == {"MetricsNamespace", PUSH_QUEUE, PUSH_DLQ, "AuditFunction"}
    body = json.loads(re.sub(r"\$\{[A-Za-z:.]+\}", "X", body_template))
    named = {
        metric[1]
        for widget in body["widgets"]
        for metric in widget["properties"]["metrics"]
        if len(metric) > 1 and isinstance(metric[1], str)
    }
    emitted = {"TagsChecked", *VERDICT_METRICS, "AlertsPublished", "RunDuration", "TimeToDetect", "TagsUnreached"}
    assert emitted <= named
    assert {"ApproximateAgeOfOldestMessage", "ApproximateNumberOfMessagesVisible"} <= named


def test_every_resource_passes_checkov_or_says_why_not(template: dict[str, Any]) -> None:
    """A skipped check carries its reason (make checkov runs the scanner itself)."""
    for logical_id, resource in resources(template).items():
        for skip in resource.get("Metadata", {}).get("checkov", {}).get("skip", []):
            assert re.fullmatch(r"CKV2?_AWS_\d+", skip["id"]), logical_id
            assert len(skip.get("comment", "")) > 30, f"{logical_id} skips {skip['id']} without a reason"
