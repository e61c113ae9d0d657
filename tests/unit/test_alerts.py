"""Rendering findings into SNS messages, and the SNS/print channels against in-memory fakes."""

from __future__ import annotations

import io
import json
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, cast

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError
from hypothesis import given
from hypothesis import strategies as st

from audit.adapters.sns_alerts import PrintAlerts, SnsAlerts
from audit.alerts import (
    MAX_MESSAGE_BYTES,
    AlertMessage,
    confirm_commands,
    machine_finding,
    render,
    subject_for,
)
from audit.drift import with_finding_id
from audit.errors import PublishError
from audit.models import Digest, Notice, Verdict
from audit.records import Finding

if TYPE_CHECKING:
    from mypy_boto3_sns import SNSClient

NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
HUB = "registry-1.docker.io"
TOPIC = "arn:aws:sns:eu-west-1:123456789012:digest-audit-alerts"


def d(n: int) -> Digest:
    return Digest(algorithm="sha256", hex=f"{n:064x}")


def finding(
    tag: str = "1.3.5",
    *,
    status: Verdict = Verdict.DRIFT,
    notice: Notice = Notice.NEW,
    registry: str = HUB,
    repository: str = "openzaak/open-zaak",
    live: Digest | None = None,
    trusted: Digest | None = None,
    platforms: dict[str, Digest] | None = None,
    trusted_platforms: dict[str, Digest] | None = None,
    reason: str | None = "serves sha256:000000000002, CI recorded sha256:000000000001",
) -> Finding:
    familiar = repository if registry == HUB else f"{registry}/{repository}"
    return Finding(
        reference=f"{familiar}:{tag}",
        registry=registry,
        repository=repository,
        tag=tag,
        trusted_digest=trusted if trusted is not None else d(1),
        live_digest=live if live is not None else (d(2) if status is not Verdict.MISSING else None),
        status=status,
        reason=reason,
        checked_at=NOW,
        platforms=platforms,
        trusted_platforms=trusted_platforms,
        source="https://ci.example/runs/7",
        commit="abc123",
        recorded_at=NOW - timedelta(days=30),
        first_seen=NOW - timedelta(hours=1),
        notice=notice,
    )


def only(messages: list[AlertMessage]) -> AlertMessage:
    assert len(messages) == 1
    return messages[0]


def machine(message: AlertMessage) -> dict[str, Any]:
    payload: dict[str, Any] = json.loads(message.protocol("sqs"))
    return payload


# ----------------------------------------------------------------------------------------------- one message


def test_one_drift_renders_every_protocol() -> None:
    item = with_finding_id(finding(), None)
    assert item.finding_id is not None
    message = only(render("run-1", [item], total_tags=42))
    assert message.subject == "DRIFT: openzaak/open-zaak:1.3.5 (1 of 42 tags)"
    assert message.attributes == {
        "verdict": "drift",
        "severity": "high",
        "registry": HUB,
        "repository": "openzaak/open-zaak",
        "notice": "new",
        "run_id": "run-1",
        "finding_ids": item.finding_id,
    }
    assert message.findings == (item,)
    assert set(json.loads(message.message_json)) == {"default", "email", "https", "sqs", "lambda"}
    assert message.protocol("sqs") == message.protocol("lambda")
    assert machine(message) == {
        "schema_version": 1,
        "run_id": "run-1",
        "findings": [
            {
                "id": item.finding_id,
                "reference": "openzaak/open-zaak:1.3.5",
                "registry": HUB,
                "repository": "openzaak/open-zaak",
                "tag": "1.3.5",
                "trusted_digest": str(d(1)),
                "live_digest": str(d(2)),
                "status": "drift",
                "reason": "serves sha256:000000000002, CI recorded sha256:000000000001",
                "checked_at": "2025-03-01T12:00:00Z",
                "platforms": None,
                "source": "https://ci.example/runs/7",
                "commit": "abc123",
                "recorded_at": "2025-01-30T12:00:00Z",
                "first_seen": "2025-03-01T11:00:00Z",
                "notice": "new",
            }
        ],
    }
    chat = json.loads(message.protocol("https"))
    assert chat["content"]["nextSteps"][0] == "Confirm by hand: `crane digest openzaak/open-zaak:1.3.5`"
    default = message.protocol("default")
    assert default.splitlines()[0] == message.subject
    assert str(d(1)) in default and str(d(2)) in default and "run-1" in default


