"""The trust import/export flow over an in-memory store: validate all first, conflicts listed, a stop explained."""

from __future__ import annotations

import json

import pytest

from audit.app.trust_transfer import ImportConflict, export_trust, import_trust, trust_export
from audit.errors import StoreError
from audit.models import MovingMode
from audit.records import TrustedImage, WatchSettings
from audit.trust_formats import TRUST_FIELDS, TrustImportError
from tests.support.memory_ports import MemoryTrustStore
from tests.support.store_builders import digest, trusted, watch

HEADER = ",".join(TRUST_FIELDS)


def row(tag: str, char: str) -> str:
    return f"ghcr.io,org/app,{tag},{digest(char)},,,https://ci.example.com/run/1,,2024-05-01T12:00:00Z,,"


def csv_text(*rows: str) -> str:
    return "\n".join([HEADER, *rows]) + "\n"


def test_rows_are_created_or_unchanged_and_a_conflict_is_listed_never_replaced() -> None:
    store = MemoryTrustStore(trusted("1.0", "a"), trusted("2.0", "b"))
    summary = import_trust(store, csv_text(row("1.0", "a"), row("2.0", "c"), row("3.0", "d")), "csv")
    assert summary.created == ("ghcr.io/org/app:3.0",)
    assert summary.unchanged == ("ghcr.io/org/app:1.0",)
    assert summary.conflicts == (ImportConflict("line 3", "ghcr.io/org/app:2.0", digest("b"), digest("c")),)
    assert store.trusted[("ghcr.io/org/app", "2.0")].digest == digest("b")


def test_a_duplicate_anywhere_refuses_the_whole_input_before_anything_is_written() -> None:
    store = MemoryTrustStore()
    with pytest.raises(TrustImportError, match=r"^line 4: ghcr.io/org/app:1.0 appears again \(first at line 2\)"):
        import_trust(store, csv_text(row("1.0", "a"), row("2.0", "b"), row("1.0", "c")), "csv")
    assert store.writes == []


def test_watch_settings_are_written_before_the_records() -> None:
    store = MemoryTrustStore()
    document = {
        "trusted": [trusted("latest", "b").model_dump(mode="json", exclude_none=True)],
        "watch": [watch(moving={"latest": MovingMode.LATEST_RECORDED}).model_dump(mode="json")],
    }
    summary = import_trust(store, json.dumps(document), "json")
    assert store.writes == ["watch ghcr.io/org/app", "record ghcr.io/org/app:latest"]
    assert (summary.watch_settings, summary.created) == (1, ("ghcr.io/org/app:latest",))


def test_a_store_failing_half_way_says_what_stays_and_that_running_again_is_safe() -> None:
    store = MemoryTrustStore()
    store.fail_on_record = 2
    with pytest.raises(StoreError) as raised:
        import_trust(store, json.dumps([trusted(tag, "a").model_dump(mode="json") for tag in ("1", "2", "3")]), "json")
    assert raised.value.message == (
        "import stopped at record 2: cannot write table trust: throttled; "
        "the 1 of 3 records before it were written and stay"
    )
    assert raised.value.hint.startswith("try again later; then fix the cause and run the same import again")
    assert list(store.trusted) == [("ghcr.io/org/app", "1")]


def test_export_holds_records_sorted_with_their_history_and_the_watch_settings() -> None:
    store = MemoryTrustStore(trusted("2.0", "a"), trusted("1.0", "b"))
    store.record(trusted("1.0", "c", reason="rebuilt"), replace=True)
    store.put_watch_settings(watch("org/z"))
    store.put_watch_settings(watch("org/a"))
    export = trust_export(store)
    assert [(r.tag, r.digest) for r in export.trusted] == [("1.0", digest("c")), ("2.0", digest("a"))]
    assert [(r.tag, r.digest) for r in export.history] == [("1.0", digest("b"))]
    assert [w.repository for w in export.watch] == ["org/a", "org/z"]
    assert json.loads(export_trust(store, "json"))["history"][0]["digest"] == str(digest("b"))
    assert export_trust(store, "csv").splitlines()[0] == HEADER


def moving_store(*records: TrustedImage) -> MemoryTrustStore:
    store = MemoryTrustStore(*records)
    store.put_watch_settings(watch(moving={"latest": MovingMode.LATEST_RECORDED}))
    store.writes.clear()
    return store


def as_json(*records: TrustedImage) -> str:
    return json.dumps([record.model_dump(mode="json", exclude_none=True) for record in records])


def test_a_moving_tag_advances_to_a_newer_row_as_record_would() -> None:
    store = moving_store(trusted("latest", "a"), trusted("1.0", "b"))
    summary = import_trust(store, as_json(trusted("latest", "c", minutes=5), trusted("1.0", "d", minutes=5)), "json")
    assert summary.appended == ("ghcr.io/org/app:latest",)
    assert [c.reference for c in summary.conflicts] == ["ghcr.io/org/app:1.0"]  # a pinned tag stays a conflict
    assert store.trusted[("ghcr.io/org/app", "latest")].digest == digest("c")
    assert [record.digest for record in store.history("ghcr.io/org/app", "latest")] == [digest("a")]
    assert summary.describe().splitlines()[0] == "created 0, unchanged 0, moving tags advanced 1, conflicts 1"


def test_an_older_row_of_a_moving_tag_is_stale_and_never_moves_it_back() -> None:
    store = moving_store(trusted("latest", "c", minutes=5))
    summary = import_trust(store, as_json(trusted("latest", "a")), "json")
    assert summary.stale == (ImportConflict("record 1", "ghcr.io/org/app:latest", digest("c"), digest("a")),)
    assert (summary.appended, summary.conflicts, store.writes) == ((), (), [])
    assert store.trusted[("ghcr.io/org/app", "latest")].digest == digest("c")
    assert summary.describe().splitlines() == [
        "created 0, unchanged 0, stale 1, conflicts 0",
        f"stale (record 1): moving tag ghcr.io/org/app:latest already has a newer record ({digest('c')}); "
        f"{digest('a')} was not imported",
    ]


def test_the_same_digest_of_a_moving_tag_is_unchanged_whatever_its_time() -> None:
    store = moving_store(trusted("latest", "a", minutes=5))
    summary = import_trust(store, as_json(trusted("latest", "a")), "json")
    assert (summary.unchanged, summary.stale) == (("ghcr.io/org/app:latest",), ())


def test_a_moving_policy_in_the_imported_document_applies_to_its_own_rows() -> None:
    store = MemoryTrustStore(trusted("latest", "a"))
    document = {
        "trusted": [trusted("latest", "b", minutes=5).model_dump(mode="json", exclude_none=True)],
        "watch": [watch(moving={"latest": MovingMode.ANY_TRUSTED}).model_dump(mode="json")],
    }
    summary = import_trust(store, json.dumps(document), "json")
    assert (summary.appended, summary.conflicts) == (("ghcr.io/org/app:latest",), ())


def test_watch_settings_are_read_once_per_repository() -> None:
    store = moving_store()
    reads: list[str] = []
    real = store.get_watch_settings

    def counted(image: str) -> WatchSettings | None:
        reads.append(image)
        return real(image)

    store.get_watch_settings = counted  # type: ignore[method-assign]
    rows = [trusted(str(number), "a") for number in range(5)] + [trusted("1.0", "b", repository="org/other")]
    assert len(import_trust(store, as_json(*rows), "json").created) == 6
    assert reads == ["ghcr.io/org/app", "ghcr.io/org/other"]
