"""Each alert once, under AWS faults: a proxy between the CLI and moto server throttles, fails, drops, loses
responses, fails part of a PublishBatch, holds a call, or kills the run at a chosen AWS call.

The invariants: no lost alert, no false alarm, the trust table never written by `run`, no duplicate from a
partial publish or from two runs at once, a throttled state save survives, and a `record` whose response was
lost reports success. The one duplicate that remains (killed between SNS accepting and the state save) carries
the same finding ids, so a subscriber can drop it.
"""

from __future__ import annotations

import json
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from audit import bootstrap
from audit.adapters.dynamodb_store import LEASE_KEY
from audit.config import ENV_LEASE_SECONDS
from tests.support.aws_faults import FaultKind, FaultProxy, fault_proxy
from tests.support.aws_fixtures import AwsClients, TableNames
from tests.support.cli_runner import CliResult, CliRunner
from tests.support.local_registry import LocalRegistry
from tests.support.sns_capture import AlertQueue, DeliveredAlert

pytestmark = pytest.mark.integration

#: Operations that write; `run` may send them to the state table and never to the trust table.
WRITES = frozenset({"PutItem", "UpdateItem", "DeleteItem", "BatchWriteItem", "TransactWriteItems"})


@pytest.fixture
def proxy(aws: AwsClients, monkeypatch: pytest.MonkeyPatch) -> Iterator[FaultProxy]:
    """The code under test talks to moto through the proxy; `aws` clients (setup, assertions) go direct."""
    with fault_proxy(aws.endpoint_url) as running:
        monkeypatch.setenv("AWS_ENDPOINT_URL", running.url)
        bootstrap.dynamodb_client.cache_clear()
        bootstrap.sns_client.cache_clear()
        yield running
        running.clear()


@pytest.fixture
def cli(cli: CliRunner, proxy: FaultProxy) -> CliRunner:
    """The end-to-end CLI, its AWS calls going through the fault proxy."""
    return cli


def releases(cli: CliRunner, registry: LocalRegistry, *, tags: int = 1, swapped: int = 1) -> list[str]:
    """A fresh repository per call: `tags` recorded releases, the first `swapped` re-pushed by an attacker."""
    repo = f"faults/r{secrets.token_hex(4)}"
    for number in range(tags):
        tag = f"1.{number}"
        image = registry.pusher.push_image(repo, tag, "docker")
        result = cli("record", registry.reference(repo, tag, image.digest), "--source", f"https://ci.example/{tag}")
        assert result.code == 0, result.err
    for number in range(swapped):
        registry.pusher.tamper(repo, f"1.{number}")
    return [f"{registry.host}/{repo}:1.{number}" for number in range(swapped)]


def audit(cli: CliRunner) -> CliResult:
    result = cli("run")
    assert result.out == ""
    assert "Traceback" not in result.err
    return result


def finding_ids(alerts: list[DeliveredAlert]) -> list[str]:
    return sorted(str(finding["id"]) for alert in alerts for finding in alert.findings)


def references(alerts: list[DeliveredAlert]) -> list[str]:
    return sorted(str(finding["reference"]) for alert in alerts for finding in alert.findings)


def trust_writes(proxy: FaultProxy, tables: TableNames) -> list[str]:
    """Write calls that named the trust table (JSON bodies of DynamoDB calls)."""
    return [call.operation for call in proxy.calls() if call.operation in WRITES and tables.trust.encode() in call.body]


def scan(aws: AwsClients, table: str) -> list[str]:
    items = aws.dynamodb().scan(TableName=table, ConsistentRead=True)["Items"]
    return sorted(json.dumps(item, sort_keys=True) for item in items)


# ------------------------------------------------------------------------------------------- the duplicates


def test_a_partial_publish_resends_only_what_sns_did_not_accept(
    cli: CliRunner, registry: LocalRegistry, inbox: AlertQueue, proxy: FaultProxy
) -> None:
    (first,) = releases(cli, registry)
    (second,) = releases(cli, registry)
    # SNS keeps failing the second repository's message on its side, through every in-run retry of that entry.
    proxy.inject("PublishBatch", "partial", times=bootstrap.SNS_ENTRY_ATTEMPTS, match=second.split("/", 1)[1])

    failed = audit(cli)
    assert failed.code == 4
    assert "1 of 2 alert message(s) were not published" in failed.err
    assert references(inbox.receive()) == [first]
    batches = [call.form() for call in proxy.calls("PublishBatch")]
    assert len(batches) == bootstrap.SNS_ENTRY_ATTEMPTS
    # Only the failed entry is sent again within the run.
    assert all("PublishBatchRequestEntries.member.2.Id" not in batch for batch in batches[1:])

    retried = audit(cli)
    assert retried.code == 1
    assert references(inbox.receive()) == [second]  # the accepted alert is not sent again
    assert audit(cli).code == 1
    assert inbox.receive() == []


