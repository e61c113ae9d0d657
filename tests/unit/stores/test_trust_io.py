"""Import and export of trust records: formats, conflicts that never replace, errors naming line and field."""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from audit.adapters.file_store import FileTrustStore
from audit.app.trust_transfer import ImportConflict, export_trust, import_trust, import_trust_file
from audit.errors import StoreError, UsageError
from audit.models import Digest, MediaType, MovingMode, RecordOutcome
from audit.records import TrustedImage, TrustSnapshot, WatchSettings
from audit.trust_formats import TRUST_FIELDS, TrustImportError
from tests.support.store_builders import IMAGE, digest, full_record, trusted

HEADER = ",".join(TRUST_FIELDS)
DIGEST_A = str(digest("a"))
DIGEST_B = str(digest("b"))


@pytest.fixture
def store(tmp_path: Path) -> FileTrustStore:
    return FileTrustStore(tmp_path / "trusted.json")


def csv_row(**fields: str) -> str:
    values = {
        "registry": "ghcr.io",
        "repository": "org/app",
        "tag": "1.0",
        "digest": DIGEST_A,
        "source": "ci",
        "recorded_at": "2024-05-01T12:00:00Z",
    }
    values.update(fields)
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow([values.get(name, "") for name in TRUST_FIELDS])
    return buffer.getvalue()


def csv_text(*rows: str) -> str:
    return HEADER + "\n" + "".join(rows)


# --- export ------------------------------------------------------------------------------------------------


def test_csv_export_has_a_header_and_one_row_per_current_record(store: FileTrustStore) -> None:
    store.record(full_record("2.0"))
    store.record(trusted("1.0", "a"))
    store.record(trusted("1.0", "b", reason="rebuild"), replace=True)
    rows = list(csv.DictReader(io.StringIO(export_trust(store, "csv"))))
    assert [row["tag"] for row in rows] == ["1.0", "2.0"]
    assert rows[0]["digest"] == DIGEST_B
    assert rows[0]["platforms"] == ""
    assert json.loads(rows[1]["platforms"]) == {
        "linux/amd64": str(digest("e")),
        "linux/arm64/v8": str(digest("f")),
    }
    assert rows[1]["recorded_at"] == "2024-05-01T12:00:00.123456Z"
    assert rows[1]["reason"] == "rebuilt, see TICKET-1"  # a comma, quoted by the writer


def test_json_export_adds_the_history_and_is_a_valid_trust_file(store: FileTrustStore, tmp_path: Path) -> None:
    store.record(trusted("1.0", "a"))
    store.record(trusted("1.0", "b", reason="rebuild"), replace=True)
    text = export_trust(store, "json")
    document = json.loads(text)
    assert document["schema_version"] == 1
    assert [entry["digest"] for entry in document["trusted"]] == [DIGEST_B]
    assert [entry["digest"] for entry in document["history"]] == [DIGEST_A]
    copy = tmp_path / "copy.json"
    copy.write_text(text, encoding="utf-8")
    assert FileTrustStore(copy).load_all() == store.load_all()
    assert FileTrustStore(copy).history(IMAGE, "1.0") == [trusted("1.0", "a")]


def test_an_empty_store_exports_a_header_or_an_empty_document(store: FileTrustStore) -> None:
    assert export_trust(store, "csv") == HEADER + "\n"
    assert json.loads(export_trust(store, "json")) == {
        "schema_version": 1,
        "trusted": [],
        "history": [],
        "watch": [],
    }


def test_watch_settings_travel_with_a_json_export(store: FileTrustStore, tmp_path: Path) -> None:
    settings = WatchSettings(
        registry="ghcr.io",
        repository="org/app",
        track_new_tags=True,
        ignore=("sha-*",),
        moving={"latest": MovingMode.ANY_TRUSTED},
    )
    store.put_watch_settings(settings)
    store.record(trusted("1.0", "a"))
    text = export_trust(store, "json")
    target = FileTrustStore(tmp_path / "target.json")
    summary = import_trust(target, text, "json")
    assert summary.watch_settings == 1
    assert "watch settings of 1 repositories imported" in summary.describe()
    assert target.get_watch_settings("ghcr.io/org/app") == settings
    assert target.load_all() == store.load_all()


