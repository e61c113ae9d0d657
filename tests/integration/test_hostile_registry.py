"""A registry that lists hostile tag names, in front of a real `docker-registry`, audited into moto's DynamoDB.

A real registry refuses to store such names, so a loopback front serves the tag list and forwards everything
else to the real registry. The audit must report each name (escaped), never put one in a URL, a command or a
key, save its state after publishing, and stay quiet on the next run.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from audit import bootstrap
from audit.adapters.dynamodb_store import DynamoStateStore
from audit.adapters.file_store import FileTrustStore
from audit.alerts import AlertMessage, render
from audit.app.audit import RunOptions, RunReport
from audit.config import AlertSettings, AuditSettings, RegistrySettings, Settings
from audit.models import Digest, Verdict
from audit.records import Finding, TrustedImage, WatchSettings
from tests.support.aws_fixtures import AwsClients, TableNames
from tests.support.local_registry import LocalRegistry
from tests.support.loopback_server import LoopbackServer, Recorded, Reply
from tests.support.memory_ports import MemoryRunLease

pytestmark = pytest.mark.integration

HOSTILE = [
    "v1\x1b[2J",
    "v2\r\nX-Injected: 1",
    "v3\u0085\u009b31m",  # C1 controls: NEL, CSI
    "x" * 1_100,  # over DynamoDB's 1,024-byte sort key limit
    "y" * 70_000,
    "v4';id;echo'",
    "v5;id",
    "../../../../escape/manifests/x",
]
_HOP_HEADERS = frozenset({"content-length", "transfer-encoding", "connection", "keep-alive"})


class RenderingAlerts:
    """Renders every publish exactly as SNS would get it, and keeps the messages."""

    def __init__(self) -> None:
        self.messages: list[AlertMessage] = []
        self.findings: list[list[Finding]] = []

    def publish(self, run_id: str, findings: Sequence[Finding], *, total_tags: int) -> int:
        messages = render(run_id, findings, total_tags=total_tags)
        self.messages.extend(messages)
        self.findings.append(list(findings))
        return len(messages)


def hostile_front(registry: LocalRegistry, repository: str, names: list[str]) -> LoopbackServer:
    upstream = httpx.Client(base_url=registry.url, verify=registry.verify, trust_env=False)

    def respond(request: Recorded) -> Reply:
        if request.path.startswith(f"/v2/{repository}/tags/list"):
            listed = upstream.get(f"/v2/{repository}/tags/list").json()["tags"]
            body = httpx.Response(200, json={"name": repository, "tags": [*listed, *names]}).content
            return Reply(200, {"Content-Type": "application/json"}, body)
        headers = {k: v for k, v in request.headers.items() if k in ("accept", "authorization")}
        answer = upstream.request(request.method, request.path, headers=headers)
        kept = {k: v for k, v in answer.headers.items() if k.lower() not in _HOP_HEADERS}
        return Reply(answer.status_code, kept, answer.content)

    return LoopbackServer(respond)


async def audit(
    front: LoopbackServer, trust: FileTrustStore, state: DynamoStateStore, alerts: RenderingAlerts
) -> RunReport:
    settings = Settings(
        registry=RegistrySettings(insecure_registries=frozenset({front.host})),
        alerts=AlertSettings(unverifiable_after=3),
        audit=AuditSettings(reverify_delay=0),
    )
    async with bootstrap.build(settings, trust=trust, state=state, alerts=alerts, lease=MemoryRunLease()) as app:
        return await app.auditor(with_packages=False).run(RunOptions())


async def test_hostile_tag_names_are_findings_never_urls_commands_or_raw_keys(
    registry: LocalRegistry, repository: str, aws: AwsClients, tables: TableNames, tmp_path: Path
) -> None:
    released = registry.pusher.push_image(repository, "1.0", "docker")
    registry.pusher.push_image(repository, "2.0", "docker")  # a real tag nobody recorded
    with hostile_front(registry, repository, HOSTILE) as front:
        trust = FileTrustStore(tmp_path / "trust.json")
        trust.record(
            TrustedImage(
                registry=front.host,
                repository=repository,
                tag="1.0",
                digest=Digest.parse(released.digest),
                source="https://ci.example.com/runs/1",
                recorded_at=datetime.now(UTC),
            )
        )
        trust.put_watch_settings(WatchSettings(registry=front.host, repository=repository, track_new_tags=True))
        state = DynamoStateStore(tables.state, aws.dynamodb())
        alerts = RenderingAlerts()

        first = await audit(front, trust, state, alerts)
        second = await audit(front, trust, state, alerts)
        requests = front.requests

    verdicts = {result.ref.tag: result.verdict for result in first.results}
    assert verdicts.pop("1.0") is Verdict.MATCH
    assert verdicts.pop("2.0") is Verdict.UNTRACKED
    assert len(verdicts) == len(HOSTILE)  # one finding per hostile name, each under a bounded key
    assert all(tag is not None and tag.startswith("#invalid-tag-") for tag in verdicts)
    assert set(verdicts.values()) == {Verdict.UNTRACKED}
    assert first.states_saved == len(HOSTILE) + 2  # saved after publishing: the 1,100-char name broke nothing
    assert len(state.load_all()) == len(HOSTILE) + 2
    assert second.findings == []  # each alert once
    assert len(alerts.findings) == 1

    # No request ever left /v2/<repository>/ on the registry.
    assert requests
    assert all(r.path.startswith(f"/v2/{repository}/") for r in requests), [r.path for r in requests]

    email = "\n".join(message.protocol("email") for message in alerts.messages)
    chat = "\n".join(message.protocol("https") for message in alerts.messages)
    for text in (email, chat, *(message.subject for message in alerts.messages)):
        assert "\x1b" not in text and "\r" not in text and "\u0085" not in text and "\u009b" not in text
    assert "v1\\x1b[2J" in email and "v3\\x85\\x9b31m" in email
    assert "y" * 1000 not in email  # bounded
    command_lines = [line.strip() for line in email.splitlines() if line.startswith("    ")]
    assert command_lines, "the real untracked tag 2.0 gets its commands"
    assert not [line for line in command_lines if "id" in line.split() or "escape" in line or "echo" in line]
