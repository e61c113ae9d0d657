"""SnsAlerts over real HTTP to moto: what an SQS subscriber of the alert topic actually receives."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import pytest

from audit.adapters.sns_alerts import SnsAlerts
from audit.alerts import MAX_MESSAGE_BYTES, machine_payload, render
from audit.errors import PublishError
from audit.models import Digest, Notice, Verdict
from audit.records import Finding
from tests.support.aws_fixtures import AwsClients
from tests.support.sqs_drain import drain_bodies

if TYPE_CHECKING:
    from mypy_boto3_sqs import SQSClient

pytestmark = pytest.mark.integration

NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
HUB = "registry-1.docker.io"


def d(n: int) -> Digest:
    return Digest(algorithm="sha256", hex=f"{n:064x}")


def finding(
    tag: str,
    *,
    status: Verdict = Verdict.DRIFT,
    notice: Notice = Notice.NEW,
    repository: str = "openzaak/open-zaak",
) -> Finding:
    return Finding(
        reference=f"{repository}:{tag}",
        registry=HUB,
        repository=repository,
        tag=tag,
        trusted_digest=d(1),
        live_digest=None if status is Verdict.MISSING else d(2),
        status=status,
        reason="test finding",
        checked_at=NOW,
        platforms={"linux/amd64": d(20)},
        trusted_platforms={"linux/amd64": d(10)},
        source="https://ci.example/runs/7",
        commit="abc123",
        recorded_at=NOW - timedelta(days=30),
        first_seen=NOW - timedelta(hours=1),
        notice=notice,
    )


class Subscriber:
    """An SQS queue subscribed to the topic without raw delivery: bodies are SNS envelopes."""

    def __init__(self, aws: AwsClients, topic_arn: str, name: str, filter_policy: dict[str, Any] | None = None):
        self.sqs: SQSClient = aws.sqs()
        self.url = self.sqs.create_queue(QueueName=name)["QueueUrl"]
        arn = self.sqs.get_queue_attributes(QueueUrl=self.url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        attributes = {"FilterPolicy": json.dumps(filter_policy)} if filter_policy else {}
        aws.sns().subscribe(TopicArn=topic_arn, Protocol="sqs", Endpoint=arn, Attributes=attributes)

    def envelopes(self) -> list[dict[str, Any]]:
        return [json.loads(body) for body in drain_bodies(self.sqs, self.url)]


def test_subscriber_receives_the_exact_machine_json_and_attributes(aws: AwsClients, topic_arn: str) -> None:
    queue = Subscriber(aws, topic_arn, "all-alerts")
    findings = [
        finding("1.3.5"),
        finding("1.3.4"),
        finding("1.2.0", status=Verdict.MISSING),
        finding("1.0.0", status=Verdict.MATCH, notice=Notice.RESOLVED),
        finding("2.0", repository="openzaak/other"),
    ]
    expected = render("run-42", findings, total_tags=42)

    assert SnsAlerts(topic_arn, aws.sns()).publish("run-42", findings, total_tags=42) == len(expected) == 4

    envelopes = sorted(queue.envelopes(), key=lambda e: e["Subject"])
    assert len(envelopes) == 4
    by_subject = {m.subject: m for m in expected}
    for envelope in envelopes:
        message = by_subject[envelope["Subject"]]
        assert envelope["Type"] == "Notification" and envelope["TopicArn"] == topic_arn
        assert envelope["Message"] == message.protocol("sqs")
        assert envelope["MessageAttributes"] == {
            name: {"Type": "String", "Value": value} for name, value in message.attributes.items()
        }

    drift = next(e for e in envelopes if e["Subject"] == "DRIFT: 2 tags in openzaak/open-zaak (of 42)")
    assert json.loads(drift["Message"]) == {
        "schema_version": 1,
        "run_id": "run-42",
        "findings": [
            {
                "id": None,
                "reference": f"openzaak/open-zaak:{tag}",
                "registry": HUB,
                "repository": "openzaak/open-zaak",
                "tag": tag,
                "trusted_digest": str(d(1)),
                "live_digest": str(d(2)),
                "status": "drift",
                "reason": "test finding",
                "checked_at": "2025-03-01T12:00:00Z",
                "platforms": {"linux/amd64": str(d(20))},
                "source": "https://ci.example/runs/7",
                "commit": "abc123",
                "recorded_at": "2025-01-30T12:00:00Z",
                "first_seen": "2025-03-01T11:00:00Z",
                "notice": "new",
            }
            for tag in ("1.3.4", "1.3.5")
        ],
    }
    assert drift["MessageAttributes"]["severity"] == {"Type": "String", "Value": "high"}
    resolved = next(e for e in envelopes if e["Subject"].startswith("RESOLVED: "))
    assert resolved["MessageAttributes"]["verdict"]["Value"] == "resolved"
    assert json.loads(resolved["Message"])["findings"][0]["status"] == "match"


def test_a_filter_on_verdict_receives_exactly_those_findings(aws: AwsClients, topic_arn: str) -> None:
    drift_only = Subscriber(aws, topic_arn, "drift-only", {"verdict": ["drift"]})
    resolved_only = Subscriber(aws, topic_arn, "resolved-only", {"verdict": ["resolved"]})
    findings = [
        finding("1"),
        finding("2", status=Verdict.MISSING),
        finding("3", status=Verdict.UNTRACKED),
        finding("4", status=Verdict.UNVERIFIABLE),
        finding("5", status=Verdict.MATCH, notice=Notice.RESOLVED),
        finding("6", repository="org/app"),
    ]
    SnsAlerts(topic_arn, aws.sns()).publish("run-7", findings, total_tags=6)

    drift_tags = {f["tag"] for e in drift_only.envelopes() for f in json.loads(e["Message"])["findings"]}
    assert drift_tags == {"1", "6"}
    resolved = resolved_only.envelopes()
    assert [f["tag"] for e in resolved for f in json.loads(e["Message"])["findings"]] == ["5"]


def test_two_thousand_findings_arrive_in_messages_under_the_limit(aws: AwsClients, topic_arn: str) -> None:
    queue = Subscriber(aws, topic_arn, "bulk")
    findings = [finding(f"1.{n}", repository=f"org/app{n % 4}") for n in range(2000)]
    published = SnsAlerts(topic_arn, aws.sns()).publish("run-bulk", findings, total_tags=2000)

    envelopes = queue.envelopes()
    assert published == len(envelopes) > 10  # several messages per repository, several batches
    assert all(len(e["Message"].encode()) < MAX_MESSAGE_BYTES for e in envelopes)
    received = [f["tag"] for e in envelopes for f in json.loads(e["Message"])["findings"]]
    assert sorted(received) == sorted(f"1.{n}" for n in range(2000))
    assert json.loads(envelopes[0]["Message"]).keys() == machine_payload("x", []).keys()


def test_a_deleted_topic_is_a_publish_error(aws: AwsClients, topic_arn: str) -> None:
    client = aws.sns()
    client.delete_topic(TopicArn=topic_arn)
    with pytest.raises(PublishError) as caught:
        SnsAlerts(topic_arn, client).publish(
            "run-1", [finding("1"), finding("2", status=Verdict.MISSING)], total_tags=2
        )
    assert "2 of 2 alert message(s)" in caught.value.message
    assert topic_arn in caught.value.message
    assert "topic ARN" in caught.value.hint