def test_a_malformed_watch_entry_names_itself(store: FileTrustStore) -> None:
    text = json.dumps({"schema_version": 1, "trusted": [], "watch": [{"registry": "ghcr.io", "moving": 3}]})
    with pytest.raises(TrustImportError, match="watch entry 1"):
        import_trust(store, text, "json")
    assert store.load_watch_settings() == []


@pytest.mark.parametrize("fmt", ["yaml", "CSV", ""])
def test_an_unknown_format_is_a_usage_error(store: FileTrustStore, fmt: str) -> None:
    with pytest.raises(UsageError, match="unknown trust format"):
        export_trust(store, fmt)
    with pytest.raises(UsageError, match="unknown trust format"):
        import_trust(store, "", fmt)


# --- import ------------------------------------------------------------------------------------------------


def test_import_reports_created_unchanged_and_conflicts(store: FileTrustStore) -> None:
    store.record(trusted("1.0", "a"))
    store.record(trusted("2.0", "c"))
    text = csv_text(
        csv_row(tag="1.0", digest=DIGEST_A),
        csv_row(tag="2.0", digest=DIGEST_B),
        csv_row(tag="3.0", digest=DIGEST_B, platforms=json.dumps({"linux/amd64": DIGEST_A})),
    )
    summary = import_trust(store, text, "csv")
    assert summary.created == ("ghcr.io/org/app:3.0",)
    assert summary.unchanged == ("ghcr.io/org/app:1.0",)
    assert summary.conflicts == (ImportConflict("line 3", "ghcr.io/org/app:2.0", digest("c"), digest("b")),)
    assert store.get(IMAGE, "2.0") == trusted("2.0", "c")  # the conflict replaced nothing
    assert store.history(IMAGE, "2.0") == []
    imported = store.get(IMAGE, "3.0")
    assert imported is not None and imported.platforms == {"linux/amd64": digest("a")}
    description = summary.describe()
    assert "created 1, unchanged 1, conflicts 1" in description
    assert f"conflict (line 3): ghcr.io/org/app:2.0 is trusted as {digest('c')}, not {DIGEST_B}" in description
    assert "--replace --reason" in description


def test_import_of_a_json_export_into_another_store(store: FileTrustStore, tmp_path: Path) -> None:
    store.record(full_record("2.0"))
    store.record(trusted("latest", "a"))
    store.record(trusted("latest", "b", minutes=1), moving=True)
    target = FileTrustStore(tmp_path / "other.json")
    summary = import_trust(target, export_trust(store, "json"), "json")
    assert target.load_all() == store.load_all()
    assert summary.skipped_history == 1
    assert "1 history entries in the input were not imported" in summary.describe()


def test_a_newer_export_advances_a_moving_tag_of_a_trust_file_in_one_write(
    store: FileTrustStore, tmp_path: Path
) -> None:
    """The watch settings come with the export and are written first in the same batch, then read back."""
    store.put_watch_settings(WatchSettings(registry="ghcr.io", repository="org/app", moving={"latest": "any-trusted"}))
    store.record(trusted("latest", "b", minutes=1))
    target = FileTrustStore(tmp_path / "other.json")
    target.record(trusted("latest", "a"))
    summary = import_trust(target, export_trust(store, "json"), "json")
    assert (summary.appended, summary.conflicts) == (("ghcr.io/org/app:latest",), ())
    current = target.get("ghcr.io/org/app", "latest")
    assert current is not None and current.digest == trusted("latest", "b").digest
    assert [entry.digest for entry in target.history("ghcr.io/org/app", "latest")] == [trusted("latest", "a").digest]


def test_json_import_accepts_a_plain_list(store: FileTrustStore) -> None:
    record = trusted().model_dump(mode="json")
    summary = import_trust(store, json.dumps([record, {**record, "tag": "2.0", "commit": None}]), "json")
    assert summary.created == ("ghcr.io/org/app:1.0", "ghcr.io/org/app:2.0")
    assert summary.describe().startswith("created 2, unchanged 0, conflicts 0")


