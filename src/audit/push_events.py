"""Queued push events to a targeted audit: what the audit function does with one SQS batch, minus the I/O.

The queue holds two kinds of bodies: `CheckRequest` messages from the webhook receiver, and raw EventBridge
"ECR Image Action" events (the ECR rule sends them unchanged). Both become (image, tag) pairs for
`RunOptions.tags` (through `hooks.tags_to_check`), so a push is judged by the same engine, state and dedup as
the scheduled run.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import datetime

from audit.errors import InvalidEventError
from audit.hooks import MAX_MESSAGE_BYTES, CheckRequest, from_ecr_event
from audit.models import Notice
from audit.records import Finding


def parse_queue_message(body: object) -> CheckRequest | None:
    """One SQS body as a check request; None for an event that names nothing to check (an ECR push by digest).

    Raises InvalidEventError for anything else: such a message cannot become valid by retrying.
    """
    if not isinstance(body, str):
        raise InvalidEventError("push event message has no text body")
    if len(body.encode("utf-8", errors="replace")) > MAX_MESSAGE_BYTES:
        raise InvalidEventError(f"push event message is larger than {MAX_MESSAGE_BYTES} bytes")
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        raise InvalidEventError("push event message is not JSON") from None
    if isinstance(data, dict) and "detail-type" in data:
        if data.get("source") != "aws.ecr" or data.get("detail-type") != "ECR Image Action":
            raise InvalidEventError("push event message is an EventBridge event of another kind")
        return from_ecr_event(data)
    return CheckRequest.from_message(body)


def time_to_detect(
    requests: Sequence[CheckRequest], published: Iterable[Finding], *, published_at: datetime
) -> list[float]:
    """Seconds from each push to the alert that reported its tag: one value per newly alerted tag.

    Only new alerts count (a reminder or a resolved notice is not a detection), and only tags whose event
    carried a time. The earliest event of a tag is the push that started the exposure.
    """
    pushed_at: dict[tuple[str, str], datetime] = {}
    for request in requests:
        if request.tag is None or request.event_time is None:
            continue
        key = (request.image, request.tag)
        if key not in pushed_at or request.event_time < pushed_at[key]:
            pushed_at[key] = request.event_time
    seconds: list[float] = []
    for finding in published:
        if finding.notice is not Notice.NEW or finding.tag is None:
            continue
        start = pushed_at.get((finding.image, finding.tag))
        if start is not None:
            seconds.append(max(0.0, (published_at - start).total_seconds()))
    return seconds
