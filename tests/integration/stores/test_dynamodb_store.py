"""DynamoDB-only behaviour over real HTTP to moto: item layout, pages, consistent reads, races, and errors."""

from __future__ import annotations

import socket
import threading
import tracemalloc
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import boto3
import pytest
from botocore.config import Config

from audit.adapters import dynamodb_store
from audit.adapters.dynamodb_store import (
    READ_AHEAD_PAGES,
    DynamoRunLease,
    DynamoStateStore,
    DynamoTrustStore,
    TableSetup,
    create_tables,
    tag_state_to_item,
    trusted_image_to_item,
)
from audit.errors import StoreError, TrustConflictError
from audit.models import MediaType, RecordOutcome
from audit.records import TrustSnapshot
from tests.support.aws_fixtures import AwsClients, TableNames
from tests.support.store_builders import IMAGE, digest, moving_watch, state, trusted

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

pytestmark = pytest.mark.integration


class Calls:
    """Parameters of every call of one operation, seen through botocore's event hooks (the real request)."""

    def __init__(self, client: DynamoDBClient, operation: str) -> None:
        self.params: list[dict[str, object]] = []
        client.meta.events.register(f"provide-client-params.dynamodb.{operation}", self._seen)

    def _seen(self, params: dict[str, object], **_: object) -> None:
        self.params.append(dict(params))

    def __len__(self) -> int:
        return len(self.params)


def before(client: DynamoDBClient, operation: str, action: Callable[[], object]) -> None:
    """Run `action` once, just before the first `operation` call of `client`: a deterministic race."""
    done: list[bool] = []

    def hook(**_: object) -> None:
        if not done:
            done.append(True)
            action()

    client.meta.events.register(f"before-call.dynamodb.{operation}", hook)


@pytest.fixture
def client(aws: AwsClients, tables: TableNames) -> DynamoDBClient:
    return aws.dynamodb()


@pytest.fixture
def store(client: DynamoDBClient, tables: TableNames) -> DynamoTrustStore:
    return DynamoTrustStore(tables.trust, client)


@pytest.fixture
def rival(aws: AwsClients, tables: TableNames) -> DynamoTrustStore:
    """Another recorder with its own client (so hooks on `client` do not fire for it)."""
    return DynamoTrustStore(tables.trust, aws.dynamodb())


def raw_items(client: DynamoDBClient, table: str) -> list[dict[str, str]]:
    items = client.scan(TableName=table, ConsistentRead=True)["Items"]
    return [{name: str(value.get("S", value.get("N", ""))) for name, value in item.items()} for item in items]


# --- layout ------------------------------------------------------------------------------------------------


def test_item_layout_matches_the_documented_key_design(
    store: DynamoTrustStore, client: DynamoDBClient, tables: TableNames
) -> None:
    store.record(trusted("1.0", "a"))
    store.record(trusted("1.0", "b", reason="rebuild"), replace=True)
    store.put_watch_settings(moving_watch())
    keys = sorted(item["sk"] for item in raw_items(client, tables.trust))
    assert keys[0] == "$watch"
    assert keys[1].startswith("history#1.0#20") and keys[1].endswith(f"#{digest('a')}")
    assert keys[2] == "tag#1.0"
    assert {item["image"] for item in raw_items(client, tables.trust)} == {IMAGE}
    history = next(item for item in raw_items(client, tables.trust) if item["sk"].startswith("history#"))
    assert history["superseded_by"] == str(digest("b"))
    assert history["digest"] == str(digest("a"))