def test_docker_hub_names_are_normalised(store: FileTrustStore) -> None:
    import_trust(store, csv_text(csv_row(registry="docker.io", repository="nginx", tag="1.27")), "csv")
    assert store.get("registry-1.docker.io/library/nginx", "1.27") is not None


def test_quoted_values_and_a_bom(store: FileTrustStore) -> None:
    text = "\ufeff" + csv_text(csv_row(reason='rebuilt, "quoted"'), csv_row(tag="2.0", digest="bad"))
    with pytest.raises(TrustImportError, match="line 3, field 'digest'"):
        import_trust(store, text, "csv")
    summary = import_trust(store, "\ufeff" + csv_text(csv_row(reason='rebuilt, "quoted"')), "csv")
    assert summary.created == ("ghcr.io/org/app:1.0",)
    stored = store.get(IMAGE, "1.0")
    assert stored is not None and stored.reason == 'rebuilt, "quoted"'


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("reason", "line one\nline two"),  # a quoted value spanning two lines
        ("source", "https://ci.example/run/1\x1b[2J"),
        ("commit", "abc\x9b"),  # C1 control
        ("recorded_by", "ci\u202ebot"),  # bidi override
        ("media_type", "application/json\r"),
    ],
)
def test_control_characters_in_a_field_are_refused(store: FileTrustStore, field: str, value: str) -> None:
    with pytest.raises(TrustImportError, match=f"line 2, field '{field}': contains a control or format character"):
        import_trust(store, csv_text(csv_row(**{field: value})), "csv")
    with pytest.raises(TrustImportError, match=f"record 1, field '{field}': contains a control"):
        import_trust(store, json.dumps([{**trusted().model_dump(mode="json"), field: value}]), "json")
    assert store.load_all() == []


def test_columns_may_come_in_any_order_and_optional_ones_may_be_left_out(store: FileTrustStore) -> None:
    text = (
        "recorded_at,source,digest,tag,repository,registry\n"
        f"2024-05-01T14:00:00+02:00,ci,{DIGEST_A},1.0,org/app,ghcr.io\n"
    )
    import_trust(store, text, "csv")
    stored = store.get(IMAGE, "1.0")
    assert stored is not None
    assert stored.recorded_at.isoformat() == "2024-05-01T12:00:00+00:00"  # converted to UTC


def test_blank_lines_are_skipped(store: FileTrustStore) -> None:
    summary = import_trust(store, csv_text("\n", csv_row(), "\n"), "csv")
    assert len(summary.created) == 1


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        (csv_row(digest="sha256:abc"), "line 2, field 'digest': invalid digest"),
        (csv_row(digest=""), "line 2, field 'digest': is required"),
        (csv_row(source="  "), "line 2, field 'source': is required"),
        (csv_row(tag="-bad"), "line 2, field 'tag'"),
        (csv_row(tag="1.0@" + DIGEST_A), "line 2, field 'tag'"),
        (csv_row(repository="Org/App"), "line 2, field 'repository': .*lowercase"),
        (csv_row(repository="org/app:1.0"), "line 2, field 'repository': must not contain a tag"),
        (csv_row(registry="myregistry"), "line 2, field 'registry': 'myregistry' is not a registry host"),
        (csv_row(registry="https://ghcr.io"), "line 2, field 'registry'"),
        (
            csv_row(recorded_at="yesterday"),
            "line 2, field 'recorded_at': 'yesterday' is not an ISO 8601 time",
        ),
        (csv_row(recorded_at="2024-05-01T12:00:00"), "line 2, field 'recorded_at': .* has no time zone"),
        (csv_row(platforms="linux/amd64"), "line 2, field 'platforms': not a JSON object"),
        (csv_row(media_type="application/json"), "line 2, field 'media_type': 'application/json' is not a manifest"),
        (csv_row(media_type="oci index"), "line 2, field 'media_type': 'oci index' is not a manifest media type"),
        (csv_row(platforms="[1]"), "line 2, field 'platforms': must be an object"),
        (csv_row(platforms='{"linux/amd64": "sha256:0"}'), r"line 2, field 'platforms\[linux/amd64\]'"),
        ("ghcr.io,org/app\n", "line 2: 2 values for 11 columns"),
    ],
)
def test_csv_errors_name_the_line_and_field(store: FileTrustStore, row: str, expected: str) -> None:
    with pytest.raises(TrustImportError, match=expected) as caught:
        import_trust(store, csv_text(row), "csv")
    assert caught.value.hint
    assert caught.value.exit_code == 2


