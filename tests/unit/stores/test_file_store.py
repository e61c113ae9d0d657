"""What only the JSON-file stores do: the file format, atomic writes, and clear errors about broken files."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from audit.adapters.file_store import FileStateStore, FileTrustStore
from audit.errors import StoreError
from audit.models import RecordOutcome
from tests.support.store_builders import IMAGE, RECORDED_AT, digest, moving_watch, state, trusted


@pytest.fixture
def trust_path(tmp_path: Path) -> Path:
    return tmp_path / "trusted.json"


@pytest.fixture
def state_path(tmp_path: Path) -> Path:
    return tmp_path / "state.json"


def leftovers(directory: Path) -> list[str]:
    return sorted(path.name for path in directory.iterdir() if path.name.endswith(".tmp"))


# --- format ------------------------------------------------------------------------------------------------


def test_reading_a_missing_file_creates_nothing(trust_path: Path, state_path: Path) -> None:
    assert FileTrustStore(trust_path).load_all() == []
    assert FileTrustStore(trust_path).get_watch_settings(IMAGE) is None
    assert FileStateStore(state_path).load_all() == {}
    FileStateStore(state_path).save([])
    assert not trust_path.exists()
    assert not state_path.exists()


def test_the_trust_file_is_the_documented_document(trust_path: Path) -> None:
    store = FileTrustStore(trust_path, clock=lambda: RECORDED_AT)
    store.record(trusted("2.0", "b"))
    store.record(trusted("1.0", "a"))
    store.record(trusted("1.0", "c", reason="rebuild"), replace=True)
    store.put_watch_settings(moving_watch())
    document = json.loads(trust_path.read_text(encoding="utf-8"))
    assert document["schema_version"] == 1
    assert [entry["tag"] for entry in document["trusted"]] == ["1.0", "2.0"]  # sorted for readable diffs
    assert document["trusted"][0]["digest"] == str(digest("c"))
    assert "platforms" not in document["trusted"][0]  # absent values are left out
    assert document["history"] == [
        {
            **trusted("1.0", "a").model_dump(mode="json", exclude_none=True),
            "superseded_at": "2024-05-01T12:00:00.123456Z",
            "superseded_by": str(digest("c")),
        }
    ]
    assert document["watch"] == [moving_watch().model_dump(mode="json")]
    assert trust_path.read_text(encoding="utf-8").endswith("}\n")


def test_the_state_file_is_the_documented_document(state_path: Path) -> None:
    FileStateStore(state_path).save([state("2.0"), state("1.0")])
    document = json.loads(state_path.read_text(encoding="utf-8"))
    assert set(document) == {"schema_version", "tags"}
    assert [entry["tag"] for entry in document["tags"]] == ["1.0", "2.0"]


def test_a_hand_written_minimal_file_is_accepted(trust_path: Path) -> None:
    record = trusted()
    trust_path.write_text(
        json.dumps({"schema_version": 1, "trusted": [record.model_dump(mode="json")]}), encoding="utf-8"
    )
    store = FileTrustStore(trust_path)
    assert store.load_all() == [record]
    assert store.history(IMAGE, "1.0") == []
    assert store.load_watch_settings() == []


def test_every_call_reads_the_file_afresh(trust_path: Path) -> None:
    store = FileTrustStore(trust_path)
    store.record(trusted("1.0", "a"))
    FileTrustStore(trust_path).record(trusted("1.0", "b", reason="elsewhere"), replace=True)
    assert store.get(IMAGE, "1.0") == trusted("1.0", "b", reason="elsewhere")


def test_unchanged_does_not_rewrite_the_file(trust_path: Path) -> None:
    store = FileTrustStore(trust_path)
    store.record(trusted())
    before = trust_path.stat()
    assert store.record(trusted(minutes=5)) is RecordOutcome.UNCHANGED
    after = trust_path.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


# --- atomic writes -----------------------------------------------------------------------------------------


def test_writes_replace_the_file_and_leave_no_temporary_files(trust_path: Path) -> None:
    store = FileTrustStore(trust_path)
    store.record(trusted("1.0"))
    first_inode = trust_path.stat().st_ino
    store.record(trusted("2.0"))
    assert trust_path.stat().st_ino != first_inode  # a new file was renamed over the old one
    assert leftovers(trust_path.parent) == []


def test_a_failed_write_keeps_the_old_file_and_cleans_up(trust_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = FileTrustStore(trust_path)
    store.record(trusted("1.0"))
    original = trust_path.read_bytes()

    def refuse(source: object, target: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(StoreError, match=r"cannot write .*trusted\.json: No space left on device"):
        store.record(trusted("2.0"))
    assert trust_path.read_bytes() == original
    assert leftovers(trust_path.parent) == []


def test_the_file_mode_is_kept(trust_path: Path) -> None:
    store = FileTrustStore(trust_path)
    store.record(trusted("1.0"))
    assert stat.S_IMODE(trust_path.stat().st_mode) == 0o644
    os.chmod(trust_path, 0o600)  # noqa: PTH101
    store.record(trusted("2.0"))
    assert stat.S_IMODE(trust_path.stat().st_mode) == 0o600


def test_a_missing_directory_is_a_store_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="cannot write") as caught:
        FileStateStore(tmp_path / "missing" / "state.json").save([state()])
    assert "directory exists" in caught.value.hint


def test_a_batch_is_written_once_at_the_end(trust_path: Path) -> None:
    store = FileTrustStore(trust_path)
    store.record(trusted("0.1"))
    before = trust_path.stat()
    with store.batch():
        store.put_watch_settings(moving_watch())
        for number in range(50):
            store.record(trusted(f"1.{number}"))
        assert store.get(IMAGE, "1.49") == trusted("1.49")  # reads inside see the pending writes
        assert trust_path.stat().st_ino == before.st_ino  # nothing written yet
    assert len(FileTrustStore(trust_path).load_all()) == 51
    assert FileTrustStore(trust_path).get_watch_settings(IMAGE) == moving_watch()


def test_a_batch_that_raises_writes_nothing(trust_path: Path) -> None:
    store = FileTrustStore(trust_path)
    store.record(trusted("0.1"))
    original = trust_path.read_bytes()
    with pytest.raises(StoreError, match="refusing"), store.batch():
        store.record(trusted("1.0"))
        raise StoreError("refusing")
    assert trust_path.read_bytes() == original
    assert store.get(IMAGE, "1.0") is None


# --- broken files ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"{not json", r"is not valid JSON \(line 1, column 2"),
        (b"", "is not valid JSON"),
        (b"\xff\xfe", "is not UTF-8"),
        (b"[]", "is malformed at document"),
        (b'{"trusted": []}', "is malformed at schema_version"),
        (b'{"schema_version": 2}', "is malformed at schema_version"),
        (b'{"schema_version": 1, "surprise": 1}', "is malformed at surprise"),
        (b'{"schema_version": 1, "trusted": [{"tag": "1.0"}]}', r"is malformed at trusted\.0\.registry"),
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        (b'{"schema_version": ' + b"1" * 5000 + b"}", "is not valid JSON"),
    ],
)
def test_a_broken_trust_file_is_a_store_error_naming_it(trust_path: Path, content: bytes, expected: str) -> None:
    trust_path.write_bytes(content)
    with pytest.raises(StoreError, match=expected) as caught:
        FileTrustStore(trust_path).load_all()
    assert str(trust_path) in caught.value.message
    assert "schema_version" in caught.value.hint
    assert "restore" in caught.value.hint


def test_an_invalid_digest_in_the_file_is_a_store_error(trust_path: Path) -> None:
    record = trusted().model_dump(mode="json")
    record["digest"] = "sha256:abc"
    trust_path.write_text(json.dumps({"schema_version": 1, "trusted": [record]}), encoding="utf-8")
    with pytest.raises(StoreError, match="is malformed: invalid digest"):
        FileTrustStore(trust_path).get(IMAGE, "1.0")


def test_a_tag_listed_twice_is_a_store_error(trust_path: Path) -> None:
    records = [trusted("1.0", "a").model_dump(mode="json"), trusted("1.0", "b").model_dump(mode="json")]
    trust_path.write_text(json.dumps({"schema_version": 1, "trusted": records}), encoding="utf-8")
    with pytest.raises(StoreError, match=r"lists ghcr\.io/org/app:1\.0 twice") as caught:
        FileTrustStore(trust_path).load_all()
    assert "history" in caught.value.hint


def test_watch_settings_listed_twice_are_a_store_error(trust_path: Path) -> None:
    entry = moving_watch().model_dump(mode="json")
    trust_path.write_text(json.dumps({"schema_version": 1, "watch": [entry, entry]}), encoding="utf-8")
    with pytest.raises(StoreError, match="twice"):
        FileTrustStore(trust_path).load_watch_settings()


def test_a_directory_instead_of_a_file_is_a_store_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="cannot read") as caught:
        FileTrustStore(tmp_path).load_all()
    assert "permissions" in caught.value.hint


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"nope", "is not valid JSON"),
        (b'{"schema_version": 1, "tags": [{"tag": "1.0"}]}', r"malformed at tags\.0\.registry"),
        (b'{"schema_version": 1, "tags": ' + b"[" * 100_000, "nested too deeply"),
    ],
)
def test_a_broken_state_file_is_a_store_error_naming_it(state_path: Path, content: bytes, expected: str) -> None:
    state_path.write_bytes(content)
    with pytest.raises(StoreError, match=expected) as caught:
        FileStateStore(state_path).load_all()
    assert str(state_path) in caught.value.message
    assert '"tags"' in caught.value.hint
    with pytest.raises(StoreError):
        FileStateStore(state_path).save([state()])  # never overwrite a file we could not read
    assert state_path.read_bytes() == content


def test_a_state_listed_twice_is_a_store_error(state_path: Path) -> None:
    entry = state().model_dump(mode="json")
    state_path.write_text(json.dumps({"schema_version": 1, "tags": [entry, entry]}), encoding="utf-8")
    with pytest.raises(StoreError, match="twice"):
        FileStateStore(state_path).load_all()
