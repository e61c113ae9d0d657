"""Nothing the audit asks of a store, the lease or the alert channel (synchronous boto3 in production) runs on
the event loop: while one such call is in progress, other work on the loop goes on.

Each test makes a port call wait for proof that the loop moved on (another check observed, another store call
begun, a ticker task ran). On the loop that proof could never come; the wait gives up after a minute so a
regression fails instead of hanging, and the assertions are about what happened, never about how long it took.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

import pytest

from audit.app.audit import RunOptions
from audit.models import Digest, ImageRef, MovingMode, Observation
from audit.records import TrustedImage, WatchSettings
from tests.support.memory_ports import MemoryRegistry, MemoryTrustStore
from tests.support.service_world import IMAGE, T0, digest
from tests.unit.app.test_build import Ports

PATIENCE = 60.0  # seconds before a wait gives up: only ever reached when the loop was blocked
OTHER = "registry.example.com/org/other"


def test_reading_a_trust_record_again_does_not_stop_the_other_re_checks() -> None:
    """Two drifts are re-verified at once: the consistent read for one waits until the other was re-checked."""
    rechecked_two = threading.Event()
    waited: list[bool] = []

    class Registry(MemoryRegistry):
        async def observe(
            self, ref: ImageRef, *, expected: Digest | None = None, platforms: bool = False
        ) -> Observation:
            if platforms and ref.tag == "2.0":  # the re-check (with platforms) of the second drift
                rechecked_two.set()
            return await super().observe(ref, expected=expected, platforms=platforms)

    class Trust(MemoryTrustStore):
        def get(self, image: str, tag: str, *, consistent: bool = False) -> TrustedImage | None:
            if consistent and tag == "1.0":
                waited.append(rechecked_two.wait(PATIENCE))
            return super().get(image, tag, consistent=consistent)

    ports = Ports()
    ports.trust, ports.registry = Trust(), Registry()
    ports.record("1.0", "a")
    ports.record("2.0", "b")
    ports.registry.served = {(IMAGE, "1.0"): digest("c"), (IMAGE, "2.0"): digest("d")}

    report = asyncio.run(ports.app().auditor().run(RunOptions()))

    assert waited == [True], "the other re-check ran while the trust record was being read"
    assert report.by_verdict == {"drift": 2}


def test_every_digest_ever_trusted_is_read_for_each_repository_at_once() -> None:
    """`any-trusted` tags need every digest of their repository: one read per repository, side by side."""
    started = {IMAGE: threading.Event(), OTHER: threading.Event()}
    waited: dict[str, bool] = {}

    class Trust(MemoryTrustStore):
        def digests_ever_recorded(self, image: str) -> set[Digest]:
            started[image].set()
            other = OTHER if image == IMAGE else IMAGE
            waited[image] = started[other].wait(PATIENCE)
            return super().digests_ever_recorded(image)

    ports = Ports()
    ports.trust = Trust()
    for image in (IMAGE, OTHER):
        registry, repository = image.split("/", 1)
        ports.trust.put_watch_settings(
            WatchSettings(registry=registry, repository=repository, moving={"latest": MovingMode.ANY_TRUSTED})
        )
        for tag, char in (("1.0", "a"), ("latest", "b")):
            ports.trust.record(
                TrustedImage(
                    registry=registry,
                    repository=repository,
                    tag=tag,
                    digest=digest(char),
                    source="https://ci.example.com/runs/1",
                    recorded_at=T0,
                )
            )
            ports.registry.served[(image, tag)] = digest("a")  # latest serves 1.0's digest: trusted, so a match

    report = asyncio.run(ports.app().auditor().run(RunOptions()))

    assert waited == {IMAGE: True, OTHER: True}
    assert report.by_verdict == {"match": 4}


def _blocked_until_the_loop_runs(call: Callable[..., Any]) -> tuple[Callable[..., Any], list[bool], Callable[[], Any]]:
    """`call` wrapped to wait until a ticker task on the loop ran after the call began; and that ticker."""
    began = threading.Event()
    ticked = threading.Event()
    waited: list[bool] = []

    def blocked(*args: Any, **kwargs: Any) -> Any:
        began.set()
        waited.append(ticked.wait(PATIENCE))
        return call(*args, **kwargs)

    async def ticker() -> None:
        await asyncio.to_thread(began.wait, PATIENCE)
        ticked.set()  # only once the loop runs this task again

    return blocked, waited, ticker


@pytest.mark.parametrize(
    ("port", "method"),
    [("lease", "acquire"), ("lease", "renew"), ("alerts", "publish"), ("state", "save"), ("state", "load_all")],
)
def test_lease_alerts_and_state_calls_leave_the_loop_free(
    port: str, method: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    ports = Ports()
    ports.record("1.0", "a")
    ports.registry.served = {(IMAGE, "1.0"): digest("c")}
    target = getattr(ports, port)
    blocked, waited, ticker = _blocked_until_the_loop_runs(getattr(target, method))
    monkeypatch.setattr(target, method, blocked)

    async def audit_beside_a_ticker() -> None:
        tick = asyncio.create_task(ticker())
        report = await ports.app().auditor().run(RunOptions())
        await tick
        assert report.by_verdict == {"drift": 1}

    asyncio.run(audit_beside_a_ticker())

    assert waited and all(waited), f"{port}.{method} ran on the event loop"
