"""The alert channels: SNS (fan-out to e-mail, chat and machines) for the Lambda, a stream for local runs."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, TextIO

from botocore.exceptions import BotoCoreError, ClientError

from audit.alerts import MAX_MESSAGE_BYTES, AlertMessage, render
from audit.errors import PublishError
from audit.records import Finding

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

    Delivery is all-or-error, entry by entry: an entry SNS reports as failed through no fault of ours is
    sent again (only that entry, with the shared back-off) up to `entry_attempts` times; what still failed,
    or a batch whose call failed after botocore's own retries, makes publish() raise PublishError after every
    batch was tried. The error carries the findings of the messages SNS did accept, so the service remembers
    exactly those and the next run sends only the rest.

    A PublishBatch call whose response was lost is retried whole by botocore and may deliver its messages
    twice: the outcome of a lost response cannot be known, and not retrying would only move the repeat to
    the next run. Every finding carries a stable `finding_id` (machine JSON `id`, attribute `finding_ids`)
    for subscribers to drop such repeats.
    """

    def __init__(
        self,
        topic_arn: str,
        client: SNSClient,
        *,
        max_batch_bytes: int = MAX_MESSAGE_BYTES,
        entry_attempts: int = 3,
        backoff: Callable[[int], float] = lambda attempt: 0.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._topic_arn = topic_arn
        self._client = client
        self._max_batch_bytes = max_batch_bytes
        self._entry_attempts = max(1, entry_attempts)
        self._backoff = backoff
        self._sleep = sleep

    def publish(self, run_id: str, findings: Sequence[Finding], *, total_tags: int) -> int:
        messages = render(run_id, findings, total_tags=total_tags)
        accepted: list[AlertMessage] = []
        problems: set[str] = set()
        for first, batch in _batches(messages, self._max_batch_bytes):
            pending = {f"alert-{first + i}": message for i, message in enumerate(batch)}
            for attempt in range(1, self._entry_attempts + 1):
                if attempt > 1:
                    self._sleep(self._backoff(attempt - 1))
                done, retry = self._send(pending, problems)
                accepted.extend(done)
                pending = retry
                if not pending:
                    break
        unpublished = len(messages) - len(accepted)
        if unpublished:
            raise PublishError(
                f"{unpublished} of {len(messages)} alert message(s) were not published to {self._topic_arn} "
                f"({', '.join(sorted(problems)) or 'no reason given'}); the next run sends them again",
                hint=_PUBLISH_HINT,
                delivered=tuple(finding for message in accepted for finding in message.findings),
            )
        log.info("published %d alert message(s) for run %s", len(accepted), run_id)
        return len(accepted)

    def _send(
        self, pending: dict[str, AlertMessage], problems: set[str]
    ) -> tuple[list[AlertMessage], dict[str, AlertMessage]]:
        """One PublishBatch: the accepted messages, and the entries worth sending again (SNS's fault)."""
        entries = [_entry(entry_id, message) for entry_id, message in pending.items()]
        try:
            response = self._client.publish_batch(TopicArn=self._topic_arn, PublishBatchRequestEntries=entries)
        except ClientError as exc:
            problems.add(str(exc.response.get("Error", {}).get("Code", "ClientError")))
            return [], {}  # botocore retried the call already; the next run sends these again
        except BotoCoreError as exc:
            problems.add(type(exc).__name__)
            return [], {}
        failed = {entry["Id"]: entry for entry in response.get("Failed", [])}
        problems.update(entry["Code"] for entry in failed.values())
        succeeded = {entry["Id"] for entry in response.get("Successful", []) if "Id" in entry} - failed.keys()
        accepted = [message for entry_id, message in pending.items() if entry_id in succeeded]
        retry = {
            entry_id: message
            for entry_id, message in pending.items()
            if entry_id in failed and not failed[entry_id].get("SenderFault", False)
        }
        return accepted, retry


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