def test_a_known_media_type_is_kept_and_an_empty_one_means_none(store: FileTrustStore) -> None:
    text = csv_text(
        csv_row(tag="1.0", media_type=" application/vnd.oci.image.index.v1+json "), csv_row(tag="2.0", media_type="")
    )
    import_trust(store, text, "csv")
    first, second = store.get("ghcr.io/org/app", "1.0"), store.get("ghcr.io/org/app", "2.0")
    assert first is not None and second is not None
    assert (first.media_type, second.media_type) == (MediaType.OCI_INDEX, None)


def test_an_error_on_a_later_line_writes_nothing(store: FileTrustStore) -> None:
    text = csv_text(csv_row(tag="1.0"), csv_row(tag="2.0"), csv_row(tag="3.0", digest="nope"))
    with pytest.raises(TrustImportError, match="line 4, field 'digest'"):
        import_trust(store, text, "csv")
    assert store.load_all() == []


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "line 1: the CSV input is empty"),
        ("registry,repository,tag,digest,source,recorded_at,colour\n", "line 1: unknown column 'colour'"),
        ("registry,repository,tag,digest,source\n", "line 1: required column 'recorded_at' is missing"),
        (HEADER + ",tag\n", "line 1: a column appears twice"),
    ],
)
def test_csv_header_errors(store: FileTrustStore, text: str, expected: str) -> None:
    with pytest.raises(TrustImportError, match=expected):
        import_trust(store, text, "csv")


def test_a_tag_twice_in_one_import_is_an_error_naming_both_lines(store: FileTrustStore) -> None:
    with pytest.raises(TrustImportError, match=r"line 3: ghcr.io/org/app:1.0 appears again \(first at line 2\)"):
        import_trust(store, csv_text(csv_row(), csv_row(digest=DIGEST_B)), "csv")
    assert store.load_all() == []


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        ("{", "line 1, column 2: not valid JSON"),
        ('"text"', "must be a list of records"),
        ('{"schema_version": 1}', "must be a list of records"),
        ('{"schema_version": 2, "trusted": []}', "unsupported schema_version 2"),
        ('{"trusted": [], "extra": 1}', "unknown top-level key 'extra'"),
        ("[1]", "record 1: not a JSON object"),
        ('[{"registry": "ghcr.io"}]', "record 1, field 'repository': is required"),
        (
            json.dumps([trusted().model_dump(mode="json"), {**trusted().model_dump(mode="json"), "tag": 5}]),
            "record 2, field 'tag': must be a string, not int",
        ),
        (
            json.dumps([{**trusted().model_dump(mode="json"), "colour": "red"}]),
            "record 1, field 'colour': is not a trust record field",
        ),
        (
            json.dumps([{**trusted().model_dump(mode="json"), "platforms": {"linux/amd64": 1}}]),
            r"record 1, field 'platforms\[linux/amd64\]': must be a string",
        ),
    ],
)
def test_json_errors_name_the_record_and_field(store: FileTrustStore, document: str, expected: str) -> None:
    with pytest.raises(TrustImportError, match=expected):
        import_trust(store, document, "json")
    assert store.load_all() == []


# --- hostile input: formulas, size, encoding, nesting, partial imports ----------------------------------------