def test_drift_email_is_a_report_a_person_can_act_on() -> None:
    item = finding(
        platforms={"linux/amd64": d(20), "linux/arm64": d(11), "linux/riscv64": d(13)},
        trusted_platforms={"linux/amd64": d(10), "linux/arm64": d(11), "linux/s390x": d(12)},
    )
    email = only(render("run-1", [item], total_tags=42)).protocol("email")
    for expected in (
        "DRIFT: openzaak/open-zaak:1.3.5 (1 of 42 tags)",
        "possible compromise",
        "  Image:           registry-1.docker.io/openzaak/open-zaak\n",
        "  Tag:             1.3.5\n",
        f"  Trusted digest:  {d(1)}\n",
        "    recorded at:   2025-01-30T12:00:00Z\n",
        "    source:        https://ci.example/runs/7\n",
        "    commit:        abc123\n",
        f"Live digest:     {d(2)}",
        "First seen:      2025-03-01T11:00:00Z",
        "changed linux/amd64; added linux/riscv64; removed linux/s390x",
        "crane digest openzaak/open-zaak:1.3.5",
        "docker buildx imagetools inspect openzaak/open-zaak:1.3.5",
        "skopeo inspect --raw docker://docker.io/openzaak/open-zaak:1.3.5 | sha256sum",
        "crane digest --platform linux/amd64 openzaak/open-zaak:1.3.5",
        f"crane tag openzaak/open-zaak@{d(1)} 1.3.5",
        f"digest-audit record openzaak/open-zaak:1.3.5@{d(2)} --replace --reason",
        "Do not deploy",
        "rotate the registry push credentials",
    ):
        assert expected in email, expected


@pytest.mark.parametrize(
    ("status", "notice", "phrases"),
    [
        (Verdict.MISSING, Notice.NEW, ("deleted on purpose", "lifecycle", "crane tag")),
        (Verdict.UNVERIFIABLE, Notice.NEW, ("credentials", "network", "rate limits", "crane digest")),
        (Verdict.UNTRACKED, Notice.NEW, ("digest-audit record", "--ignore 1.3.5", "who pushed")),
        (Verdict.MATCH, Notice.RESOLVED, ("No action is needed", "resolved")),
    ],
)
def test_each_verdict_says_what_to_do_next(status: Verdict, notice: Notice, phrases: tuple[str, ...]) -> None:
    trusted = None if status is Verdict.UNTRACKED else d(1)
    item = finding(status=status, notice=notice, trusted=trusted, live=d(1) if status is Verdict.MATCH else None)
    if trusted is None:
        item = item.model_copy(update={"trusted_digest": None})
    email = only(render("run-1", [item], total_tags=3)).protocol("email")
    for phrase in phrases:
        assert phrase in email, phrase


def test_chat_notification_is_an_aws_chatbot_custom_notification() -> None:
    message = only(render("run-1", [finding(tag=f"1.{n}") for n in range(15)], total_tags=42))
    chat = json.loads(message.protocol("https"))
    assert chat["version"] == "1.0" and chat["source"] == "custom"
    content = chat["content"]
    assert content["textType"] == "client-markdown"
    assert content["title"] == message.subject == "DRIFT: 15 tags in openzaak/open-zaak (of 42)"
    assert "`openzaak/open-zaak:1.0`" in content["description"]
    assert "...and 5 more" in content["description"]
    assert content["nextSteps"] and all(isinstance(s, str) for s in content["nextSteps"])
    assert content["keywords"] == ["drift", "high", "openzaak/open-zaak"]
    assert chat["metadata"] == {
        "threadId": f"digest-audit/{HUB}/openzaak/open-zaak",
        "summary": message.subject,
        "eventType": "digest-audit.drift",
    }


