"""The moto fixtures: each test starts from a reset moto, and `tables` makes exactly what `create_tables` makes."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

from audit.adapters.dynamodb_store import create_tables
from tests.support.aws_fixtures import STATE_TABLE, TRUST_TABLE, AwsClients, TableNames

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

pytestmark = pytest.mark.integration

#: What differs between two tables made by the same request: their names, ARNs, ids and times.
_PER_TABLE = {"TableName", "TableArn", "TableId", "CreationDateTime", "LastUpdateToPayPerRequestDateTime"}


def _made(client: DynamoDBClient, table: str) -> dict[str, Any]:
    """The description of `table` without what differs between two tables made by the same request."""

    def strip(value: Any) -> Any:
        if isinstance(value, dict):
            return {key: strip(inner) for key, inner in value.items() if key not in _PER_TABLE}
        if isinstance(value, list):
            return [strip(inner) for inner in value]
        return value

    description = strip(dict(client.describe_table(TableName=table)["Table"]))
    assert isinstance(description, dict)
    return description


def test_the_tables_fixture_makes_what_create_tables_makes(aws: AwsClients, tables: TableNames) -> None:
    client = aws.dynamodb()
    create_tables(client, "init-trust", "init-state")
    assert (tables.trust, tables.state) == (TRUST_TABLE, STATE_TABLE)
    assert _made(client, tables.trust) == _made(client, "init-trust")
    assert _made(client, tables.state) == _made(client, "init-state")
    assert _made(client, tables.trust) != _made(client, tables.state)  # the comparison sees the key schema


def test_the_tables_are_empty(aws: AwsClients, tables: TableNames) -> None:
    client = aws.dynamodb()
    for table in (tables.trust, tables.state):
        assert client.scan(TableName=table, Select="COUNT", ConsistentRead=True)["Count"] == 0


def test_a_test_without_tables_starts_from_a_reset_moto(aws: AwsClients) -> None:
    assert aws.dynamodb().list_tables()["TableNames"] == []
    assert aws.sns().list_topics()["Topics"] == []
    assert aws.sqs().list_queues().get("QueueUrls", []) == []
