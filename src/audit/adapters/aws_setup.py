"""The `Provisioning` port on AWS: DynamoDB tables with the SAM template's key schema, and an SNS topic (`init`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from audit.adapters.dynamodb_store import create_tables
from audit.errors import PublishError

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient
    from mypy_boto3_sns import SNSClient


class AwsProvisioning:
    """Creates the two tables and, on request, a topic; the SNS client is only built when a topic is asked for."""

    def __init__(self, dynamodb: DynamoDBClient, sns: Callable[[], SNSClient]) -> None:
        self._dynamodb = dynamodb
        self._sns = sns

    def create_tables(self, trust_table: str, state_table: str) -> None:
        create_tables(self._dynamodb, trust_table, state_table)

    def create_topic(self, name: str) -> str:
        try:
            return self._sns().create_topic(Name=name)["TopicArn"]
        except Exception as exc:  # botocore raises many unrelated types; name the topic and move on
            raise PublishError(f"cannot create topic {name}: {exc}", hint="check credentials and region") from None