# --------------------------------------------------------------------------------------------------- grouping


def test_messages_hold_one_verdict_of_one_repository() -> None:
    findings = [
        finding("2.0", status=Verdict.UNTRACKED),
        finding("1.0", notice=Notice.RESOLVED, status=Verdict.MATCH),
        finding("1.1"),
        finding("1.2", status=Verdict.MISSING),
        finding("1.0", registry="ghcr.io", repository="org/app"),
        finding("0.9"),
        finding("3.0", status=Verdict.UNVERIFIABLE),
    ]
    messages = render("run-1", findings, total_tags=10)
    keys = [(m.attributes["verdict"], m.attributes["registry"], m.attributes["repository"]) for m in messages]
    assert keys == [
        ("drift", "ghcr.io", "org/app"),
        ("drift", HUB, "openzaak/open-zaak"),
        ("missing", HUB, "openzaak/open-zaak"),
        ("unverifiable", HUB, "openzaak/open-zaak"),
        ("untracked", HUB, "openzaak/open-zaak"),
        ("resolved", HUB, "openzaak/open-zaak"),
    ]
    severities = [m.attributes["severity"] for m in messages]
    assert severities == ["high", "high", "high", "medium", "medium", "info"]
    for message in messages:
        for item in machine(message)["findings"]:
            assert (item["registry"], item["repository"]) == (
                message.attributes["registry"],
                message.attributes["repository"],
            )
            expected_status = "match" if message.attributes["verdict"] == "resolved" else message.attributes["verdict"]
            assert item["status"] == expected_status
    hub_drift = messages[1]
    assert hub_drift.subject == "DRIFT: 2 tags in openzaak/open-zaak (of 10)"
    assert [f["tag"] for f in machine(hub_drift)["findings"]] == ["0.9", "1.1"]
    assert messages[0].subject == "DRIFT: ghcr.io/org/app:1.0 (1 of 10 tags)"
    assert messages[-1].subject == "RESOLVED: openzaak/open-zaak:1.0 (1 of 10 tags)"
    assert messages[-1].attributes["notice"] == "resolved"


def test_reminder_marker_only_when_everything_is_a_reminder() -> None:
    reminders = only(render("r", [finding("1"), finding("2")], total_tags=5))
    assert reminders.attributes["notice"] == "new"
    all_reminders = only(
        render("r", [finding("1", notice=Notice.REMINDER), finding("2", notice=Notice.REMINDER)], total_tags=5)
    )
    assert all_reminders.subject == "[reminder] DRIFT: 2 tags in openzaak/open-zaak (of 5)"
    assert all_reminders.attributes["notice"] == "reminder"
    mixed = only(render("r", [finding("1", notice=Notice.REMINDER), finding("2")], total_tags=5))
    assert not mixed.subject.startswith("[reminder]")


def test_nothing_to_say_renders_nothing() -> None:
    assert render("run-1", [], total_tags=42) == []
    with pytest.raises(ValueError, match="run_id"):
        render("", [finding()], total_tags=1)


# --------------------------------------------------------------------------------------------------- subject

component = st.from_regex(r"[a-z0-9]{1,40}", fullmatch=True)


@given(
    registry=st.sampled_from([HUB, "ghcr.io", "registry.example.com:5000"]),
    parts=st.lists(component, min_size=1, max_size=6),
    tag=st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}", fullmatch=True),
    count=st.integers(min_value=1, max_value=3),
    total=st.integers(min_value=0, max_value=10**6),
)
def test_subject_fits_sns(registry: str, parts: list[str], tag: str, count: int, total: int) -> None:
    repository = "/".join(parts)
    items = [finding(f"{tag}", registry=registry, repository=repository) for _ in range(count)]
    subject = subject_for(Verdict.UNVERIFIABLE, registry, repository, items, total_tags=total, part=12, parts=13)
    assert 0 < len(subject) < 100
    assert subject.isascii() and subject.isprintable()
    assert subject.startswith("UNVERIFIABLE: ")
    assert subject.endswith(" [12/13]")


