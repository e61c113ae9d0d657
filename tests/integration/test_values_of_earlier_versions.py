"""Items an earlier version (or a hand) wrote keep working: a media type we do not know, a state saved as `resolved`.

Real DynamoDB items (moto in server mode) and a real registry; the CLI runs the audit as the schedule does.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from audit.adapters.dynamodb_store import DynamoStateStore, DynamoTrustStore, current_sort_key, tag_state_to_item
from audit.models import Digest, Verdict
from audit.records import TagState
from tests.support.aws_fixtures import AwsClients, TableNames
from tests.support.cli_runner import CliRunner
from tests.support.local_registry import LocalRegistry
from tests.support.sns_capture import AlertQueue

pytestmark = pytest.mark.integration

UNKNOWN_MEDIA_TYPE = "application/vnd.example.distribution.manifest.v9+json"
EARLIER = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def test_a_record_with_an_unknown_media_type_and_a_state_saved_as_resolved_are_audited(
    cli: CliRunner, registry: LocalRegistry, repo: str, inbox: AlertQueue, aws: AwsClients, tables: TableNames
) -> None:
    release = registry.pusher.push_image(repo, "1.0", "oci-index", ["linux/amd64", "linux/arm64"])
    assert release.tag is not None
    reference = registry.reference(repo, "1.0", release.digest)
    assert cli("record", reference, "--source", "https://ci.example/runs/1").code == 0
    image = f"{registry.host}/{repo}"
    client = aws.dynamodb()
    client.update_item(
        TableName=tables.trust,
        Key={"image": {"S": image}, "sk": {"S": current_sort_key("1.0")}},
        UpdateExpression="SET media_type = :media",
        ExpressionAttributeValues={":media": {"S": UNKNOWN_MEDIA_TYPE}},
    )
    # A tag that left the audit, as an earlier version saved it (its alert already closed).
    left = TagState(
        registry=registry.host,
        repository=repo,
        tag="0.9",
        last_verdict=Verdict.NO_LONGER_AUDITED,
        first_seen=EARLIER,
        last_seen=EARLIER,
    )
    item = tag_state_to_item(left) | {"last_verdict": {"S": "resolved"}}
    client.put_item(TableName=tables.state, Item=item)

    [stored] = DynamoTrustStore(tables.trust, client).load_all()
    assert stored.media_type is None  # unknown: neither an index nor a single manifest
    saved = DynamoStateStore(tables.state, client).load_all()[(image, "0.9")]
    assert saved.last_verdict is Verdict.NO_LONGER_AUDITED

    run = cli("run")
    assert (run.code, run.out, "Traceback" in run.err) == (0, "", False)
    assert inbox.receive() == []

    served = registry.pusher.tamper(repo, "1.0", "oci")  # the index replaced by a single manifest
    run = cli("run")
    assert (run.code, "Traceback" in run.err) == (1, False)
    [alert] = inbox.receive()
    [finding] = alert.findings
    assert (finding["status"], finding["live_digest"]) == ("drift", served.digest)
    # The record's media type is unknown, so the audit does not claim "an index was recorded".
    live, trusted = Digest.parse(served.digest), Digest.parse(release.digest)
    assert finding["reason"] == f"serves {live.short}, CI recorded {trusted.short}"
