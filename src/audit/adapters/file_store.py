"""JSON-file trust and state stores for people without AWS, with the same rules as the DynamoDB tables.

Trust file: {"schema_version": 1, "trusted": [...], "history": [...], "watch": [...]}; state file:
{"schema_version": 1, "tags": [...]}. A missing file is an empty store (created on the first write); every
write goes to a temporary file in the same directory that then replaces the original (os.replace), so a
crash never leaves half a file. There is no locking: two processes writing one file at once is not supported.

The record rules shared with the DynamoDB store (reason required for a replace, the conflict and race errors)
live here too, so that both backends say exactly the same thing.
"""

from __future__ import annotations

import json
import os
import stat
import tempfile
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Final, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from audit.errors import AuditError, StoreError, TrustConflictError, UsageError
from audit.models import Digest, RecordOutcome, TagState, TrustedImage, TrustSnapshot, WatchSettings, utcnow

SCHEMA_VERSION: Final = 1

# --- record rules shared by every TrustStore ---------------------------------------------------------------


def check_record_request(item: TrustedImage, *, replace: bool) -> None:
    """A replace must say why: the reason is kept with the new record as evidence."""
    if replace and not (item.reason and item.reason.strip()):
        raise UsageError(
            f"replacing the trusted digest of {item.ref.familiar} needs a reason",
            hint="pass --replace --reason TEXT (e.g. the ticket of the re-release); the old record is kept",
        )


def trust_conflict_error(current: TrustedImage, item: TrustedImage) -> TrustConflictError:
    return TrustConflictError(
        f"{item.ref.familiar} is already trusted as {current.digest} "
        f"(recorded {current.recorded_at:%Y-%m-%d} from {current.source}); refusing to trust {item.digest}"
    )


def concurrent_change_error(item: TrustedImage, *, expected: Digest | None, now: Digest | None) -> TrustConflictError:
    """Another recorder changed the tag between our read and our conditional write; nothing was written."""
    before = f"was {expected}" if expected is not None else "was not recorded"
    after = f", now {now}" if now is not None else ""
    return TrustConflictError(
        f"{item.ref.familiar} changed while recording {item.digest} ({before}{after}); nothing was written",
        hint="another recorder wrote this tag at the same time; re-run to see the current record",
    )


# --- documents ---------------------------------------------------------------------------------------------