def test_subject_shortens_the_name_and_keeps_the_counts() -> None:
    repository = "team/" + "a" * 150
    item = finding(registry="ghcr.io", repository=repository)
    subject = subject_for(Verdict.DRIFT, "ghcr.io", repository, [item], total_tags=42)
    assert len(subject) == 99
    assert subject.startswith("DRIFT: ghcr.io/team/aaa")
    assert subject.endswith("... (1 of 42 tags)")


# --------------------------------------------------------------------------------------------------- size


def test_two_thousand_findings_are_split_under_the_limit() -> None:
    platforms = {f"linux/arch{n}": d(100 + n) for n in range(6)}
    findings = [finding(f"1.{n}", platforms=platforms, trusted_platforms=platforms) for n in range(2000)]
    messages = render("run-big", findings, total_tags=5000)
    assert len(messages) > 1
    assert all(m.size_bytes <= MAX_MESSAGE_BYTES for m in messages)
    assert all(len(m.message_json.encode()) < MAX_MESSAGE_BYTES for m in messages)
    # every finding once, in tag order, across parts of one verdict and repository
    tags = [item["tag"] for m in messages for item in machine(m)["findings"]]
    assert sorted(tags) == sorted(f.tag for f in findings if f.tag) and len(tags) == 2000
    assert {m.attributes["verdict"] for m in messages} == {"drift"}
    parts = len(messages)
    assert messages[0].subject.endswith(f"(of 5000) [1/{parts}]")
    assert messages[-1].subject.endswith(f"[{parts}/{parts}]")
    assert f"part {parts} of {parts}" in messages[-1].protocol("email")
    # the chunks are reasonably full, not one finding per message
    assert parts < 2000 / 20


def test_mixed_two_thousand_findings_keep_verdicts_apart() -> None:
    statuses = [Verdict.DRIFT, Verdict.MISSING, Verdict.UNVERIFIABLE, Verdict.UNTRACKED]
    findings = [finding(f"t{n}", status=statuses[n % 4], repository=f"org/app{n % 3}") for n in range(2000)]
    messages = render("run-mixed", findings, total_tags=2000)
    assert all(m.size_bytes <= MAX_MESSAGE_BYTES for m in messages)
    assert sum(len(machine(m)["findings"]) for m in messages) == 2000
    for message in messages:
        statuses_in = {item["status"] for item in machine(message)["findings"]}
        assert statuses_in == {message.attributes["verdict"]}


def test_a_single_huge_finding_is_shrunk_to_fit() -> None:
    huge = finding(reason="x" * 300_000, platforms={f"p/{n}": d(n) for n in range(100)})
    message = only(render("run-1", [huge], total_tags=1))
    assert message.size_bytes <= MAX_MESSAGE_BYTES
    item = machine(message)["findings"][0]
    assert item["platforms"] is None and len(item["reason"]) == 1000


def test_size_counts_subject_and_attributes() -> None:
    message = AlertMessage(subject="é", message_json="{}", attributes={"verdict": "drift"})
    assert message.size_bytes == 2 + 2 + len("verdict") + len("String") + len("drift")


# --------------------------------------------------------------------------------------------------- helpers


def test_confirm_commands_name_the_registry_for_skopeo() -> None:
    commands = confirm_commands(finding(registry="ghcr.io", repository="org/app", tag="v1"))
    assert commands == [
        "crane digest ghcr.io/org/app:v1",
        "docker buildx imagetools inspect ghcr.io/org/app:v1",
        "skopeo inspect --raw docker://ghcr.io/org/app:v1 | sha256sum",
    ]
    official = confirm_commands(finding(repository="library/nginx", tag="1.27"))
    assert official[0] == "crane digest nginx:1.27"
    assert official[2] == "skopeo inspect --raw docker://docker.io/library/nginx:1.27 | sha256sum"


