"""Reads what the alert topic delivered on moto: an SQS subscriber's notifications, and every protocol's text.

An SQS subscription shows exactly what a machine subscriber receives (envelope, attributes, the `sqs` text).
E-mail cannot be subscribed to on moto, so `published_messages` reads moto's own record of each publish
(`/moto-api/data.json`), which keeps the whole MessageStructure=json body with the text of every protocol.
"""

from __future__ import annotations

import json
import urllib.request
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tests.support.aws_fixtures import AwsClients
from tests.support.sqs_drain import drain_bodies

if TYPE_CHECKING:
    from mypy_boto3_sqs import SQSClient


def create_topic(aws: AwsClients, name: str) -> str:
    """Create (or find: CreateTopic is idempotent) a standard topic and return its ARN."""
    return aws.sns().create_topic(Name=name)["TopicArn"]


@dataclass(frozen=True)
class DeliveredAlert:
    """One SNS notification as an SQS subscriber without raw delivery receives it."""

    subject: str
    attributes: dict[str, str]  # message attribute name -> string value
    payload: dict[str, Any]  # the `sqs` text, decoded: the machine JSON
    envelope: dict[str, Any]  # the SNS envelope as delivered (Type, TopicArn, Message, ...)

    @property
    def findings(self) -> list[dict[str, Any]]:
        findings = self.payload["findings"]
        assert isinstance(findings, list)
        return findings


class AlertQueue:
    """An SQS queue subscribed to a topic; `receive()` drains it and decodes each notification."""

    def __init__(self, aws: AwsClients, topic_arn: str, name: str = "alert-inbox") -> None:
        self._aws = aws
        self._sqs: SQSClient = aws.sqs()
        self.url = self._sqs.create_queue(QueueName=name)["QueueUrl"]
        attributes = self._sqs.get_queue_attributes(QueueUrl=self.url, AttributeNames=["QueueArn"])["Attributes"]
        self.arn = attributes["QueueArn"]
        self.subscribe(topic_arn)

    def subscribe(self, topic_arn: str) -> None:
        """(Re-)subscribe the queue, e.g. after the topic was deleted and created again."""
        self._aws.sns().subscribe(TopicArn=topic_arn, Protocol="sqs", Endpoint=self.arn)

    def receive(self) -> list[DeliveredAlert]:
        """Every notification waiting in the queue, in arrival order; the queue is empty afterwards."""
        return [_decode(json.loads(body)) for body in drain_bodies(self._sqs, self.url)]


def _decode(envelope: dict[str, Any]) -> DeliveredAlert:
    attributes = {name: str(value["Value"]) for name, value in envelope.get("MessageAttributes", {}).items()}
    return DeliveredAlert(
        subject=str(envelope["Subject"]),
        attributes=attributes,
        payload=json.loads(envelope["Message"]),
        envelope=envelope,
    )


@dataclass(frozen=True)
class PublishedMessage:
    """One message as it was published to the topic, with the text each protocol gets."""

    message_id: str
    subject: str | None
    texts: dict[str, str]  # protocol (`default`, `email`, `sqs`, ...) -> text

    @property
    def email(self) -> str:
        return self.texts["email"]


def published_messages(endpoint_url: str, topic_arn: str) -> list[PublishedMessage]:
    """Every message moto accepted for the topic since it was created, oldest first."""
    with urllib.request.urlopen(f"{endpoint_url}/moto-api/data.json", timeout=10) as response:
        data = json.load(response)
    topics = [topic for topic in data.get("sns", {}).get("Topic", []) if topic.get("arn") == topic_arn]
    published: list[PublishedMessage] = []
    for topic in topics:
        for message_id, message, subject, *_ in topic.get("sent_notifications", []):
            structure = json.loads(message)
            published.append(
                PublishedMessage(
                    message_id=str(message_id),
                    subject=subject,
                    texts={str(name): str(text) for name, text in structure.items()},
                )
            )
    return published