@pytest.mark.parametrize(
    "value",
    ['=HYPERLINK("https://evil.example","x")', "+1+cmd|' /C calc'!A0", "-2+3", "@SUM(A1)", "'quoted", "'=x", "a\\b"],
)
def test_csv_export_neutralises_formulas_and_round_trips(store: FileTrustStore, tmp_path: Path, value: str) -> None:
    store.record(trusted("1.0", "a", source=value, reason=value, commit=value, recorded_by=value))
    text = export_trust(store, "csv")
    row = next(csv.DictReader(io.StringIO(text)))
    for field in ("source", "reason", "commit", "recorded_by"):
        assert not row[field].startswith(("=", "+", "-", "@")), row[field]
    if value.startswith(("=", "+", "-", "@")):
        assert row["source"] == "'" + value
    target = FileTrustStore(tmp_path / "copy.json")
    assert import_trust(target, text, "csv").created == ("ghcr.io/org/app:1.0",)
    assert target.load_all() == store.load_all()


def test_a_leading_quote_before_a_formula_is_dropped_on_import(store: FileTrustStore) -> None:
    import_trust(store, csv_text(csv_row(source="'=1+1", reason="'plain", commit="''x")), "csv")
    stored = store.get(IMAGE, "1.0")
    assert stored is not None
    assert (stored.source, stored.reason, stored.commit) == ("=1+1", "'plain", "'x")


def test_more_rows_than_the_limit_are_refused_at_the_first_extra_row(store: FileTrustStore) -> None:
    text = csv_text(*(csv_row(tag=f"1.{number}") for number in range(4)))
    with pytest.raises(TrustImportError, match=r"line 5: more than 3 records") as caught:
        import_trust(store, text, "csv", max_rows=3)
    assert "--max-rows" in caught.value.hint
    assert store.load_all() == []
    assert len(import_trust(store, text, "csv", max_rows=4).created) == 4
    records = [trusted(f"2.{number}").model_dump(mode="json") for number in range(3)]
    with pytest.raises(TrustImportError, match="3 records, more than 2"):
        import_trust(store, json.dumps(records), "json", max_rows=2)
    with pytest.raises(TrustImportError, match=r"larger than 8192 bytes \(4096 per record of --max-rows\)"):
        import_trust(store, json.dumps(records) + " " * 8192, "json", max_rows=2)


def test_an_overlong_line_is_refused_without_reading_on(store: FileTrustStore) -> None:
    text = csv_text(csv_row(), csv_row(tag="2.0", reason="x" * 70_000), csv_row(tag="3.0"))
    with pytest.raises(TrustImportError, match=r"line 3: longer than 65536 bytes"):
        import_trust(store, text, "csv")
    assert store.load_all() == []


def test_a_file_that_is_not_utf8_names_the_file_and_line(store: FileTrustStore, tmp_path: Path) -> None:
    path = tmp_path / "latin1.csv"
    path.write_bytes(csv_text(csv_row(), csv_row(tag="2.0", reason="caf\xe9")).encode("latin-1"))
    with pytest.raises(TrustImportError, match=rf"^{path}: line 3: not UTF-8 text") as caught:
        import_trust_file(store, path, "csv")
    assert "UTF-8" in caught.value.hint
    assert store.load_all() == []
    document = tmp_path / "latin1.json"
    document.write_bytes(b'{"trusted": [], "x": "caf\xe9"}')
    with pytest.raises(TrustImportError, match=rf"^{document}: not UTF-8 text"):
        import_trust_file(store, document, "json")


def test_a_file_is_streamed_with_its_byte_order_mark(store: FileTrustStore, tmp_path: Path) -> None:
    path = tmp_path / "excel.csv"
    path.write_bytes(b"\xef\xbb\xbf" + csv_text(csv_row(), csv_row(tag="2.0")).encode("utf-8"))
    assert len(import_trust_file(store, path, "csv").created) == 2


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
        ('{"trusted": [' + "{" * 50_000, "nested too deeply|not valid JSON"),
        ('{"schema_version": ' + "9" * 5000 + "}", "not valid JSON"),
    ],
)
def test_hostile_json_is_a_clear_error(store: FileTrustStore, document: str, expected: str) -> None:
    with pytest.raises(TrustImportError, match=expected):
        import_trust(store, document, "json")