def test_create_tables_is_idempotent_and_on_demand(aws: AwsClients) -> None:
    client = aws.dynamodb()
    assert create_tables(client, "t1", "s1") == [TableSetup("t1", True), TableSetup("s1", True)]
    assert create_tables(client, "t1", "s1") == [TableSetup("t1", False), TableSetup("s1", False)]
    trust = client.describe_table(TableName="t1")["Table"]
    state_table = client.describe_table(TableName="s1")["Table"]
    assert [(key["AttributeName"], key["KeyType"]) for key in trust["KeySchema"]] == [
        ("image", "HASH"),
        ("sk", "RANGE"),
    ]
    assert [(key["AttributeName"], key["KeyType"]) for key in state_table["KeySchema"]] == [
        ("image", "HASH"),
        ("tag", "RANGE"),
    ]
    assert trust.get("BillingModeSummary", {}).get("BillingMode") == "PAY_PER_REQUEST"


def test_an_existing_active_table_costs_one_describe(aws: AwsClients) -> None:
    client = aws.dynamodb()
    calls: list[str] = []
    client.meta.events.register("before-call.dynamodb.*", lambda model, **_: calls.append(model.name))
    create_tables(client, "t1", "s1")
    assert calls.count("CreateTable") == 2
    assert calls.count("DescribeTable") >= 2  # the waiter's, once per new table (moto makes them active at once)
    calls.clear()
    create_tables(client, "t1", "s1")
    assert calls == ["CreateTable", "DescribeTable", "CreateTable", "DescribeTable"]


def test_create_tables_refuses_a_table_with_another_key_schema(aws: AwsClients) -> None:
    client = aws.dynamodb()
    client.create_table(
        TableName="taken",
        KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    with pytest.raises(StoreError, match="'taken' exists with key schema id \\(HASH\\)") as caught:
        create_tables(client, "taken", "state")
    assert "TRUSTED_DIGESTS_TABLE" in caught.value.hint


# --- pages and consistency ---------------------------------------------------------------------------------


def test_scans_and_queries_follow_every_page(client: DynamoDBClient, tables: TableNames) -> None:
    store = DynamoTrustStore(tables.trust, client, page_size=2)
    for index in range(7):
        store.record(trusted("latest", "0123456789"[index], minutes=index), moving=True)
        store.record(trusted(f"1.{index}", "abcdef9"[index]))
    scans, queries = Calls(client, "Scan"), Calls(client, "Query")
    assert len(store.load_all()) == 8
    assert len(scans) >= 7  # 14 items (8 current, 6 history) at 2 per page
    assert all(params.get("Limit") == 2 for params in scans.params)
    assert len(store.history(IMAGE, "latest")) == 6
    assert len(queries) >= 3
    assert len(store.digests_ever_recorded(IMAGE)) == 14
    assert len(queries) >= 3 + 7


def test_snapshot_is_read_by_parallel_scan_segments_page_by_page(client: DynamoDBClient, tables: TableNames) -> None:
    store = DynamoTrustStore(tables.trust, client, page_size=3, scan_segments=4)
    recorded = {trusted(f"1.{index}", "abcdef0123"[index]) for index in range(10)}
    for item in recorded:
        store.record(item)
    store.put_watch_settings(moving_watch())
    scans = Calls(client, "Scan")
    pages = list(store.snapshot_pages())
    records = [record for page in pages for record in page.trusted]
    assert sorted(records, key=lambda r: r.tag) == sorted(recorded, key=lambda r: r.tag)  # each exactly once
    assert [settings for page in pages for settings in page.watch] == [moving_watch()]
    assert len(pages) == len(scans) >= 4  # one page per Scan call: handed on as it arrives
    assert {(params["Segment"], params["TotalSegments"]) for params in scans.params} == {(n, 4) for n in range(4)}
    assert store.load_snapshot() == TrustSnapshot(
        sorted(recorded, key=lambda r: (r.image, r.tag)), [moving_watch()], []
    )


def test_snapshot_segments_wait_for_a_reader_that_is_behind(client: DynamoDBClient, tables: TableNames) -> None:
    """Raw pages never pile up: a reader busy with one page holds back the segments' Scans."""
    store = DynamoTrustStore(tables.trust, client, page_size=1, scan_segments=2)
    for index in range(12):
        store.record(trusted(f"1.{index}", "abcdef0123ab"[index]))
    bound = READ_AHEAD_PAGES + 2  # waiting for the reader + one held by each segment
    scans_started: list[int] = []
    beyond_bound = threading.Event()

    def started(**_: object) -> None:
        scans_started.append(1)
        if len(scans_started) > 1 + bound:
            beyond_bound.set()

    client.meta.events.register("before-call.dynamodb.Scan", started)
    pages = store.snapshot_pages()
    read = [next(pages)]
    # A reader that takes its time with the first page: segments that did not wait would read on meanwhile.
    assert not beyond_bound.wait(timeout=2)
    read += list(pages)
    assert sorted(record.tag for page in read for record in page.trusted) == sorted(f"1.{n}" for n in range(12))


def test_a_failing_segment_fails_the_snapshot_with_a_store_error(client: DynamoDBClient) -> None:
    store = DynamoTrustStore("no-such-table", client, scan_segments=3)
    with pytest.raises(StoreError):
        list(store.snapshot_pages())


def test_state_load_all_follows_every_page(client: DynamoDBClient, tables: TableNames) -> None:
    store = DynamoStateStore(tables.state, client, page_size=4)
    states = [state(f"1.{index}") for index in range(30)]
    store.save(states)
    scans = Calls(client, "Scan")
    assert store.load_all() == {entry.key: entry for entry in states}
    assert len(scans) >= 8


def test_state_save_batches_by_25(client: DynamoDBClient, tables: TableNames) -> None:
    batches = Calls(client, "BatchWriteItem")
    DynamoStateStore(tables.state, client).save([state(f"1.{index}") for index in range(60)])
    sizes = [
        len(requests)
        for params in batches.params
        for requests in dict(params["RequestItems"]).values()  # type: ignore[call-overload]
    ]
    assert sizes == [25, 25, 10]


def test_state_save_builds_its_items_a_batch_at_a_time(client: DynamoDBClient, tables: TableNames) -> None:
    """A first run saves every tag's state: all items built before the first write were its peak of memory."""
    store = DynamoStateStore(tables.state, client)
    states = [state(f"1.{index}") for index in range(500)]
    held_by_items: list[int] = []  # bytes allocated by this module (the items) and still alive, at each write

    def items_alive(**_: object) -> None:
        traces = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(True, dynamodb_store.__file__)])
        held_by_items.append(sum(stat.size for stat in traces.statistics("filename")))

    tracemalloc.start()
    try:
        items = [tag_state_to_item(entry) for entry in states]
        items_alive()
        all_items = held_by_items.pop()
        del items
        client.meta.events.register("before-call.dynamodb.BatchWriteItem", items_alive)
        store.save(states)
    finally:
        tracemalloc.stop()
    assert len(held_by_items) == 20
    assert max(held_by_items) < all_items / 5, (max(held_by_items), all_items)


