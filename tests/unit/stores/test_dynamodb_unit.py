"""DynamoDB adapter logic without a server: botocore's Stubber answers, so no socket is opened."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import TYPE_CHECKING

import boto3
import pytest
from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError, ReadTimeoutError
from botocore.stub import Stubber

from audit.adapters.dynamodb_store import (
    DynamoStateStore,
    DynamoTrustStore,
    current_sort_key,
    store_error,
    tag_state_to_item,
    trusted_image_to_item,
)
from audit.errors import InvalidReferenceError, StoreError, TrustConflictError
from audit.models import RecordOutcome
from tests.support.store_builders import IMAGE, state, trusted

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

TABLE = "audit-state"


@pytest.fixture
def client() -> DynamoDBClient:
    session = boto3.session.Session(
        aws_access_key_id="testing", aws_secret_access_key="testing", region_name="eu-west-1"
    )
    return session.client("dynamodb", endpoint_url="http://127.0.0.1:9")  # never contacted: stubbed


@pytest.fixture
def stubber(client: DynamoDBClient) -> Iterator[Stubber]:
    with Stubber(client) as stub:
        yield stub
        stub.assert_no_pending_responses()


def put(tag: str) -> dict[str, object]:
    return {"PutRequest": {"Item": tag_state_to_item(state(tag))}}


def client_error(code: str, message: str = "text", operation: str = "GetItem") -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": message}}, operation)


# --- batch writes ------------------------------------------------------------------------------------------


def test_unprocessed_items_are_retried_alone_with_back_off(client: DynamoDBClient, stubber: Stubber) -> None:
    first = [put("1.0"), put("2.0"), put("3.0")]
    stubber.add_response(
        "batch_write_item", {"UnprocessedItems": {TABLE: [put("2.0")]}}, {"RequestItems": {TABLE: first}}
    )
    stubber.add_response("batch_write_item", {"UnprocessedItems": {}}, {"RequestItems": {TABLE: [put("2.0")]}})
    sleeps: list[float] = []
    DynamoStateStore(TABLE, client, sleep=sleeps.append).save([state("1.0"), state("2.0"), state("3.0")])
    assert sleeps == [0.05]


def test_items_still_unprocessed_after_the_last_attempt_raise(client: DynamoDBClient, stubber: Stubber) -> None:
    for _ in range(3):
        stubber.add_response("batch_write_item", {"UnprocessedItems": {TABLE: [put("1.0")]}})
    sleeps: list[float] = []
    store = DynamoStateStore(TABLE, client, max_attempts=3, sleep=sleeps.append)
    with pytest.raises(StoreError, match="1 of 1 state items were still unprocessed after 3 attempts") as caught:
        store.save([state("1.0")])
    assert sleeps == [0.05, 0.1]
    assert "throttled" in caught.value.hint


def test_the_back_off_is_capped(client: DynamoDBClient, stubber: Stubber) -> None:
    for _ in range(12):
        stubber.add_response("batch_write_item", {"UnprocessedItems": {TABLE: [put("1.0")]}})
    sleeps: list[float] = []
    with pytest.raises(StoreError):
        DynamoStateStore(TABLE, client, max_attempts=12, sleep=sleeps.append).save([state("1.0")])
    assert max(sleeps) == 2.0
    assert sleeps == sorted(sleeps)


def test_a_throttled_batch_becomes_a_store_error(client: DynamoDBClient, stubber: Stubber) -> None:
    stubber.add_client_error("batch_write_item", "ProvisionedThroughputExceededException", "slow down")
    with pytest.raises(StoreError, match="BatchWriteItem on table 'audit-state' failed") as caught:
        DynamoStateStore(TABLE, client).save([state()])
    assert "throttled" in caught.value.hint


# --- transactions ------------------------------------------------------------------------------------------


def test_a_transaction_cancelled_for_another_reason_is_a_store_error(client: DynamoDBClient, stubber: Stubber) -> None:
    current = trusted_image_to_item(trusted("1.0", "a"))
    current["revision"] = {"N": "1"}
    stubber.add_response("get_item", {"Item": current})
    stubber.add_client_error(
        "transact_write_items",
        "TransactionCanceledException",
        "cancelled",
        modeled_fields={"CancellationReasons": [{"Code": "None"}, {"Code": "ValidationError"}]},
    )
    with pytest.raises(StoreError, match="TransactWriteItems on table 'trust' failed: TransactionCanceledException"):
        DynamoTrustStore("trust", client).record(trusted("1.0", "b"), moving=True)


def test_a_transaction_cancelled_by_its_condition_is_a_lost_race(client: DynamoDBClient, stubber: Stubber) -> None:
    current = trusted_image_to_item(trusted("1.0", "a"))
    current["revision"] = {"N": "4"}
    stubber.add_response("get_item", {"Item": current})
    stubber.add_client_error(
        "transact_write_items",
        "TransactionCanceledException",
        "cancelled",
        modeled_fields={"CancellationReasons": [{"Code": "None"}, {"Code": "ConditionalCheckFailed"}]},
    )
    other = trusted_image_to_item(trusted("1.0", "c"))
    other["revision"] = {"N": "5"}
    stubber.add_response("get_item", {"Item": other})  # what the other recorder wrote
    with pytest.raises(TrustConflictError, match="changed while recording"):
        DynamoTrustStore("trust", client).record(trusted("1.0", "b"), moving=True)


def test_a_cancelled_retry_that_finds_our_own_write_is_a_success(client: DynamoDBClient, stubber: Stubber) -> None:
    """The first TransactWriteItems succeeded but its response was lost; the retry is judged against our write."""
    current = trusted_image_to_item(trusted("1.0", "a"))
    current["revision"] = {"N": "4"}
    stubber.add_response("get_item", {"Item": current})
    stubber.add_client_error(
        "transact_write_items",
        "TransactionCanceledException",
        "cancelled",
        modeled_fields={
            "CancellationReasons": [{"Code": "ConditionalCheckFailed"}, {"Code": "ConditionalCheckFailed"}]
        },
    )
    ours = trusted_image_to_item(trusted("1.0", "b"))
    ours["revision"] = {"N": "5"}
    stubber.add_response("get_item", {"Item": ours})
    assert DynamoTrustStore("trust", client).record(trusted("1.0", "b"), moving=True) is RecordOutcome.APPENDED


def test_the_transaction_is_conditioned_on_digest_and_revision(client: DynamoDBClient, stubber: Stubber) -> None:
    current = trusted_image_to_item(trusted("1.0", "a"))
    current["revision"] = {"N": "4"}
    stubber.add_response("get_item", {"Item": current})
    stubber.add_response("transact_write_items", {})
    captured: list[dict[str, object]] = []
    client.meta.events.register(
        "provide-client-params.dynamodb.TransactWriteItems", lambda params, **_: captured.append(params)
    )
    DynamoTrustStore("trust", client).record(trusted("1.0", "b"), moving=True)
    # Our own idempotency token: botocore resends it unchanged when it retries a lost response.
    assert re.fullmatch(r"[0-9a-f]{32}", str(captured[0]["ClientRequestToken"]))
    history_put, current_put = (entry["Put"] for entry in captured[0]["TransactItems"])  # type: ignore[attr-defined]
    assert history_put["ConditionExpression"] == "attribute_not_exists(#sk)"
    assert history_put["Item"]["sk"]["S"].startswith("history#1.0#")
    assert current_put["ConditionExpression"] == "#digest = :old_digest AND #revision = :revision"
    assert current_put["ExpressionAttributeValues"][":revision"] == {"N": "4"}
    assert current_put["Item"]["revision"] == {"N": "5"}


# --- error translation -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "message", "hint"),
    [
        (client_error("ResourceNotFoundException"), "the table does not exist", "digest-audit init"),
        (
            client_error("AccessDeniedException", "not authorized"),
            "AccessDeniedException: not authorized",
            "dynamodb:GetItem",
        ),
        (
            # What DynamoDB answers when the caller may not use the table's customer-managed key.
            client_error(
                "AccessDeniedException",
                "KMS key access denied error: com.amazonaws.services.kms.model.AWSKMSException: The ciphertext "
                "refers to a customer master key that does not exist, does not exist in this region, or you are "
                "not allowed to access.",
            ),
            "AccessDeniedException: KMS key access denied",
            "kms:GenerateDataKey* and kms:DescribeKey on it (the stack output EvidenceKeyArn)",
        ),
        (
            client_error("UnrecognizedClientException"),
            "UnrecognizedClientException",
            "credentials were rejected",
        ),
        (client_error("InternalServerError"), "InternalServerError", "AWS_ENDPOINT_URL"),
        (NoCredentialsError(), "no AWS credentials found", "AWS_PROFILE"),
        (EndpointConnectionError(endpoint_url="http://127.0.0.1:1"), "Could not connect", "unreachable"),
        (ReadTimeoutError(endpoint_url="http://127.0.0.1:1"), "Read timeout", "AWS_ENDPOINT_URL"),
    ],
)
def test_botocore_failures_become_store_errors_naming_table_and_operation(
    error: Exception, message: str, hint: str
) -> None:
    translated = store_error(error, table="trust", operation="GetItem", variable="TRUSTED_DIGESTS_TABLE")
    assert translated.message.startswith("DynamoDB GetItem on table 'trust' failed")
    assert message in translated.message
    assert hint in translated.hint
    assert "TRUSTED_DIGESTS_TABLE" in translated.hint
    assert translated.exit_code == 4


def test_throttling_says_to_retry_rather_than_to_check_settings() -> None:
    translated = store_error(
        client_error("ThrottlingException"), table="trust", operation="Scan", variable="TRUSTED_DIGESTS_TABLE"
    )
    assert "ThrottlingException" in translated.message
    assert translated.hint == "the table is throttled; retry later or raise its capacity"


def test_a_stubbed_missing_table_reaches_the_caller_as_store_error(client: DynamoDBClient, stubber: Stubber) -> None:
    stubber.add_client_error("get_item", "ResourceNotFoundException", "Requested resource not found")
    with pytest.raises(StoreError, match="GetItem on table 'trust' failed: the table does not exist"):
        DynamoTrustStore("trust", client).get(IMAGE, "1.0")


# --- keys within DynamoDB's limits by construction -------------------------------------------------------------


@pytest.mark.parametrize("tag", ["x" * 1100, "v1\x1b[2J", "a#b", "../../escape", "$watch"])
def test_trust_keys_refuse_a_tag_outside_the_grammar(tag: str) -> None:
    with pytest.raises(InvalidReferenceError, match="invalid tag"):
        current_sort_key(tag)
    with pytest.raises(InvalidReferenceError, match="invalid tag"):
        trusted_image_to_item(trusted("1.0").model_copy(update={"tag": tag}))


@pytest.mark.parametrize("tag", ["x" * 1100, "y" * 70_000, "v1\x1b[2J", "../../escape", "é" * 600])
def test_state_keys_of_a_tag_outside_the_grammar_are_bounded_hashes(tag: str) -> None:
    item = tag_state_to_item(state(tag))
    key = item["tag"]["S"]
    assert key.startswith("#invalid-tag-") and len(key.encode()) <= 128
    assert tag_state_to_item(state(tag))["tag"] == item["tag"]  # stable
    assert tag_state_to_item(state("1.0"))["tag"] == {"S": "1.0"}
    assert len(item["image"]["S"].encode()) <= 2048