def test_an_import_into_a_file_is_one_write(
    store: FileTrustStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.record(trusted("0.1"))
    renames: list[str] = []
    real_replace = os.replace

    def counting_replace(source: str, target: str) -> None:
        renames.append(target)
        real_replace(source, target)

    monkeypatch.setattr(os, "replace", counting_replace)
    settings = WatchSettings(registry="ghcr.io", repository="org/app", moving={"latest": MovingMode.ANY_TRUSTED})
    document = {
        "schema_version": 1,
        "trusted": [trusted(f"1.{number}").model_dump(mode="json") for number in range(20)],
        "watch": [settings.model_dump(mode="json")],
    }
    summary = import_trust(store, json.dumps(document), "json")
    assert len(summary.created) == 20
    assert len(renames) == 1
    assert len(store.load_all()) == 21


def test_a_failed_save_of_a_file_import_leaves_the_file_as_it_was(
    store: FileTrustStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.record(trusted("0.1"))
    before = store.path.read_bytes()

    def refuse(source: str, target: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(StoreError) as caught:
        import_trust(store, csv_text(csv_row(tag="1.0"), csv_row(tag="2.0")), "csv")
    assert "import stopped at the end (saving the import)" in caught.value.message
    assert "nothing was imported" in caught.value.message
    assert store.path.read_bytes() == before


class OneRecordAtATime:
    """A TrustStore that writes each record on its own, as the DynamoDB table does, and fails at one write."""

    def __init__(self, inner: FileTrustStore, fail_at: int) -> None:
        self.inner = inner
        self.fail_at = fail_at
        self.writes = 0

    def record(self, item: TrustedImage, *, replace: bool = False, moving: bool = False) -> RecordOutcome:
        self.writes += 1
        if self.writes == self.fail_at:
            raise StoreError("ProvisionedThroughputExceededException", hint="retry later")
        return self.inner.record(item, replace=replace, moving=moving)

    def load_all(self) -> list[TrustedImage]:
        return self.inner.load_all()

    def get(self, image: str, tag: str, *, consistent: bool = False) -> TrustedImage | None:
        return self.inner.get(image, tag)

    def history(self, image: str, tag: str) -> list[TrustedImage]:
        return self.inner.history(image, tag)

    def digests_ever_recorded(self, image: str) -> set[Digest]:
        return self.inner.digests_ever_recorded(image)

    def load_watch_settings(self) -> list[WatchSettings]:
        return self.inner.load_watch_settings()

    def load_snapshot(self) -> TrustSnapshot:
        return self.inner.load_snapshot()

    def snapshot_pages(self) -> Iterator[TrustSnapshot]:
        return self.inner.snapshot_pages()

    def get_watch_settings(self, image: str) -> WatchSettings | None:
        return self.inner.get_watch_settings(image)

    def put_watch_settings(self, settings: WatchSettings) -> None:
        self.inner.put_watch_settings(settings)


def test_a_partial_import_into_a_table_says_what_stays_and_running_it_again_is_safe(store: FileTrustStore) -> None:
    text = csv_text(*(csv_row(tag=f"1.{number}") for number in range(5)))
    failing = OneRecordAtATime(store, fail_at=3)
    with pytest.raises(StoreError) as caught:
        import_trust(failing, text, "csv")
    assert caught.value.message == (
        "import stopped at line 4: ProvisionedThroughputExceededException; "
        "the 2 records before it were written and stay"
    )
    assert "run the same import again: records already trusted are reported unchanged" in caught.value.hint
    assert [record.tag for record in store.load_all()] == ["1.0", "1.1"]
    again = import_trust(OneRecordAtATime(store, fail_at=0), text, "csv")
    assert (len(again.created), len(again.unchanged), again.conflicts) == (3, 2, ())


def test_an_unreadable_import_file_is_named(
    store: FileTrustStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tests run as root in CI, where chmod cannot make a file unreadable; the error is raised at open instead."""
    path = tmp_path / "secret.csv"
    path.write_text(csv_text(csv_row()), encoding="utf-8")

    def refuse(self: Path, *args: object, **kwargs: object) -> object:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "open", refuse)
    with pytest.raises(UsageError, match=rf"^cannot read {path}: Permission denied$") as caught:
        import_trust_file(store, path, "csv")
    assert caught.value.exit_code == 2
    assert not store.path.exists()