def test_a_read_keeps_one_copy_of_the_texts_its_items_repeat(client: DynamoDBClient, tables: TableNames) -> None:
    """Registry, repository, media type and platform are the same text in thousands of items: one object each."""
    trust = DynamoTrustStore(tables.trust, client, page_size=2, scan_segments=2)
    for index in range(6):
        platforms = {"linux/amd64": digest("0")}
        trust.record(trusted(f"1.{index}", "abcdef"[index], platforms=platforms, media_type=MediaType.OCI_INDEX.value))
    records = [record for page in trust.snapshot_pages() for record in page.trusted]
    assert len(records) == 6
    for name in ("registry", "repository", "media_type"):
        assert len({id(getattr(record, name)) for record in records}) == 1, name
    assert len({id(platform) for record in records for platform in record.platforms or {}}) == 1
    states = DynamoStateStore(tables.state, client, page_size=2)
    states.save([state(f"1.{index}") for index in range(6)])
    loaded = states.load_all()
    assert len({id(entry.repository) for entry in loaded.values()}) == 1
    assert len({id(image) for image, _ in loaded}) == 1


def test_reads_that_decide_are_consistent(store: DynamoTrustStore, client: DynamoDBClient) -> None:
    store.record(trusted("1.0", "a"))
    gets, queries = Calls(client, "GetItem"), Calls(client, "Query")
    store.get(IMAGE, "1.0", consistent=True)
    store.get(IMAGE, "1.0")
    assert [params["ConsistentRead"] for params in gets.params] == [True, False]
    store.record(trusted("1.0", "a"))
    store.get_watch_settings(IMAGE)
    assert all(params["ConsistentRead"] is True for params in gets.params[2:])
    store.history(IMAGE, "1.0")
    store.digests_ever_recorded(IMAGE)
    assert [params["ConsistentRead"] for params in queries.params] == [True, True]


