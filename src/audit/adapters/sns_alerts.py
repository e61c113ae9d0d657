"""The alert channels: SNS (fan-out to e-mail, chat and machines) for the Lambda, a stream for local runs."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, TextIO

from botocore.exceptions import BotoCoreError, ClientError

from audit.alerts import MAX_MESSAGE_BYTES, AlertMessage, render
from audit.errors import PublishError
from audit.models import Finding

if TYPE_CHECKING:
    from mypy_boto3_sns import SNSClient
    from mypy_boto3_sns.type_defs import PublishBatchRequestEntryTypeDef

log = logging.getLogger(__name__)

#: PublishBatch takes at most 10 entries.
MAX_BATCH_ENTRIES = 10
_PUBLISH_HINT = (
    "check the topic ARN (ALERT_TOPIC_ARN), that the function may sns:Publish to it, and, for a topic "
    "encrypted with a customer-managed KMS key, that the key policy lets the function use the key"
)


class SnsAlerts:
    """Publishes rendered alerts to one SNS topic with PublishBatch (MessageStructure=json).

    Delivery is all-or-error: any entry SNS reports as failed, or any batch the call itself failed on, makes
    publish() raise PublishError after every batch was tried, so the service saves no state and the next run
    sends the alerts again (subscribers may then see a message twice, never zero times).
    """

    def __init__(self, topic_arn: str, client: SNSClient, *, max_batch_bytes: int = MAX_MESSAGE_BYTES) -> None:
        self._topic_arn = topic_arn
        self._client = client
        self._max_batch_bytes = max_batch_bytes

    def publish(self, run_id: str, findings: Sequence[Finding], *, total_tags: int) -> int:
        messages = render(run_id, findings, total_tags=total_tags)
        published = 0
        problems: set[str] = set()
        for first, batch in _batches(messages, self._max_batch_bytes):
            entries = [_entry(f"alert-{first + i}", message) for i, message in enumerate(batch)]
            try:
                response = self._client.publish_batch(TopicArn=self._topic_arn, PublishBatchRequestEntries=entries)
            except ClientError as exc:
                problems.add(str(exc.response.get("Error", {}).get("Code", "ClientError")))
                continue
            except BotoCoreError as exc:
                problems.add(type(exc).__name__)
                continue
            failed = {entry["Id"] for entry in response.get("Failed", [])}
            problems.update(entry["Code"] for entry in response.get("Failed", []))
            succeeded = {entry["Id"] for entry in response.get("Successful", []) if "Id" in entry} - failed
            published += len(succeeded & {entry["Id"] for entry in entries})
        unpublished = len(messages) - published
        if unpublished:
            raise PublishError(
                f"{unpublished} of {len(messages)} alert message(s) were not published to {self._topic_arn} "
                f"({', '.join(sorted(problems)) or 'no reason given'})",
                hint=_PUBLISH_HINT,
            )
        log.info("published %d alert message(s) for run %s", published, run_id)
        return published


def _entry(entry_id: str, message: AlertMessage) -> PublishBatchRequestEntryTypeDef:
    return {
        "Id": entry_id,
        "Subject": message.subject,
        "Message": message.message_json,
        "MessageStructure": "json",
        "MessageAttributes": {
            name: {"DataType": "String", "StringValue": value} for name, value in message.attributes.items()
        },
    }


def _batches(messages: Sequence[AlertMessage], max_bytes: int) -> Iterator[tuple[int, list[AlertMessage]]]:
    """Runs of at most 10 messages whose sizes add up to at most `max_bytes` (SNS limits the whole call)."""
    batch: list[AlertMessage] = []
    first = 0
    size = 0
    for index, message in enumerate(messages):
        if batch and (len(batch) == MAX_BATCH_ENTRIES or size + message.size_bytes > max_bytes):
            yield first, batch
            batch, first, size = [], index, 0
        batch.append(message)
        size += message.size_bytes
    if batch:
        yield first, batch


class PrintAlerts:
    """For local runs: writes each message to a stream, as plain text or as the machine JSON."""

    def __init__(self, stream: TextIO, *, machine: bool = False) -> None:
        self._stream = stream
        self._machine = machine

    def publish(self, run_id: str, findings: Sequence[Finding], *, total_tags: int) -> int:
        messages = render(run_id, findings, total_tags=total_tags)
        for message in messages:
            if self._machine:
                self._stream.write(message.protocol("sqs") + "\n")
            else:
                self._stream.write(message.protocol("default") + "\n\n")
        self._stream.flush()
        return len(messages)
