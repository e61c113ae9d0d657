"""One behavioural suite for every TrustStore and StateStore: the JSON files, DynamoDB on a moto server, and the
in-memory fakes unit tests use (so a fake cannot drift from the real stores)."""

from __future__ import annotations

from pathlib import Path

import pytest

from audit.adapters.dynamodb_store import DynamoStateStore, DynamoTrustStore
from audit.adapters.file_store import FileStateStore, FileTrustStore
from audit.errors import TrustConflictError, UsageError
from audit.models import RecordOutcome, Verdict
from audit.ports import StateStore, TrustStore
from tests.support.aws_fixtures import AwsClients, TableNames
from tests.support.memory_ports import MemoryStateStore, MemoryTrustStore
from tests.support.store_builders import (
    IMAGE,
    alerted_state,
    digest,
    full_record,
    moving_watch,
    state,
    trusted,
    watch,
)

pytestmark = pytest.mark.integration

BACKENDS = ["file", "dynamodb", "memory"]


@pytest.fixture(params=BACKENDS)
def trust_store(request: pytest.FixtureRequest, tmp_path: Path) -> TrustStore:
    if request.param == "file":
        return FileTrustStore(tmp_path / "trusted.json")
    if request.param == "memory":
        return MemoryTrustStore()
    tables: TableNames = request.getfixturevalue("tables")
    aws: AwsClients = request.getfixturevalue("aws")
    # A page size of 2 makes every multi-item read cross pages.
    return DynamoTrustStore(tables.trust, aws.dynamodb(), page_size=2)


@pytest.fixture(params=BACKENDS)
def state_store(request: pytest.FixtureRequest, tmp_path: Path) -> StateStore:
    if request.param == "file":
        return FileStateStore(tmp_path / "state.json")
    if request.param == "memory":
        return MemoryStateStore()
    tables: TableNames = request.getfixturevalue("tables")
    aws: AwsClients = request.getfixturevalue("aws")
    return DynamoStateStore(tables.state, aws.dynamodb(), page_size=3)


# --- TrustStore --------------------------------------------------------------------------------------------


def test_an_empty_store_knows_nothing(trust_store: TrustStore) -> None:
    assert trust_store.load_all() == []
    assert trust_store.get(IMAGE, "1.0") is None
    assert trust_store.get(IMAGE, "1.0", consistent=True) is None
    assert trust_store.history(IMAGE, "1.0") == []
    assert trust_store.digests_ever_recorded(IMAGE) == set()
    assert trust_store.load_watch_settings() == []
    assert trust_store.get_watch_settings(IMAGE) is None


def test_a_new_tag_is_created_with_every_field(trust_store: TrustStore) -> None:
    record = full_record()
    assert trust_store.record(record) is RecordOutcome.CREATED
    assert trust_store.get(record.image, record.tag, consistent=True) == record
    assert trust_store.load_all() == [record]
    assert trust_store.history(record.image, record.tag) == []


def test_minimal_record_keeps_its_missing_fields_missing(trust_store: TrustStore) -> None:
    record = trusted()
    trust_store.record(record)
    stored = trust_store.get(IMAGE, "1.0")
    assert stored == record
    assert stored is not None and stored.platforms is None and stored.commit is None


def test_the_same_digest_again_is_unchanged_and_keeps_the_first_record(trust_store: TrustStore) -> None:
    first = trusted(source="first run")
    trust_store.record(first)
    assert trust_store.record(trusted(source="second run", minutes=5)) is RecordOutcome.UNCHANGED
    assert trust_store.get(IMAGE, "1.0") == first
    assert trust_store.history(IMAGE, "1.0") == []


@pytest.mark.parametrize(("replace", "moving"), [(True, False), (False, True), (True, True)])
def test_the_same_digest_is_unchanged_even_when_replacing_or_moving(
    trust_store: TrustStore, replace: bool, moving: bool
) -> None:
    trust_store.record(trusted())
    outcome = trust_store.record(trusted(reason="why", minutes=1), replace=replace, moving=moving)
    assert outcome is RecordOutcome.UNCHANGED
    assert trust_store.history(IMAGE, "1.0") == []


