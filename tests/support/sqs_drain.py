"""Read an SQS queue empty: the receive-and-delete loop that every queue helper of the tests needs once."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mypy_boto3_sqs import SQSClient


def drain_bodies(sqs: SQSClient, url: str) -> list[str]:
    """Receive and delete every visible message, in arrival order; the queue is empty afterwards."""
    bodies: list[str] = []
    while True:
        batch = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=0)
        messages = batch.get("Messages", [])
        if not messages:
            return bodies
        for message in messages:
            bodies.append(message["Body"])
            sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