def test_machine_finding_serialises_platforms_sorted() -> None:
    item = machine_finding(finding(platforms={"linux/arm64": d(11), "linux/amd64": d(10)}))
    assert item["platforms"] == {"linux/amd64": str(d(10)), "linux/arm64": str(d(11))}
    assert list(cast(Mapping[str, str], item["platforms"])) == ["linux/amd64", "linux/arm64"]


# --------------------------------------------------------------------------------------------------- channels


class FakeSns:
    """Records PublishBatch calls; can fail entries or whole calls."""

    def __init__(
        self,
        *,
        fail_ids: frozenset[str] = frozenset(),
        raise_on_call: int | None = None,
        transient: dict[str, int] | None = None,
    ) -> None:
        self.calls: list[dict[str, Any]] = []
        self._fail_ids = fail_ids
        self._raise_on_call = raise_on_call
        self._transient = dict(transient or {})  # entry id -> how many more times SNS fails it (its fault)

    def publish_batch(self, **kwargs: Any) -> dict[str, Any]:
        self.calls.append(kwargs)
        if self._raise_on_call == len(self.calls):
            raise ClientError({"Error": {"Code": "AuthorizationError", "Message": "not allowed"}}, "PublishBatch")
        entries = kwargs["PublishBatchRequestEntries"]
        transient = [e["Id"] for e in entries if self._transient.get(e["Id"], 0) > 0]
        for entry_id in transient:
            self._transient[entry_id] -= 1
        entries = [e for e in entries if e["Id"] not in transient]
        return {
            "Successful": [
                {"Id": e["Id"], "MessageId": f"m-{e['Id']}"} for e in entries if e["Id"] not in self._fail_ids
            ],
            "Failed": [
                {"Id": e["Id"], "Code": "KMSAccessDenied", "SenderFault": True, "Message": "kms"}
                for e in entries
                if e["Id"] in self._fail_ids
            ]
            + [{"Id": i, "Code": "InternalError", "SenderFault": False, "Message": "try again"} for i in transient],
        }


def many_repositories(count: int) -> list[Finding]:
    return [finding(repository=f"org/app{n:02d}") for n in range(count)]


def sns(fake: FakeSns) -> SnsAlerts:
    return SnsAlerts(TOPIC, cast("SNSClient", fake))


def test_sns_publishes_in_batches_of_ten() -> None:
    fake = FakeSns()
    assert sns(fake).publish("run-1", many_repositories(25), total_tags=25) == 25
    assert [len(c["PublishBatchRequestEntries"]) for c in fake.calls] == [10, 10, 5]
    ids = [e["Id"] for c in fake.calls for e in c["PublishBatchRequestEntries"]]
    assert len(set(ids)) == 25
    entry = fake.calls[0]["PublishBatchRequestEntries"][0]
    assert fake.calls[0]["TopicArn"] == TOPIC
    assert entry["MessageStructure"] == "json"
    assert entry["Subject"] == "DRIFT: openzaak/open-zaak:1.3.5 (1 of 25 tags)".replace(
        "openzaak/open-zaak", "org/app00"
    )
    assert entry["MessageAttributes"]["verdict"] == {"DataType": "String", "StringValue": "drift"}
    assert set(json.loads(entry["Message"])) == {"default", "email", "https", "sqs", "lambda"}


def test_sns_keeps_each_call_under_the_size_limit() -> None:
    fake = FakeSns()
    big_reason = "y" * 15_000  # appears in four protocols: about 60 kB per message
    findings = [finding(repository=f"org/app{n}", reason=big_reason) for n in range(8)]
    assert sns(fake).publish("run-1", findings, total_tags=8) == 8
    for call in fake.calls:
        total = sum(len(e["Message"].encode()) for e in call["PublishBatchRequestEntries"])
        assert total <= MAX_MESSAGE_BYTES
    assert len(fake.calls) > 1
    assert all(len(call["PublishBatchRequestEntries"]) < 10 for call in fake.calls)