class _Document(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class HistoryRecord(TrustedImage):
    """A record that was replaced or moved, with when and by which digest."""

    superseded_at: datetime | None = None
    superseded_by: Digest | None = None

    def to_trusted(self) -> TrustedImage:
        return TrustedImage.model_validate(self.model_dump(exclude={"superseded_at", "superseded_by"}))


class TrustDocument(_Document):
    schema_version: Literal[1]
    trusted: tuple[TrustedImage, ...] = ()
    history: tuple[HistoryRecord, ...] = ()
    watch: tuple[WatchSettings, ...] = ()


class StateDocument(_Document):
    schema_version: Literal[1]
    tags: tuple[TagState, ...] = ()


_TRUST_SHAPE = '{"schema_version": 1, "trusted": [...], "history": [...], "watch": [...]}'
_STATE_SHAPE = '{"schema_version": 1, "tags": [...]}'


def _read_document[D: (TrustDocument, StateDocument)](path: Path, model: type[D], shape: str) -> D | None:
    """The parsed file, or None when it does not exist yet."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StoreError(
            f"cannot read {path}: {exc.strerror or exc}", hint="check the path and its permissions"
        ) from None
    restore = f"it must hold {shape}; fix it or restore it from version control (delete it to start empty)"
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise StoreError(f"{path} is not UTF-8 text", hint=restore) from None
    except json.JSONDecodeError as exc:
        raise StoreError(
            f"{path} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})", hint=restore
        ) from None
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        location = ".".join(str(part) for part in first["loc"]) or "document"
        raise StoreError(f"{path} is malformed at {location}: {first['msg']}", hint=restore) from None
    except AuditError as exc:  # Digest and reference validators raise these instead of ValueError
        raise StoreError(f"{path} is malformed: {exc.message}", hint=restore) from None


def write_atomically(path: Path, text: str) -> None:
    """Write via a temporary file in the same directory and os.replace, keeping the file mode."""
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        mode = 0o644
    except OSError as exc:
        raise StoreError(
            f"cannot write {path}: {exc.strerror or exc}", hint="check the path and its permissions"
        ) from None
    temporary: str | None = None
    try:
        descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, mode)  # noqa: PTH101 - the temporary file is a plain str path from mkstemp
        os.replace(temporary, path)  # noqa: PTH105 - os.replace is the documented atomic rename
        temporary = None
    except OSError as exc:
        raise StoreError(
            f"cannot write {path}: {exc.strerror or exc}",
            hint="check that the directory exists and is writable",
        ) from None
    finally:
        if temporary is not None:
            Path(temporary).unlink(missing_ok=True)


def _dump(document: BaseModel) -> str:
    return json.dumps(document.model_dump(mode="json", exclude_none=True), indent=2, ensure_ascii=False) + "\n"


# --- the stores --------------------------------------------------------------------------------------------


class FileTrustStore:
    """ports.TrustStore on one JSON file; every call reads the file afresh, so edits by hand are seen."""

    def __init__(self, path: Path, *, clock: Callable[[], datetime] = utcnow) -> None:
        self.path = path
        self._clock = clock

    def _load(self) -> TrustDocument:
        document = _read_document(self.path, TrustDocument, _TRUST_SHAPE) or TrustDocument(
            schema_version=SCHEMA_VERSION
        )
        seen: set[tuple[str, str]] = set()
        for record in document.trusted:
            if (record.image, record.tag) in seen:
                raise StoreError(
                    f'{self.path} lists {record.ref.familiar} twice under "trusted"',
                    hint='keep one current record per tag; move the other to "history"',
                )
            seen.add((record.image, record.tag))
        watched: set[str] = set()
        for settings in document.watch:
            if settings.image in watched:
                raise StoreError(f"{self.path} lists the watch settings of {settings.image} twice", hint="merge them")
            watched.add(settings.image)
        return document

    def _save(self, document: TrustDocument) -> None:
        ordered = document.model_copy(
            update={
                "trusted": tuple(sorted(document.trusted, key=lambda record: (record.image, record.tag))),
                "watch": tuple(sorted(document.watch, key=lambda settings: settings.image)),
            }
        )
        write_atomically(self.path, _dump(ordered))

    def load_all(self) -> list[TrustedImage]:
        return sorted(self._load().trusted, key=lambda record: (record.image, record.tag))

    def get(self, image: str, tag: str, *, consistent: bool = False) -> TrustedImage | None:
        return _find(self._load().trusted, image, tag)

    def history(self, image: str, tag: str) -> list[TrustedImage]:
        return [entry.to_trusted() for entry in self._load().history if entry.image == image and entry.tag == tag]

    def digests_ever_recorded(self, image: str) -> set[Digest]:
        document = self._load()
        return {record.digest for record in (*document.trusted, *document.history) if record.image == image}

    def record(self, item: TrustedImage, *, replace: bool = False, moving: bool = False) -> RecordOutcome:
        check_record_request(item, replace=replace)
        document = self._load()
        current = _find(document.trusted, item.image, item.tag)
        if current is None:
            self._save(document.model_copy(update={"trusted": (*document.trusted, item)}))
            return RecordOutcome.CREATED
        if current.digest == item.digest:
            return RecordOutcome.UNCHANGED
        if not (replace or moving):
            raise trust_conflict_error(current, item)
        superseded = HistoryRecord.model_validate(
            {**current.model_dump(), "superseded_at": self._clock(), "superseded_by": item.digest}
        )
        trusted = tuple(item if record is current else record for record in document.trusted)
        self._save(document.model_copy(update={"trusted": trusted, "history": (*document.history, superseded)}))
        return RecordOutcome.REPLACED if replace else RecordOutcome.APPENDED

    def load_watch_settings(self) -> list[WatchSettings]:
        return sorted(self._load().watch, key=lambda settings: settings.image)

    def load_snapshot(self) -> TrustSnapshot:
        # A file is read whole: an invalid watch entry in it is a clear StoreError naming the file (fix the file).
        document = self._load()
        return TrustSnapshot(
            sorted(document.trusted, key=lambda record: (record.image, record.tag)),
            sorted(document.watch, key=lambda settings: settings.image),
        )

    def snapshot_pages(self) -> Iterator[TrustSnapshot]:
        yield self.load_snapshot()  # one file, one page

    def get_watch_settings(self, image: str) -> WatchSettings | None:
        return next((settings for settings in self._load().watch if settings.image == image), None)

    def put_watch_settings(self, settings: WatchSettings) -> None:
        document = self._load()
        others = tuple(entry for entry in document.watch if entry.image != settings.image)
        self._save(document.model_copy(update={"watch": (*others, settings)}))


def _find(records: Sequence[TrustedImage], image: str, tag: str) -> TrustedImage | None:
    return next((record for record in records if record.image == image and record.tag == tag), None)


class FileStateStore:
    """ports.StateStore on one JSON file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load_all(self) -> dict[tuple[str, str], TagState]:
        document = _read_document(self.path, StateDocument, _STATE_SHAPE)
        if document is None:
            return {}
        states: dict[tuple[str, str], TagState] = {}
        for state in document.tags:
            if state.key in states:
                raise StoreError(
                    f"{self.path} lists the state of {state.image}:{state.tag} twice",
                    hint="delete one of them (or the whole file: the next run rebuilds it)",
                )
            states[state.key] = state
        return states

    def save(self, changed: Sequence[TagState]) -> None:
        if not changed:
            return
        states = self.load_all()
        for state in changed:
            states[state.key] = state
        ordered = tuple(states[key] for key in sorted(states))
        write_atomically(self.path, _dump(StateDocument(schema_version=SCHEMA_VERSION, tags=ordered)))