def test_a_different_digest_is_a_conflict_that_changes_nothing(trust_store: TrustStore) -> None:
    original = trusted("1.0", "a")
    trust_store.record(original)
    with pytest.raises(TrustConflictError) as caught:
        trust_store.record(trusted("1.0", "b", minutes=1))
    message = caught.value.message
    assert "ghcr.io/org/app:1.0" in message
    assert str(digest("a")) in message
    assert str(digest("b")) in message
    assert "--replace --reason" in caught.value.hint
    assert trust_store.get(IMAGE, "1.0") == original
    assert trust_store.history(IMAGE, "1.0") == []
    assert trust_store.digests_ever_recorded(IMAGE) == {digest("a")}


@pytest.mark.parametrize("reason", [None, "", "   "])
def test_replace_needs_a_reason(trust_store: TrustStore, reason: str | None) -> None:
    trust_store.record(trusted("1.0", "a"))
    with pytest.raises(UsageError, match="needs a reason") as caught:
        trust_store.record(trusted("1.0", "b", reason=reason), replace=True)
    assert "--reason" in caught.value.hint
    assert trust_store.get(IMAGE, "1.0") == trusted("1.0", "a")


def test_replace_keeps_the_old_record_as_history(trust_store: TrustStore) -> None:
    old = full_record("1.0")
    new = trusted("1.0", "b", minutes=10, reason="re-release after CVE fix")
    trust_store.record(old)
    assert trust_store.record(new, replace=True) is RecordOutcome.REPLACED
    assert trust_store.get(IMAGE, "1.0", consistent=True) == new
    assert trust_store.history(IMAGE, "1.0") == [old]
    assert trust_store.digests_ever_recorded(IMAGE) == {old.digest, new.digest}
    assert trust_store.load_all() == [new]


def test_a_moving_tag_appends_and_history_is_oldest_first(trust_store: TrustStore) -> None:
    records = [trusted("latest", char, minutes=index) for index, char in enumerate("abcd")]
    assert trust_store.record(records[0], moving=True) is RecordOutcome.CREATED
    for record in records[1:]:
        assert trust_store.record(record, moving=True) is RecordOutcome.APPENDED
    assert trust_store.get(IMAGE, "latest") == records[-1]
    assert trust_store.history(IMAGE, "latest") == records[:-1]
    assert trust_store.digests_ever_recorded(IMAGE) == {record.digest for record in records}


def test_a_digest_can_come_back_and_both_stints_stay_in_history(trust_store: TrustStore) -> None:
    first, second, back = (
        trusted("latest", "a"),
        trusted("latest", "b", minutes=1),
        trusted("latest", "a", minutes=2),
    )
    trust_store.record(first)
    trust_store.record(second, moving=True)
    trust_store.record(back, moving=True)
    trust_store.record(trusted("latest", "c", minutes=3), moving=True)
    assert trust_store.history(IMAGE, "latest") == [first, second, back]


def test_history_of_one_tag_never_includes_a_tag_it_prefixes(trust_store: TrustStore) -> None:
    trust_store.record(trusted("1.0", "a"))
    trust_store.record(trusted("1.0.1", "b"))
    trust_store.record(trusted("1.0.1", "c", reason="fix"), replace=True)
    assert trust_store.history(IMAGE, "1.0") == []
    assert [entry.digest for entry in trust_store.history(IMAGE, "1.0.1")] == [digest("b")]


def test_repositories_are_kept_apart(trust_store: TrustStore) -> None:
    app = trusted("1.0", "a")
    other = trusted("1.0", "b", repository="org/other")
    hub = trusted("1.0", "c", registry="registry-1.docker.io", repository="library/nginx")
    for record in (hub, other, app):
        trust_store.record(record)
    assert trust_store.load_all() == sorted([app, other, hub], key=lambda record: (record.image, record.tag))
    assert trust_store.digests_ever_recorded(IMAGE) == {digest("a")}
    assert trust_store.digests_ever_recorded("ghcr.io/org/other") == {digest("b")}
    assert trust_store.get("ghcr.io/org/other", "1.0") == other


def test_digests_ever_recorded_spans_every_tag_and_history(trust_store: TrustStore) -> None:
    trust_store.record(trusted("1.0", "a"))
    trust_store.record(trusted("2.0", "b"))
    trust_store.record(trusted("2.0", "c", reason="rebuild"), replace=True)
    trust_store.put_watch_settings(moving_watch())
    assert trust_store.digests_ever_recorded(IMAGE) == {digest("a"), digest("b"), digest("c")}