def test_an_entry_sns_failed_once_is_resent_within_the_run(
    cli: CliRunner, registry: LocalRegistry, inbox: AlertQueue, proxy: FaultProxy
) -> None:
    swapped = releases(cli, registry)
    proxy.inject("PublishBatch", "partial", match=swapped[0].split("/", 1)[1])
    assert audit(cli).code == 1
    assert references(inbox.receive()) == swapped
    assert len(proxy.calls("PublishBatch")) == 2


def test_a_throttled_state_save_survives_a_burst(
    cli: CliRunner, registry: LocalRegistry, inbox: AlertQueue, proxy: FaultProxy, aws: AwsClients, tables: TableNames
) -> None:
    swapped = releases(cli, registry)
    # More throttled calls in a row than botocore's default 4 attempts, then items left unprocessed twice.
    proxy.inject("BatchWriteItem", "throttle", times=4)
    proxy.inject("BatchWriteItem", "unprocessed", times=2)
    assert audit(cli).code == 1
    assert references(inbox.receive()) == swapped
    assert len(proxy.calls("BatchWriteItem")) == 7
    assert len(scan(aws, tables.state)) == 1  # the tag's state (the lease item is gone: released)

    assert audit(cli).code == 1
    assert inbox.receive() == []  # remembered: no second alert


def test_two_runs_at_once_deliver_each_alert_once(
    cli: CliRunner, registry: LocalRegistry, inbox: AlertQueue, proxy: FaultProxy
) -> None:
    swapped = releases(cli, registry)
    held = proxy.inject("PublishBatch", "hold")
    command = [sys.executable, "-m", "audit", "run"]
    first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert held.reached.wait(120), "the first run never published"
        second = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
        assert second.returncode == 5, second.stderr
        assert "stepped aside" in second.stderr and "nothing was checked" in second.stderr
    finally:
        held.release()
        _, first_err = first.communicate(timeout=120)
    assert first.returncode == 1, first_err
    assert references(inbox.receive()) == swapped