def test_unchanged_writes_nothing(store: DynamoTrustStore, client: DynamoDBClient) -> None:
    store.record(trusted("1.0", "a"))
    puts, transactions = Calls(client, "PutItem"), Calls(client, "TransactWriteItems")
    assert store.record(trusted("1.0", "a", minutes=3)) is RecordOutcome.UNCHANGED
    assert len(puts) == 0
    assert len(transactions) == 0


# --- races -------------------------------------------------------------------------------------------------


def test_losing_a_create_race_to_the_same_digest_is_unchanged(
    store: DynamoTrustStore, rival: DynamoTrustStore, client: DynamoDBClient
) -> None:
    before(client, "PutItem", lambda: rival.record(trusted("1.0", "a", source="rival")))
    assert store.record(trusted("1.0", "a")) is RecordOutcome.UNCHANGED
    stored = store.get(IMAGE, "1.0", consistent=True)
    assert stored is not None and stored.source == "rival"


def test_losing_a_create_race_to_another_digest_is_a_conflict(
    store: DynamoTrustStore, rival: DynamoTrustStore, client: DynamoDBClient
) -> None:
    before(client, "PutItem", lambda: rival.record(trusted("1.0", "b")))
    with pytest.raises(TrustConflictError, match="already trusted as") as caught:
        store.record(trusted("1.0", "a"))
    assert str(digest("b")) in caught.value.message
    assert store.get(IMAGE, "1.0", consistent=True) == trusted("1.0", "b")


def test_losing_a_create_race_while_moving_names_the_winner(
    store: DynamoTrustStore, rival: DynamoTrustStore, client: DynamoDBClient
) -> None:
    before(client, "PutItem", lambda: rival.record(trusted("latest", "b"), moving=True))
    with pytest.raises(TrustConflictError, match="changed while recording") as caught:
        store.record(trusted("latest", "a"), moving=True)
    assert f"now {digest('b')}" in caught.value.message
    assert "re-run" in caught.value.hint
    assert store.history(IMAGE, "latest") == []


def test_a_concurrent_move_makes_the_slower_recorder_fail_without_a_lost_update(
    store: DynamoTrustStore, rival: DynamoTrustStore, client: DynamoDBClient
) -> None:
    store.record(trusted("latest", "a"))
    before(client, "TransactWriteItems", lambda: rival.record(trusted("latest", "b", minutes=1), moving=True))
    with pytest.raises(TrustConflictError, match="changed while recording") as caught:
        store.record(trusted("latest", "c", minutes=2), moving=True)
    assert f"was {digest('a')}" in caught.value.message
    assert store.get(IMAGE, "latest", consistent=True) == trusted("latest", "b", minutes=1)
    assert store.history(IMAGE, "latest") == [trusted("latest", "a")]


def test_a_concurrent_change_and_change_back_is_still_detected(
    store: DynamoTrustStore, rival: DynamoTrustStore, client: DynamoDBClient
) -> None:
    """The digest alone would match again (A-B-A); the revision condition still catches it."""
    store.record(trusted("latest", "a"))

    def change_and_change_back() -> None:
        rival.record(trusted("latest", "b", minutes=1), moving=True)
        rival.record(trusted("latest", "a", minutes=2), moving=True)

    before(client, "TransactWriteItems", change_and_change_back)
    with pytest.raises(TrustConflictError, match="changed while recording"):
        store.record(trusted("latest", "c", minutes=3), moving=True)
    assert [entry.digest for entry in store.history(IMAGE, "latest")] == [digest("a"), digest("b")]