def test_sns_failed_entries_raise_after_trying_every_batch() -> None:
    fake = FakeSns(fail_ids=frozenset({"alert-3", "alert-12"}))
    with pytest.raises(PublishError) as caught:
        sns(fake).publish("run-1", many_repositories(25), total_tags=25)
    assert len(fake.calls) == 3
    assert "2 of 25 alert message(s)" in caught.value.message
    assert TOPIC in caught.value.message and "KMSAccessDenied" in caught.value.message
    assert "KMS key" in caught.value.hint and "topic ARN" in caught.value.hint
    # The error says exactly which findings SNS accepted (one repository per message here).
    delivered = sorted(f.repository for f in caught.value.delivered)
    assert delivered == sorted(f"org/app{n:02d}" for n in range(25) if n not in (3, 12))
    # A sender fault (our request, e.g. KMS access) is not retried within the run.
    assert len(fake.calls) == 3


def test_sns_re_sends_only_the_entries_sns_failed_on_its_side() -> None:
    fake = FakeSns(transient={"alert-4": 2})
    sleeps: list[float] = []
    alerts = SnsAlerts(
        TOPIC, cast("SNSClient", fake), entry_attempts=3, backoff=lambda retry: retry / 10, sleep=sleeps.append
    )
    assert alerts.publish("run-1", many_repositories(10), total_tags=10) == 10
    assert [[e["Id"] for e in c["PublishBatchRequestEntries"]] for c in fake.calls][1:] == [["alert-4"], ["alert-4"]]
    assert sleeps == [0.1, 0.2]


def test_sns_gives_up_on_a_failing_entry_and_names_what_was_delivered() -> None:
    fake = FakeSns(transient={"alert-0": 5})
    alerts = SnsAlerts(TOPIC, cast("SNSClient", fake), entry_attempts=2, sleep=lambda _: None)
    with pytest.raises(PublishError, match="1 of 3 alert message") as caught:
        alerts.publish("run-1", many_repositories(3), total_tags=3)
    assert len(fake.calls) == 2
    assert sorted(f.repository for f in caught.value.delivered) == ["org/app01", "org/app02"]


def test_sns_client_errors_raise_after_trying_every_batch() -> None:
    fake = FakeSns(raise_on_call=1)
    with pytest.raises(PublishError) as caught:
        sns(fake).publish("run-1", many_repositories(25), total_tags=25)
    assert len(fake.calls) == 3
    assert "10 of 25" in caught.value.message and "AuthorizationError" in caught.value.message


def test_sns_connection_errors_become_publish_errors() -> None:
    class Offline(FakeSns):
        def publish_batch(self, **kwargs: Any) -> dict[str, Any]:
            raise EndpointConnectionError(endpoint_url="https://sns.eu-west-1.amazonaws.com")

    with pytest.raises(PublishError, match="EndpointConnectionError"):
        SnsAlerts(TOPIC, cast("SNSClient", Offline())).publish("run-1", [finding()], total_tags=1)


def test_sns_with_nothing_to_say_calls_nothing() -> None:
    fake = FakeSns()
    assert sns(fake).publish("run-1", [], total_tags=3) == 0
    assert fake.calls == []


def test_print_alerts_writes_text_or_machine_json() -> None:
    stream = io.StringIO()
    assert PrintAlerts(stream).publish("run-1", [finding(), finding(status=Verdict.MISSING)], total_tags=4) == 2
    text = stream.getvalue()
    assert "DRIFT: openzaak/open-zaak:1.3.5 (1 of 4 tags)" in text and "MISSING: " in text

    stream = io.StringIO()
    assert PrintAlerts(stream, machine=True).publish("run-1", [finding()], total_tags=4) == 1
    payload = json.loads(stream.getvalue())
    assert payload["schema_version"] == 1 and payload["findings"][0]["status"] == "drift"