def test_a_dry_run_needs_no_lease(
    cli: CliRunner, registry: LocalRegistry, inbox: AlertQueue, proxy: FaultProxy
) -> None:
    releases(cli, registry)
    held = proxy.inject("PublishBatch", "hold")
    first = subprocess.Popen(
        [sys.executable, "-m", "audit", "run"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert held.reached.wait(120)
        dry = cli("run", "--dry-run")
        assert dry.code == 1 and "would alert" in dry.err
    finally:
        held.release()
        first.communicate(timeout=120)
    assert len(inbox.receive()) == 1


def test_a_run_killed_after_publishing_repeats_with_the_same_finding_ids(
    cli: CliRunner,
    registry: LocalRegistry,
    inbox: AlertQueue,
    proxy: FaultProxy,
    aws: AwsClients,
    tables: TableNames,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The duplicate no lease or retry can avoid: SNS accepted, the process died before the state save."""
    monkeypatch.setenv(ENV_LEASE_SECONDS, "4")
    swapped = releases(cli, registry)
    running: list[subprocess.Popen[str]] = []
    proxy.inject("BatchWriteItem", "drop", action=lambda: running[0].send_signal(signal.SIGKILL))
    running.append(
        subprocess.Popen(
            [sys.executable, "-m", "audit", "run"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
    )
    running[0].communicate(timeout=120)
    assert running[0].returncode == -signal.SIGKILL
    before = inbox.receive()
    assert references(before) == swapped

    # The dead run's lease still stands: the next run steps aside instead of racing a run it cannot see.
    assert audit(cli).code == 5
    lease = aws.dynamodb().get_item(
        TableName=tables.state, Key={k: {"S": v} for k, v in LEASE_KEY.items()}, ConsistentRead=True
    )["Item"]
    expires = int(lease["expires_at"]["N"])
    time.sleep(max(0.0, expires - datetime.now(UTC).timestamp()) + 1.1)  # let it go stale, then take it over

    again = audit(cli)
    assert again.code == 1
    after = inbox.receive()
    assert references(after) == swapped
    assert finding_ids(after) == finding_ids(before)  # the subscriber's guard
    assert after[0].attributes["finding_ids"] == before[0].attributes["finding_ids"]
    assert audit(cli).code == 1
    assert inbox.receive() == []


def test_a_record_whose_response_was_lost_reports_success(
    cli: CliRunner, registry: LocalRegistry, proxy: FaultProxy, aws: AwsClients, tables: TableNames
) -> None:
    repo = f"faults/r{secrets.token_hex(4)}"
    released = registry.pusher.push_image(repo, "1.0", "docker")
    assert cli("record", registry.reference(repo, "1.0", released.digest), "--source", "https://ci/1").code == 0
    rebuilt = registry.pusher.push_image(repo, None, "docker")
    proxy.inject("TransactWriteItems", "lose_response")

    result = cli(
        "record",
        registry.reference(repo, "1.0", rebuilt.digest),
        "--source",
        "https://ci/2",
        "--replace",
        "--reason",
        "re-release",
    )
    assert result == CliResult(0, f"replaced: {registry.reference(repo, '1.0', rebuilt.digest)}\n", "")
    sent = [call.json() for call in proxy.calls("TransactWriteItems")]
    assert len(sent) == 2  # botocore retried the call whose response was lost ...
    assert sent[0]["ClientRequestToken"] == sent[1]["ClientRequestToken"]  # ... with the same token
    items = [json.loads(item) for item in scan(aws, tables.trust)]
    assert sorted(item["sk"]["S"].split("#")[0] for item in items) == ["history", "tag"]
    assert next(item for item in items if item["sk"]["S"] == "tag#1.0")["digest"]["S"] == rebuilt.digest


# ------------------------------------------------------------------------------------------- the invariants

#: (operation, fault, times): enough times to exhaust every retry where that is the point.
FAULTS_ON_A_RUN: list[tuple[str, FaultKind, int]] = [
    ("Scan", "error500", 99),
    ("Scan", "drop", 99),
    ("GetItem", "error500", 99),
    ("PutItem", "lose_response", 1),
    ("PutItem", "error500", 99),
    ("UpdateItem", "drop", 99),
    ("PublishBatch", "error500", 99),
    ("PublishBatch", "drop", 99),
    ("PublishBatch", "lose_response", 1),
    ("PublishBatch", "throttle", 2),
    ("BatchWriteItem", "error500", 99),
    ("BatchWriteItem", "unprocessed", 2),
]
#: An all-match audit publishes nothing and re-verifies nothing (no PublishBatch, no consistent GetItem).
FAULTS_ON_A_QUIET_RUN = [fault for fault in FAULTS_ON_A_RUN if fault[0] not in ("PublishBatch", "GetItem")]


@pytest.mark.parametrize(("operation", "kind", "times"), FAULTS_ON_A_RUN)
def test_no_lost_alert_and_the_trust_table_untouched(
    cli: CliRunner,
    registry: LocalRegistry,
    inbox: AlertQueue,
    proxy: FaultProxy,
    aws: AwsClients,
    tables: TableNames,
    operation: str,
    kind: FaultKind,
    times: int,
) -> None:
    swapped = releases(cli, registry, tags=2)
    trust_before = scan(aws, tables.trust)
    proxy.clear()
    proxy.inject(operation, kind, times=times)
    faulty = audit(cli)
    assert faulty.code in (1, 4), faulty.err
    assert proxy.calls(operation), "the fault never applied"
    assert trust_writes(proxy, tables) == []
    proxy.clear()
    settled = audit(cli)
    assert settled.code == 1, settled.err
    delivered = inbox.receive()
    # At least once; a repeat only where SNS may have accepted a message whose answer never came back.
    assert set(references(delivered)) == set(swapped)
    assert len(set(finding_ids(delivered))) == 1
    assert audit(cli).code == 1
    assert inbox.receive() == []
    assert scan(aws, tables.trust) == trust_before
    assert trust_writes(proxy, tables) == []


@pytest.mark.parametrize(("operation", "kind", "times"), FAULTS_ON_A_QUIET_RUN)
def test_no_false_alarm_under_faults(
    cli: CliRunner,
    registry: LocalRegistry,
    inbox: AlertQueue,
    proxy: FaultProxy,
    aws: AwsClients,
    tables: TableNames,
    operation: str,
    kind: FaultKind,
    times: int,
) -> None:
    releases(cli, registry, tags=2, swapped=0)
    trust_before = scan(aws, tables.trust)
    proxy.clear()
    proxy.inject(operation, kind, times=times)
    assert audit(cli).code in (0, 4)
    assert proxy.calls(operation), "the fault never applied"
    assert trust_writes(proxy, tables) == []
    proxy.clear()
    assert audit(cli).code == 0
    assert inbox.receive() == []
    assert scan(aws, tables.trust) == trust_before
    assert trust_writes(proxy, tables) == []