def test_a_record_written_by_another_tool_without_revision_can_be_replaced(
    store: DynamoTrustStore, client: DynamoDBClient, tables: TableNames
) -> None:
    client.put_item(TableName=tables.trust, Item=trusted_image_to_item(trusted("1.0", "a")))
    assert store.record(trusted("1.0", "b", reason="rebuild"), replace=True) is RecordOutcome.REPLACED
    assert store.history(IMAGE, "1.0") == [trusted("1.0", "a")]
    assert store.record(trusted("1.0", "c", reason="again"), replace=True) is RecordOutcome.REPLACED


# --- errors ------------------------------------------------------------------------------------------------


def test_a_missing_trust_table_says_to_run_init(aws: AwsClients) -> None:
    store = DynamoTrustStore("no-such-table", aws.dynamodb())
    with pytest.raises(StoreError) as caught:
        store.load_all()
    assert "'no-such-table'" in caught.value.message
    assert "Scan" in caught.value.message
    assert "digest-audit init" in caught.value.hint
    assert "TRUSTED_DIGESTS_TABLE" in caught.value.hint


@pytest.mark.parametrize(
    ("operation", "call"),
    [
        ("GetItem", lambda store: store.get(IMAGE, "1.0")),
        ("Query", lambda store: store.history(IMAGE, "1.0")),
        ("GetItem", lambda store: store.record(trusted())),
        ("PutItem", lambda store: store.put_watch_settings(moving_watch())),
    ],
)
def test_every_trust_operation_translates_a_missing_table(
    aws: AwsClients, operation: str, call: Callable[[DynamoTrustStore], object]
) -> None:
    with pytest.raises(StoreError, match=operation) as caught:
        call(DynamoTrustStore("absent", aws.dynamodb()))
    assert "digest-audit init" in caught.value.hint


@pytest.mark.parametrize(
    "call", [lambda store: store.load_all(), lambda store: store.save([state()])], ids=["load_all", "save"]
)
def test_a_missing_state_table_names_its_variable(aws: AwsClients, call: Callable[[DynamoStateStore], object]) -> None:
    with pytest.raises(StoreError, match="'absent-state'") as caught:
        call(DynamoStateStore("absent-state", aws.dynamodb()))
    assert "AUDIT_STATE_TABLE" in caught.value.hint
    assert "digest-audit init" in caught.value.hint


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A loopback port nobody listens on: bound but not listening, so connections are refused."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        yield holder.getsockname()[1]


def test_an_unreachable_endpoint_becomes_a_store_error(closed_port: int) -> None:
    client = boto3.session.Session(
        aws_access_key_id="testing", aws_secret_access_key="testing", region_name="eu-west-1"
    ).client(
        "dynamodb",
        endpoint_url=f"http://127.0.0.1:{closed_port}",
        config=Config(retries={"max_attempts": 1, "mode": "standard"}, connect_timeout=2),
    )
    with pytest.raises(StoreError, match="GetItem on table 'trust'") as caught:
        DynamoTrustStore("trust", client).get(IMAGE, "1.0")
    assert "AWS_ENDPOINT_URL" in caught.value.hint


