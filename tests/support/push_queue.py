"""The push-event queue read the way Lambda's SQS event source reads it: visible messages as one SQS event batch,
then deleted unless the function reported them as batch item failures. Shared by the handler tests and `make demo`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tests.support.sqs_drain import drain_bodies

if TYPE_CHECKING:
    from mypy_boto3_sqs import SQSClient

#: The event source's BatchSize in template.yaml.
BATCH_SIZE = 100


@dataclass(frozen=True)
class PushQueue:
    """The push-event queue on moto, read the way the Lambda SQS event source reads it."""

    sqs: SQSClient
    url: str
    arn: str
    region: str

    def _record(self, message: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "messageId": message["MessageId"],
            "receiptHandle": message["ReceiptHandle"],
            "body": message["Body"],
            "attributes": dict(message.get("Attributes", {})),
            "messageAttributes": {},
            "md5OfBody": message["MD5OfBody"],
            "eventSource": "aws:sqs",
            "eventSourceARN": self.arn,
            "awsRegion": self.region,
        }

    def poll(self, *, expect: int = 1, deadline_seconds: float = 30.0, take_visible: bool = False) -> dict[str, Any]:
        """An SQS event of the messages visible now, long-polling (bounded) until at least `expect` arrived.

        With `take_visible`, every other message visible by then joins the batch too, as the event source's
        batching window gathers them (up to the template's BatchSize). Fewer records than `expect` when the
        deadline passed first; the caller decides what that means.
        """
        records: list[dict[str, Any]] = []
        deadline = time.monotonic() + deadline_seconds
        while len(records) < expect and time.monotonic() < deadline:
            records.extend(self._receive(wait_seconds=1))
        while take_visible and len(records) < BATCH_SIZE:
            more = self._receive(wait_seconds=0)
            if not more:
                break
            records.extend(more)
        return {"Records": records}

    def _receive(self, *, wait_seconds: int) -> list[dict[str, Any]]:
        answer = self.sqs.receive_message(
            QueueUrl=self.url, MaxNumberOfMessages=10, WaitTimeSeconds=wait_seconds, AttributeNames=["All"]
        )
        return [self._record(message) for message in answer.get("Messages", [])]

    def receive_batch(self, *, expect: int = 1, deadline_seconds: float = 30.0) -> dict[str, Any]:
        """`poll`, asserting that at least `expect` messages arrived (for tests)."""
        batch = self.poll(expect=expect, deadline_seconds=deadline_seconds)
        assert len(batch["Records"]) >= expect, f"expected {expect} push event message(s), got {len(batch['Records'])}"
        return batch

    def delete(self, batch: Mapping[str, Any], response: Mapping[str, Any]) -> None:
        """What the event source does after the function returned: delete all but the reported failures."""
        failed = {item["itemIdentifier"] for item in response.get("batchItemFailures", [])}
        for record in batch["Records"]:
            if record["messageId"] not in failed:
                self.sqs.delete_message(QueueUrl=self.url, ReceiptHandle=record["receiptHandle"])

    def counts(self) -> dict[str, int]:
        attributes = self.sqs.get_queue_attributes(
            QueueUrl=self.url, AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesDelayed"]
        )["Attributes"]
        return {
            "visible": int(attributes["ApproximateNumberOfMessages"]),
            "delayed": int(attributes["ApproximateNumberOfMessagesDelayed"]),
        }

    def bodies(self) -> list[str]:
        """Read (and delete) every visible message body."""
        return drain_bodies(self.sqs, self.url)
