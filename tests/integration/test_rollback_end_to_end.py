"""A tag moved back to a digest it was recorded with before: the drift alert says when that digest was recorded.

Real registry, moto in server mode, the CLI in-process; the history Query happens once per drift, never per tag.
"""

from __future__ import annotations

import pytest

from audit.adapters.dynamodb_store import DynamoTrustStore
from audit.models import Digest, iso_utc
from audit.records import TrustedImage
from tests.support.aws_fixtures import AwsClients, TableNames
from tests.support.cli_runner import CliRunner
from tests.support.local_registry import LocalRegistry
from tests.support.sns_capture import AlertQueue

pytestmark = pytest.mark.integration


def test_a_drift_back_to_an_earlier_record_says_when_it_was_recorded(
    cli: CliRunner,
    registry: LocalRegistry,
    repo: str,
    inbox: AlertQueue,
    aws: AwsClients,
    tables: TableNames,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pusher = registry.pusher
    first = pusher.push_image(repo, "1.0", "docker")
    others = [pusher.push_image(repo, "1.1", "oci"), pusher.push_image(repo, "2.0", "oci")]
    for pushed in (first, *others):
        assert pushed.tag is not None
        reference = registry.reference(repo, pushed.tag, pushed.digest)
        assert cli("record", reference, "--source", f"https://ci.example/runs/{pushed.tag}").code == 0
    rebuilt = pusher.tamper(repo, "1.0")
    replace = ["--replace", "--reason", "rebuilt on a new base", "--source", "https://ci.example/runs/1.0-b"]
    assert cli("record", registry.reference(repo, "1.0", rebuilt.digest), *replace).code == 0
    assert cli("run").code == 0
    assert inbox.receive() == []

    pusher.tag(first, "1.0")  # someone pushes the old build back
    image = f"{registry.host}/{repo}"
    [earlier] = DynamoTrustStore(tables.trust, aws.dynamodb()).history(image, "1.0")
    asked: list[tuple[str, str]] = []
    read_history = DynamoTrustStore.history

    def counted(store: DynamoTrustStore, image: str, tag: str) -> list[TrustedImage]:
        asked.append((image, tag))
        return read_history(store, image, tag)

    monkeypatch.setattr(DynamoTrustStore, "history", counted)
    run = cli("run")

    assert (run.code, "Traceback" in run.err) == (1, False)
    assert asked == [(image, "1.0")]  # one Query for the one drift, none for the tags that match
    [alert] = inbox.receive()
    [finding] = alert.findings
    assert (finding["tag"], finding["status"], finding["live_digest"]) == ("1.0", "drift", first.digest)
    live, trusted = Digest.parse(first.digest), Digest.parse(rebuilt.digest)
    assert finding["reason"] == (
        f"serves {live.short}, CI recorded {trusted.short}; rolled back to the digest recorded for this tag on "
        f"{iso_utc(earlier.recorded_at)} (a deliberate rollback, or a stale mirror?)"
    )
