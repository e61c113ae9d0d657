"""audit.push_events: queue bodies to check requests, and the time-to-detect of the alerts a batch published."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from audit.errors import InvalidEventError
from audit.hooks import MAX_MESSAGE_BYTES, CheckRequest, HookAction, HookSource
from audit.models import Digest, Notice, Verdict
from audit.push_events import parse_queue_message, time_to_detect
from audit.records import Finding

EVENTS = Path(__file__).resolve().parents[2] / "events"
PUSHED = datetime(2026, 11, 28, 10, 0, 0, tzinfo=UTC)


def sample(name: str) -> dict[str, Any]:
    loaded = json.loads((EVENTS / name).read_text(encoding="utf-8"))
    assert isinstance(loaded, dict)
    return loaded


def request(tag: str | None, *, at: datetime | None = PUSHED, repository: str = "team/app") -> CheckRequest:
    return CheckRequest(
        registry="registry.example.com",
        repository=repository,
        tag=tag,
        digest=Digest.parse("sha256:" + "1" * 64) if tag is None else None,
        action=HookAction.PUSH if tag else HookAction.DELETE,
        source=HookSource.DISTRIBUTION,
        event_time=at,
    )


def finding(tag: str, notice: Notice = Notice.NEW, repository: str = "team/app") -> Finding:
    return Finding(
        reference=f"registry.example.com/{repository}:{tag}",
        registry="registry.example.com",
        repository=repository,
        tag=tag,
        trusted_digest=None,
        live_digest=None,
        status=Verdict.DRIFT,
        reason=None,
        checked_at=PUSHED,
        notice=notice,
    )


# --- parse_queue_message -----------------------------------------------------------------------------------------


def test_receiver_messages_round_trip() -> None:
    original = request("1.0")
    assert parse_queue_message(original.to_message()) == original


def test_raw_ecr_events_are_recognised() -> None:
    parsed = parse_queue_message(json.dumps(sample("ecr-delete.json")))
    assert parsed is not None
    assert (parsed.source, parsed.action, parsed.tag) == (HookSource.ECR, HookAction.DELETE, "1.3.0")


def test_an_ecr_push_by_digest_names_nothing() -> None:
    event = sample("ecr-push.json")
    del event["detail"]["image-tag"]
    assert parse_queue_message(json.dumps(event)) is None


@pytest.mark.parametrize(
    "body",
    [
        None,
        "",
        "not json",
        "[1, 2]",
        json.dumps({"detail-type": "EC2 Instance State-change Notification", "source": "aws.ec2", "detail": {}}),
        json.dumps({"v": 99, "registry": "registry.example.com"}),
        "x" * (MAX_MESSAGE_BYTES + 1),
    ],
)
def test_anything_else_is_invalid(body: object) -> None:
    with pytest.raises(InvalidEventError):
        parse_queue_message(body)


def test_an_ecr_event_with_a_name_outside_the_grammar_is_invalid() -> None:
    event = sample("ecr-push.json")
    event["detail"]["repository-name"] = "Team/App\x1b"
    with pytest.raises(InvalidEventError):
        parse_queue_message(json.dumps(event))


# --- time_to_detect -----------------------------------------------------------------------------------------------


def test_seconds_from_the_earliest_push_of_a_tag_to_publishing() -> None:
    published_at = PUSHED + timedelta(seconds=75)
    requests = [request("1.0", at=PUSHED + timedelta(seconds=10)), request("1.0"), request("2.0")]

    assert time_to_detect(requests, [finding("1.0")], published_at=published_at) == [75.0]


def test_only_new_alerts_of_requested_tags_with_a_push_time_count() -> None:
    published_at = PUSHED + timedelta(seconds=5)
    requests = [request("1.0"), request("2.0", at=None), request(None), request("1.0", repository="team/other")]
    findings = [
        finding("1.0", Notice.REMINDER),
        finding("1.0", Notice.RESOLVED),
        finding("2.0"),  # no push time in its event
        finding("3.0"),  # not in this batch
    ]

    assert time_to_detect(requests, findings, published_at=published_at) == []


def test_a_push_time_after_publishing_counts_as_zero() -> None:
    requests = [request("1.0", at=PUSHED + timedelta(seconds=3))]
    assert time_to_detect(requests, [finding("1.0")], published_at=PUSHED) == [0.0]