def test_missing_credentials_become_a_store_error(aws: AwsClients, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    client = boto3.session.Session(region_name="eu-west-1").client("dynamodb", endpoint_url=aws.endpoint_url)
    with pytest.raises(StoreError, match="no AWS credentials") as caught:
        DynamoStateStore("state", client).load_all()
    assert "AWS_PROFILE" in caught.value.hint


def test_a_malformed_item_names_its_key(store: DynamoTrustStore, client: DynamoDBClient, tables: TableNames) -> None:
    client.put_item(
        TableName=tables.trust,
        Item={"image": {"S": IMAGE}, "sk": {"S": "tag#1.0"}, "registry": {"S": "ghcr.io"}},
    )
    with pytest.raises(StoreError, match=r"sk='tag#1\.0'.*is malformed: attribute 'repository' is missing"):
        store.load_all()


def test_a_malformed_digest_is_reported_not_raised_raw(
    store: DynamoTrustStore, client: DynamoDBClient, tables: TableNames
) -> None:
    item = trusted_image_to_item(trusted())
    item["digest"] = {"S": "sha256:short"}
    client.put_item(TableName=tables.trust, Item=item)
    with pytest.raises(StoreError, match="malformed: invalid digest"):
        store.get(IMAGE, "1.0")
    with pytest.raises(StoreError, match="malformed: invalid digest"):
        store.digests_ever_recorded(IMAGE)


# --- the run lease -------------------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


def test_the_run_lease_is_exclusive_expires_and_is_taken_over(client: DynamoDBClient, tables: TableNames) -> None:
    clock = Clock()
    first = DynamoRunLease(tables.state, client, duration=timedelta(minutes=15), clock=clock)
    second = DynamoRunLease(tables.state, client, duration=timedelta(minutes=15), clock=clock)
    assert first.acquire("run-a").acquired
    held = second.acquire("run-b")
    assert not held.acquired and "run-a" in held.holder
    assert held.expires_at == clock.now + timedelta(minutes=15)
    # The state store does not see the reserved item.
    DynamoStateStore(tables.state, client).save([state("1.0")])
    assert list(DynamoStateStore(tables.state, client).load_all()) == [(IMAGE, "1.0")]

    clock.now += timedelta(minutes=16)  # run-a died without releasing: its lease went stale
    assert second.acquire("run-b").acquired
    assert not first.renew("run-a")  # run-a, if it were alive after all, must not publish now
    first.release("run-a")  # and must not delete run-b's lease
    assert not first.acquire("run-c").acquired
    assert second.renew("run-b")
    second.release("run-b")
    assert first.acquire("run-c").acquired


# --- hostile names: keys within DynamoDB's limits, hand-written watch items --------------------------------------


def test_a_state_of_a_1100_character_tag_is_saved_under_a_bounded_key(
    client: DynamoDBClient, tables: TableNames
) -> None:
    """DynamoDB refuses sort keys over 1,024 bytes (BatchWriteItem ValidationException): never ask it to store one."""
    states = DynamoStateStore(tables.state, client)
    long_tag = "x" * 1100
    states.save([state(long_tag), state("1.0")])

    keys = sorted(item["tag"] for item in raw_items(client, tables.state))
    assert len(keys) == 2 and "1.0" in keys
    [hashed] = [key for key in keys if key != "1.0"]
    assert hashed.startswith("#invalid-tag-") and len(hashed.encode()) <= 128
    assert set(states.load_all()) == {(IMAGE, "1.0"), (IMAGE, hashed)}
    states.save([state(long_tag)])  # the same name maps to the same key: saved again, not duplicated
    assert len(raw_items(client, tables.state)) == 2


def test_a_hand_written_invalid_watch_item_is_rejected_not_fatal(
    store: DynamoTrustStore, client: DynamoDBClient, tables: TableNames
) -> None:
    store.record(trusted("1.0"))
    store.put_watch_settings(moving_watch())
    client.put_item(
        TableName=tables.trust,
        Item={
            "image": {"S": "Not A Host!/org/app"},
            "sk": {"S": "$watch"},
            "registry": {"S": "Not A Host!"},
            "repository": {"S": "org/app"},
            "track_new_tags": {"BOOL": True},
        },
    )

    records, settings, rejected = store.load_snapshot()

    assert [record.tag for record in records] == ["1.0"]
    assert settings == [moving_watch()]
    [bad] = rejected
    assert bad.image == "Not A Host!/org/app"
    assert "invalid image" in bad.problem
