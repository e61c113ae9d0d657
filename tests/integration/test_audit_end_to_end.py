"""The audit engine end to end: CI records releases, someone re-pushes a tag, the right people hear about it once.

Everything is real except AWS: the docker-registry process, moto in server mode (DynamoDB, SNS, SQS), and the
CLI called in-process exactly as CI and operators call it. Each test gets its own repository on one registry.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from audit import bootstrap
from audit.adapters.dynamodb_store import DynamoStateStore, DynamoTrustStore
from audit.app.audit import RunReport
from audit.config import AlertSettings, AuditSettings, RegistrySettings, Settings, StoreSettings
from audit.models import Digest, MediaType, Verdict
from tests.support.aws_fixtures import AwsClients, MotoServer, TableNames
from tests.support.cli_fixtures import TOPIC_NAME
from tests.support.cli_runner import CliResult, CliRunner
from tests.support.local_registry import LocalRegistry
from tests.support.pusher import PushedImage
from tests.support.sns_capture import (
    AlertQueue,
    DeliveredAlert,
    PublishedMessage,
    create_topic,
    published_messages,
)

pytestmark = pytest.mark.integration

COMMIT = "0123456789abcdef0123456789abcdef01234567"
RESOLVED_REASON = "drift resolved: the registry serves a trusted digest"


def source_of(tag: str) -> str:
    return f"https://ci.example/org/app/runs/{tag}"


def short(digest: str) -> str:
    return Digest.parse(digest).short


def record(cli: CliRunner, registry: LocalRegistry, image: PushedImage, *extra: str) -> CliResult:
    assert image.tag is not None
    return cli(
        "record",
        registry.reference(image.repository, image.tag, image.digest),
        "--source",
        source_of(image.tag),
        "--commit",
        COMMIT,
        *extra,
    )


def recorded(cli: CliRunner, registry: LocalRegistry, image: PushedImage) -> None:
    """CI records a release; it must be new."""
    assert image.tag is not None
    result = record(cli, registry, image)
    reference = registry.reference(image.repository, image.tag, image.digest)
    assert result == CliResult(0, f"created: {reference}\n", "")


def audit(cli: CliRunner, *extra: str) -> CliResult:
    result = cli("run", *extra)
    assert result.out == ""  # alerts go to SNS, only the summary goes to stderr
    assert "Traceback" not in result.err
    return result


def only(messages: list[DeliveredAlert]) -> DeliveredAlert:
    assert len(messages) == 1, [m.subject for m in messages]
    return messages[0]


def iso_moment(text: object) -> datetime:
    assert isinstance(text, str) and text.endswith("Z"), text
    return datetime.fromisoformat(text)


def scan_state(aws: AwsClients, tables: TableNames) -> list[dict[str, Any]]:
    items = aws.dynamodb().scan(TableName=tables.state, ConsistentRead=True)["Items"]
    return sorted((dict(item) for item in items), key=lambda item: json.dumps(item, sort_keys=True))


# --------------------------------------------------------------------------------------------------- the breach


def test_a_re_pushed_release_alerts_once_then_reminds_then_resolves(
    cli: CliRunner,
    registry: LocalRegistry,
    repo: str,
    inbox: AlertQueue,
    aws: AwsClients,
    tables: TableNames,
) -> None:
    pusher = registry.pusher
    seed = f"release-{repo}-1.0"
    releases = [
        pusher.push_image(repo, "1.0", "docker", seed=seed),
        pusher.push_image(repo, "1.1", "oci"),
        pusher.push_image(repo, "2.0", "oci-index", ["linux/amd64", "linux/arm64/v8"]),
    ]
    for image in releases:
        recorded(cli, registry, image)
    first = releases[0]
    pinned = registry.reference(repo, "1.0", first.digest)

    assert record(cli, registry, first) == CliResult(0, f"unchanged: {pinned}\n", "")

    other = pusher.push_image(repo, None, "docker")
    trusted = DynamoTrustStore(tables.trust, aws.dynamodb()).get(f"{registry.host}/{repo}", "1.0")
    assert trusted is not None
    conflict = cli("record", registry.reference(repo, "1.0", other.digest), "--source", source_of("again"))
    assert conflict == CliResult(
        1,
        "",
        f"digest-audit: error: {registry.reference(repo, '1.0')} is already trusted as {first.digest} "
        f"(recorded {trusted.recorded_at:%Y-%m-%d} from {source_of('1.0')}); refusing to trust {other.digest}\n"
        "  hint: if the new digest is a legitimate re-release, re-run with --replace --reason TEXT; "
        "the previous record is kept as history\n",
    )

    clean = audit(cli)
    assert clean.code == 0
    assert re.fullmatch(
        rf"run {clean.run_id}: checked 3 tag\(s\): 3 match; 0 finding\(s\) published in 0 message\(s\); \d+ ms\n",
        clean.err,
    )
    assert inbox.receive() == []

    # A stolen push token: same tag, other content.
    tampered = pusher.tamper(repo, "1.0")
    assert tampered.digest != first.digest
    before = datetime.now(UTC)
    breach = audit(cli)
    after = datetime.now(UTC)
    assert breach.code == 1
    alert = only(inbox.receive())
    assert alert.subject == f"DRIFT: {registry.host}/{repo}:1.0 (1 of 3 tags)"
    assert len(alert.subject) < 100
    assert alert.envelope["Type"] == "Notification"
    assert alert.attributes == {
        "verdict": "drift",
        "severity": "high",
        "registry": registry.host,
        "repository": repo,
        "notice": "new",
        "run_id": breach.run_id,
        "finding_ids": alert.findings[0]["id"],
    }
    assert re.fullmatch(r"[0-9a-f]{32}", alert.findings[0]["id"])
    assert alert.payload["schema_version"] == 1
    assert alert.payload["run_id"] == breach.run_id
    finding = only_finding(alert)
    assert before <= iso_moment(finding["checked_at"]) <= after
    first_seen = iso_moment(finding["first_seen"])
    assert before <= first_seen <= after
    assert iso_moment(finding["recorded_at"]) == trusted.recorded_at
    assert finding == {
        "id": finding["id"],
        "reference": f"{registry.host}/{repo}:1.0",
        "registry": registry.host,
        "repository": repo,
        "tag": "1.0",
        "trusted_digest": first.digest,
        "live_digest": tampered.digest,
        "status": "drift",
        "reason": f"serves {short(tampered.digest)}, CI recorded {short(first.digest)}",
        "checked_at": finding["checked_at"],
        "platforms": None,
        "source": source_of("1.0"),
        "commit": COMMIT,
        "recorded_at": finding["recorded_at"],
        "first_seen": finding["first_seen"],
        "notice": "new",
    }

    # Still drifting: the open alert is not repeated...
    again = audit(cli)
    assert again.code == 1
    assert inbox.receive() == []

    # ...until the reminder interval has passed.
    time.sleep(0.6)
    reminded = audit(cli, "--reminder-interval", "0.5")
    assert reminded.code == 1
    reminder = only(inbox.receive())
    assert reminder.subject == f"[reminder] DRIFT: {registry.host}/{repo}:1.0 (1 of 3 tags)"
    assert (reminder.attributes["verdict"], reminder.attributes["notice"]) == ("drift", "reminder")
    reminder_finding = only_finding(reminder)
    assert (reminder_finding["status"], reminder_finding["notice"]) == ("drift", "reminder")
    assert reminder_finding["live_digest"] == tampered.digest
    assert iso_moment(reminder_finding["first_seen"]) == first_seen

    # The release is restored from its original bytes.
    restored = pusher.push_image(repo, "1.0", "docker", seed=seed)
    assert restored.digest == first.digest
    fixed = audit(cli)
    assert fixed.code == 0
    resolution = only(inbox.receive())
    assert resolution.subject == f"RESOLVED: {registry.host}/{repo}:1.0 (1 of 3 tags)"
    assert resolution.attributes["verdict"] == "resolved"
    assert resolution.attributes["severity"] == "info"
    assert resolution.attributes["notice"] == "resolved"
    resolved_finding = only_finding(resolution)
    assert resolved_finding["status"] == "match"
    assert resolved_finding["notice"] == "resolved"
    assert resolved_finding["live_digest"] == first.digest
    assert resolved_finding["reason"] == RESOLVED_REASON

    quiet = audit(cli)
    assert quiet.code == 0
    assert inbox.receive() == []


def only_finding(alert: DeliveredAlert) -> dict[str, Any]:
    assert len(alert.findings) == 1, alert.findings
    return alert.findings[0]


def test_a_failed_publish_saves_no_state_and_the_next_run_alerts(
    cli: CliRunner,
    registry: LocalRegistry,
    repo: str,
    inbox: AlertQueue,
    aws: AwsClients,
    tables: TableNames,
    topic_arn: str,
) -> None:
    release = registry.pusher.push_image(repo, "1.0", "oci")
    recorded(cli, registry, release)
    assert audit(cli).code == 0
    tampered = registry.pusher.tamper(repo, "1.0")
    state_before = scan_state(aws, tables)
    assert len(state_before) == 1

    aws.sns().delete_topic(TopicArn=topic_arn)
    failed = audit(cli)
    assert failed.code == 4
    assert failed.err.splitlines()[0] == (
        f"digest-audit: error: 1 of 1 alert message(s) were not published to {topic_arn} (NotFound); "
        "the next run sends them again"
    )
    assert scan_state(aws, tables) == state_before

    # The topic comes back under the same name (so the same ARN); its subscriptions did not survive.
    assert create_topic(aws, TOPIC_NAME) == topic_arn
    inbox.subscribe(topic_arn)
    retried = audit(cli)
    assert retried.code == 1
    alert = only(inbox.receive())
    assert alert.subject == f"DRIFT: {registry.host}/{repo}:1.0 (1 of 1 tags)"
    assert alert.attributes["notice"] == "new"
    finding = only_finding(alert)
    assert (finding["trusted_digest"], finding["live_digest"]) == (release.digest, tampered.digest)
    assert scan_state(aws, tables) != state_before


def test_a_changed_platform_of_an_index_is_named_in_every_text(
    cli: CliRunner,
    registry: LocalRegistry,
    repo: str,
    inbox: AlertQueue,
    moto_server: MotoServer,
    topic_arn: str,
) -> None:
    pusher = registry.pusher
    release = pusher.push_image(repo, "3.0", "oci-index", ["linux/amd64", "linux/arm64/v8"])
    recorded(cli, registry, release)

    # A new index whose arm64 child was rebuilt; the amd64 child is the very same manifest as before.
    rogue_child = pusher.push_image(repo, None, "oci", ["linux/arm64/v8"])
    index = json.loads(release.manifest)
    for entry in index["manifests"]:
        if entry["platform"]["architecture"] == "arm64":
            entry["digest"], entry["size"] = rogue_child.digest, rogue_child.size
    rogue_index = pusher.push_manifest(repo, "3.0", json.dumps(index, indent=3).encode(), MediaType.OCI_INDEX)

    result = audit(cli)
    assert result.code == 1
    alert = only(inbox.receive())
    finding = only_finding(alert)
    assert finding["live_digest"] == rogue_index
    assert finding["platforms"] == {
        "linux/amd64": release.platforms["linux/amd64"],
        "linux/arm64/v8": rogue_child.digest,
    }
    assert finding["reason"] == (
        f"serves {short(rogue_index)}, CI recorded {short(release.digest)}; platforms: changed linux/arm64/v8"
    )

    email = only_published(moto_server, topic_arn).email
    assert "  Platforms:       changed linux/arm64/v8" in email.splitlines()
    assert f"    crane digest --platform linux/arm64/v8 {registry.host}/{repo}:3.0" in email.splitlines()
    assert "linux/amd64" not in email.split("Platforms:", 1)[1].split("\n", 1)[0]


def only_published(moto_server: MotoServer, topic_arn: str) -> PublishedMessage:
    messages = published_messages(moto_server.endpoint_url, topic_arn)
    assert len(messages) == 1, [m.subject for m in messages]
    return messages[0]


def test_a_deleted_release_is_missing_until_it_is_pushed_again(
    cli: CliRunner, registry: LocalRegistry, repo: str, inbox: AlertQueue
) -> None:
    pusher = registry.pusher
    seed = f"release-{repo}-1.0"
    release = pusher.push_image(repo, "1.0", "docker", seed=seed)
    recorded(cli, registry, release)
    recorded(cli, registry, pusher.push_image(repo, "1.1", "docker"))
    assert audit(cli).code == 0

    pusher.delete_manifest(repo, release.digest)
    gone = audit(cli)
    assert gone.code == 1
    alert = only(inbox.receive())
    assert alert.subject == f"MISSING: {registry.host}/{repo}:1.0 (1 of 2 tags)"
    assert (alert.attributes["verdict"], alert.attributes["severity"]) == ("missing", "high")
    finding = only_finding(alert)
    assert (finding["status"], finding["reason"]) == ("missing", "tag not found")
    assert (finding["trusted_digest"], finding["live_digest"]) == (release.digest, None)

    assert pusher.push_image(repo, "1.0", "docker", seed=seed).digest == release.digest
    assert audit(cli).code == 0
    resolution = only_finding(only(inbox.receive()))
    assert (resolution["status"], resolution["notice"]) == ("match", "resolved")
    assert resolution["reason"] == "missing resolved: the registry serves a trusted digest"


def test_a_registry_that_cannot_be_reached_is_unverifiable_and_alerted_at_once(
    cli: CliRunner, registry: LocalRegistry, inbox: AlertQueue, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as probe:  # a port nothing listens on once the probe is closed
        probe.bind(("127.0.0.1", 0))
        closed = f"127.0.0.1:{probe.getsockname()[1]}"
    monkeypatch.setenv("DIGEST_AUDIT_INSECURE_REGISTRIES", f"{registry.host},{closed}")
    digest = "sha256:" + "ab" * 32
    offline = cli("record", f"{closed}/team/app:1.0@{digest}", "--source", source_of("1.0"), "--offline")
    assert offline == CliResult(0, f"created: {closed}/team/app:1.0@{digest}\n", "")

    result = audit(cli)
    assert result.code == 3
    assert result.err.splitlines()[1:] == [
        "  this run could not verify every tag:",
        f"    {closed}/team/app:1.0: connection refused",
    ]
    # Every tag of that registry failed: credentials or network, so no waiting for more failed runs.
    alert = only(inbox.receive())
    assert alert.subject == f"UNVERIFIABLE: {closed}/team/app:1.0 (1 of 1 tags)"
    assert (alert.attributes["verdict"], alert.attributes["severity"]) == ("unverifiable", "medium")
    finding = only_finding(alert)
    assert (finding["status"], finding["reason"]) == ("unverifiable", "connection refused")
    assert (finding["trusted_digest"], finding["live_digest"]) == (digest, None)

    assert audit(cli).code == 3
    assert inbox.receive() == []


# ------------------------------------------------------------------------------------------- repository settings


def test_a_moving_tag_may_serve_any_trusted_release_but_not_unrecorded_content(
    cli: CliRunner, registry: LocalRegistry, repo: str, inbox: AlertQueue
) -> None:
    pusher = registry.pusher
    first = pusher.push_image(repo, "1.0", "docker")
    second = pusher.push_image(repo, "2.0", "oci")
    recorded(cli, registry, first)
    recorded(cli, registry, second)
    image = f"{registry.host}/{repo}"
    assert cli("watch", image, "--moving", "latest=any-trusted") == CliResult(
        0,
        f"{image}\n  track new tags: no\n  ignore: none\n"
        "  moving tags: latest=any-trusted (all other tags are pinned)\n",
        "",
    )
    recorded(cli, registry, pusher.tag(first, "latest"))
    assert audit(cli).code == 0

    pusher.tag(second, "latest")  # CI promotes release 2 without recording latest again
    promoted = audit(cli)
    assert promoted.code == 0
    assert inbox.receive() == []

    rogue = pusher.push_image(repo, "latest", "docker")
    breach = audit(cli)
    assert breach.code == 1
    alert = only(inbox.receive())
    assert alert.subject == f"DRIFT: {image}:latest (1 of 3 tags)"
    finding = only_finding(alert)
    assert finding["tag"] == "latest"
    assert (finding["trusted_digest"], finding["live_digest"]) == (first.digest, rogue.digest)
    assert (
        finding["reason"] == f"moving tag (any-trusted): {short(rogue.digest)} was never recorded for this repository"
    )


def test_new_tags_are_reported_as_untracked_unless_ignored(
    cli: CliRunner, registry: LocalRegistry, repo: str, inbox: AlertQueue
) -> None:
    pusher = registry.pusher
    recorded(cli, registry, pusher.push_image(repo, "1.0", "docker"))
    image = f"{registry.host}/{repo}"
    assert cli("watch", image, "--track-new-tags", "--ignore", "sha-*") == CliResult(
        0,
        f"{image}\n  track new tags: yes\n  ignore: sha-*\n  moving tags: none (all other tags are pinned)\n",
        "",
    )
    unrecorded = pusher.push_image(repo, "1.9", "oci")
    pusher.push_image(repo, "sha-abc", "oci")
    signature = pusher.push_image(repo, f"sha256-{'a' * 64}.sig", "oci")
    assert signature.tag is not None

    result = audit(cli)
    assert result.code == 0  # untracked tags are news, not a failed verification
    assert "checked 2 tag(s): 1 match, 1 untracked" in result.err
    alert = only(inbox.receive())
    assert alert.subject == f"UNTRACKED: {image}:1.9 (1 of 2 tags)"
    assert alert.attributes["verdict"] == "untracked"
    assert alert.attributes["severity"] == "medium"
    finding = only_finding(alert)
    assert finding["tag"] == "1.9"
    assert (finding["status"], finding["notice"]) == ("untracked", "new")
    assert (finding["trusted_digest"], finding["live_digest"]) == (None, unrecorded.digest)
    assert (finding["source"], finding["commit"], finding["recorded_at"]) == (None, None, None)

    assert audit(cli).code == 0
    assert inbox.receive() == []

    # Declared uninteresting after the fact: the open alert is closed, not left open forever.
    assert cli("watch", image, "--ignore", "1.9").code == 0
    assert audit(cli).code == 0
    closed = only(inbox.receive())
    assert closed.subject == f"RESOLVED: {image}:1.9 (1 of 1 tags)"
    closing = only_finding(closed)
    assert (closing["status"], closing["notice"]) == ("no-longer-audited", "resolved")
    assert closing["reason"] == "untracked resolved: no longer audited"


def test_a_recorded_platform_digest_drifts_with_a_reason_that_says_how_to_fix_the_record(
    cli: CliRunner, registry: LocalRegistry, repo: str, inbox: AlertQueue
) -> None:
    index = registry.pusher.push_image(repo, "2.0", "oci-index")
    child = index.platforms["linux/arm64/v8"]
    platform_pin = registry.reference(repo, "2.0", child)
    assert cli("record", platform_pin, "--source", source_of("2.0")) == CliResult(0, f"created: {platform_pin}\n", "")

    assert audit(cli).code == 1
    finding = only_finding(only(inbox.receive()))
    assert (finding["trusted_digest"], finding["live_digest"]) == (child, index.digest)
    assert finding["reason"] == (
        f"serves {short(index.digest)}, CI recorded {short(child)}; the trusted digest is the linux/arm64/v8 "
        "child of the live index; if CI recorded a platform digest, record the index digest instead"
    )


# --------------------------------------------------------------------------------------------------- recorder race


class RaceSetup:
    """`latest` is a moving tag recorded at `old`; CI has just pushed `new` to it but not yet recorded it."""

    def __init__(self, cli: CliRunner, registry: LocalRegistry, repo: str) -> None:
        pusher = registry.pusher
        self.old = pusher.push_image(repo, "latest", "docker")
        image = f"{registry.host}/{repo}"
        assert cli("watch", image, "--moving", "latest").code == 0
        recorded(cli, registry, self.old)
        self.new = pusher.push_image(repo, "latest", "docker")
        self.image = image


def audit_directly(
    registry: LocalRegistry,
    aws: AwsClients,
    tables: TableNames,
    topic_arn: str,
    sleep: Callable[[float], Awaitable[None]],
) -> RunReport:
    """One run of the service with the real adapters, its re-verification wait replaced by `sleep`."""

    async def run() -> RunReport:
        settings = Settings(
            registry=RegistrySettings(insecure_registries=frozenset({registry.host})),
            stores=StoreSettings(trust_table=tables.trust, state_table=tables.state),
            alerts=AlertSettings(topic_arn=topic_arn),
            audit=AuditSettings(reverify_delay=5.0),
        )
        async with bootstrap.build(settings, sleep=sleep) as app:
            return await app.auditor().run()

    return asyncio.run(run())


def test_a_digest_recorded_while_the_audit_re_verifies_is_not_an_alert(
    cli: CliRunner,
    registry: LocalRegistry,
    repo: str,
    inbox: AlertQueue,
    aws: AwsClients,
    tables: TableNames,
    topic_arn: str,
) -> None:
    race = RaceSetup(cli, registry, repo)
    delays: list[float] = []
    recordings: list[CliResult] = []

    async def ci_records_meanwhile(seconds: float) -> None:
        delays.append(seconds)
        # The recorder is another process; a thread keeps its own event loop apart from the audit's.
        recordings.append(await asyncio.to_thread(record, cli, registry, race.new))

    report = audit_directly(registry, aws, tables, topic_arn, ci_records_meanwhile)

    assert delays == [5.0]  # the first check did see a drift
    assert recordings == [CliResult(0, f"appended: {registry.reference(repo, 'latest', race.new.digest)}\n", "")]
    assert [(r.ref.tag, r.verdict) for r in report.results] == [("latest", Verdict.MATCH)]
    assert report.findings == []
    assert report.worst_exit_code() == 0
    assert inbox.receive() == []
    states = DynamoStateStore(tables.state, aws.dynamodb()).load_all()
    latest = states[(race.image, "latest")]
    assert (latest.last_verdict, str(latest.last_live_digest)) == (Verdict.MATCH, race.new.digest)


def test_without_a_recording_the_re_verified_drift_is_alerted(
    cli: CliRunner,
    registry: LocalRegistry,
    repo: str,
    inbox: AlertQueue,
    aws: AwsClients,
    tables: TableNames,
    topic_arn: str,
) -> None:
    race = RaceSetup(cli, registry, repo)
    delays: list[float] = []

    async def nobody_records(seconds: float) -> None:
        delays.append(seconds)

    report = audit_directly(registry, aws, tables, topic_arn, nobody_records)

    assert delays == [5.0]
    assert report.worst_exit_code() == 1
    finding = only_finding(only(inbox.receive()))
    assert (finding["tag"], finding["status"]) == ("latest", "drift")
    assert finding["reason"] == (
        f"moving tag (latest-recorded): serves {short(race.new.digest)}, latest recorded {short(race.old.digest)}"
    )
