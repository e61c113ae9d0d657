"""The listen scheduler without sockets: grace, per-tag coalescing, retries, stopping; and `tags_to_check`."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest

from audit.errors import PublishError
from audit.hooks import CheckRequest, HookAction, HookSecrets, HookSource, tags_to_check
from audit.listener import Listener, PendingChecks
from audit.models import Digest
from audit.records import TrustedImage

IMAGE = "registry.example.com/org/app"


def request(tag: str | None, *, action: HookAction = HookAction.PUSH, digest: str | None = None) -> CheckRequest:
    return CheckRequest(
        registry="registry.example.com",
        repository="org/app",
        tag=tag,
        digest=Digest.parse(digest) if digest else None,
        action=action,
        source=HookSource.DISTRIBUTION,
    )


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_grace_runs_from_the_first_request_and_requests_for_one_tag_coalesce() -> None:
    clock = Clock()
    pending = PendingChecks(60, clock=clock)
    pending.add([request("1.0")])
    clock.now += 30
    pending.add([request("1.0"), request("2.0")])
    assert pending.next_due_in() == 30
    clock.now += 30
    due = pending.take_due()
    assert [[r.tag for r in requests] for requests, _ in due] == [["1.0", "1.0"]]
    assert len(pending) == 1 and pending.next_due_in() == 30
    clock.now += 30
    assert [[r.tag for r in requests] for requests, _ in pending.take_due()] == [["2.0"]]
    assert pending.next_due_in() is None


def trusted(tag: str, char: str) -> TrustedImage:
    return TrustedImage(
        registry="registry.example.com",
        repository="org/app",
        tag=tag,
        digest=Digest.parse("sha256:" + char * 64),
        source="https://ci.example/1",
        recorded_at=datetime(2026, 11, 1, tzinfo=UTC),
    )


def test_tags_to_check_expands_a_delete_by_digest_to_the_tags_that_trusted_it() -> None:
    loads: list[int] = []

    def load() -> list[TrustedImage]:
        loads.append(1)
        return [trusted("1.0", "a"), trusted("1.0-alias", "a"), trusted("2.0", "b")]

    assert tags_to_check([request("3.0")], load) == {(IMAGE, "3.0")}
    assert loads == []  # the trust table is read only for a delete by digest
    by_digest = request(None, action=HookAction.DELETE, digest="sha256:" + "a" * 64)
    assert tags_to_check([by_digest, request("3.0")], load) == {(IMAGE, "1.0"), (IMAGE, "1.0-alias"), (IMAGE, "3.0")}


async def test_worker_runs_due_batches_retries_failures_and_stops_cleanly() -> None:
    batches: list[list[str | None]] = []
    failures = [PublishError("topic unreachable")]
    done = asyncio.Event()

    async def audit(requests: list[CheckRequest]) -> None:
        batches.append([r.tag for r in requests])
        if failures:
            raise failures.pop()
        done.set()

    listener = Listener(HookSecrets(webhook_token="x" * 32), audit, grace=0, retry_delay=0)
    worker = asyncio.create_task(listener.work())
    listener.pending.add([request("1.0")])
    await asyncio.wait_for(done.wait(), timeout=30)
    assert batches == [["1.0"], ["1.0"]]  # failed once (nothing saved), retried

    listener.pending.grace = 3600
    listener.pending.add([request("2.0")])  # waits out its grace: dropped at stop
    listener.stop()
    await asyncio.wait_for(worker, timeout=30)
    assert batches == [["1.0"], ["1.0"]]


async def test_worker_gives_up_after_max_attempts(caplog: pytest.LogCaptureFixture) -> None:
    calls: list[int] = []
    third = asyncio.Event()

    async def audit(requests: list[CheckRequest]) -> None:
        calls.append(1)
        if len(calls) == 3:
            third.set()
        raise PublishError("topic unreachable")

    listener = Listener(HookSecrets(webhook_token="x" * 32), audit, grace=0, retry_delay=0, max_attempts=3)
    worker = asyncio.create_task(listener.work())
    listener.pending.add([request("1.0")])
    await asyncio.wait_for(third.wait(), timeout=30)
    listener.stop()  # the running (third) attempt finishes first
    await asyncio.wait_for(worker, timeout=30)
    assert len(calls) == 3
    assert len(listener.pending) == 0
    assert "giving up" in caplog.text