def test_load_all_reads_every_page(trust_store: TrustStore) -> None:
    records = [trusted(f"1.{minor}", "abcdef0123456789"[minor]) for minor in range(9)]
    for record in records:
        trust_store.record(record)
    trust_store.record(trusted("1.0", "f", reason="rebuild"), replace=True)  # history must not show up
    trust_store.put_watch_settings(watch())
    loaded = trust_store.load_all()
    assert [record.tag for record in loaded] == sorted(record.tag for record in records)
    assert len(loaded) == 9


def test_a_snapshot_is_load_all_and_load_watch_settings_in_one_read(trust_store: TrustStore) -> None:
    for minor in range(7):
        trust_store.record(trusted(f"2.{minor}", "abcdef0"[minor]))
    trust_store.record(trusted("2.0", "f", reason="rebuild"), replace=True)  # history stays out
    for index in range(3):
        trust_store.put_watch_settings(watch(f"org/app{index}", track_new_tags=True))
    records, settings, rejected = trust_store.load_snapshot()
    assert rejected == []
    assert records == trust_store.load_all()
    assert settings == trust_store.load_watch_settings()
    assert len(records) == 7
    assert [entry.repository for entry in settings] == ["org/app0", "org/app1", "org/app2"]


def test_watch_settings_round_trip_and_overwrite(trust_store: TrustStore) -> None:
    settings = moving_watch()
    trust_store.put_watch_settings(settings)
    assert trust_store.get_watch_settings(IMAGE) == settings
    updated = watch(track_new_tags=False, ignore=(), moving={})
    trust_store.put_watch_settings(updated)
    assert trust_store.get_watch_settings(IMAGE) == updated
    assert trust_store.load_watch_settings() == [updated]


def test_watch_settings_of_many_repositories(trust_store: TrustStore) -> None:
    all_settings = [watch(f"org/app{index}", track_new_tags=index % 2 == 0) for index in range(5)]
    for settings in reversed(all_settings):
        trust_store.put_watch_settings(settings)
    assert trust_store.load_watch_settings() == all_settings
    assert trust_store.load_all() == []


def test_watch_settings_and_trust_records_of_one_repository_coexist(trust_store: TrustStore) -> None:
    trust_store.put_watch_settings(moving_watch())
    trust_store.record(trusted("latest", "a"))
    assert trust_store.get_watch_settings(IMAGE) == moving_watch()
    assert trust_store.load_all() == [trusted("latest", "a")]


# --- StateStore --------------------------------------------------------------------------------------------


def test_an_empty_state_store_loads_nothing(state_store: StateStore) -> None:
    assert state_store.load_all() == {}


def test_states_round_trip_with_and_without_optional_fields(state_store: StateStore) -> None:
    plain, alerted = state("1.0"), alerted_state("2.0")
    state_store.save([plain, alerted])
    assert state_store.load_all() == {plain.key: plain, alerted.key: alerted}


def test_save_writes_only_what_it_is_given(state_store: StateStore) -> None:
    one, two = state("1.0"), state("2.0")
    state_store.save([one, two])
    changed = state("2.0", last_verdict=Verdict.MISSING, consecutive_unverifiable=0)
    state_store.save([changed])
    assert state_store.load_all() == {one.key: one, two.key: changed}


def test_save_of_nothing_changes_nothing(state_store: StateStore) -> None:
    state_store.save([])
    assert state_store.load_all() == {}


def test_an_alert_can_be_cleared(state_store: StateStore) -> None:
    state_store.save([alerted_state("1.0")])
    cleared = state("1.0", alert_count=3)
    state_store.save([cleared])
    assert state_store.load_all()[cleared.key] == cleared


def test_more_states_than_one_batch(state_store: StateStore) -> None:
    states = [state(f"1.{index}", repository=f"org/app{index % 4}") for index in range(61)]
    state_store.save(states)
    assert state_store.load_all() == {entry.key: entry for entry in states}


def test_the_last_state_of_a_key_wins_within_one_save(state_store: StateStore) -> None:
    first, last = state("1.0", alert_count=1), state("1.0", alert_count=2)
    state_store.save([first, last])
    assert state_store.load_all() == {last.key: last}
