"""JSON-file trust and state stores for people without AWS, with the same rules as the DynamoDB tables.

Trust file: {"schema_version": 1, "trusted": [...], "history": [...], "watch": [...]}; state file:
{"schema_version": 1, "tags": [...]}. A missing file is an empty store (created on the first write).

Every change is a read-modify-write under an exclusive `fcntl.flock` on a sidecar `.NAME.lock` file (the data
file itself is replaced on each write, so a lock on it would guard an inode that is gone), and every write goes
to a temporary file in the same directory that is fsynced, renamed over the original (os.replace) and made
durable by an fsync of the directory: concurrent recorders lose nothing and a crash never leaves half a file.
A symlinked store file is followed: the file it points to is replaced and the link stays a link.

The record rules (same digest is a no-op, conflict unless replaced or moving) are decided by
`audit.record_rules.decide_record`; this store only performs the write the decision asks for.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import stat
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, Final, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from audit.errors import AuditError, StoreError
from audit.models import Digest, RecordOutcome, utcnow
from audit.ports import LeaseClaim
from audit.record_rules import check_record_request, decide_record
from audit.records import TagState, TrustedImage, TrustSnapshot, WatchSettings
from audit.untrusted import printable

SCHEMA_VERSION: Final = 1

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
    except RecursionError:
        raise StoreError(f"{path} is not a store file: its JSON is nested too deeply", hint=restore) from None
    except ValueError as exc:  # e.g. an integer longer than Python's 4300-digit limit
        raise StoreError(f"{path} is not valid JSON ({exc})", hint=restore) from None
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        location = ".".join(str(part) for part in first["loc"]) or "document"
        raise StoreError(f"{path} is malformed at {location}: {first['msg']}", hint=restore) from None
    except AuditError as exc:  # Digest and reference validators raise these instead of ValueError
        raise StoreError(f"{path} is malformed: {exc.message}", hint=restore) from None


def real_path(path: Path) -> Path:
    """The file a store path stands for: symlinks followed, so a write replaces the target, not the link."""
    return Path(os.path.realpath(path))


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock for a read-modify-write of the store file `path` (blocks while another holds it).

    The lock is `fcntl.flock` on a sidecar `.NAME.lock` next to the real file, which is left in place: the data
    file is replaced by every write, so locking it would lock an inode that the next rename throws away. Locks
    are per open file: a process must not take the lock it already holds (it would wait for itself).
    """
    real = real_path(path)
    lock_path = real.with_name(f".{real.name}.lock")
    try:
        descriptor = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise StoreError(
            f"cannot write {path}: cannot open its lock file {lock_path}: {exc.strerror or exc}",
            hint="check that the directory exists and is writable",
        ) from None
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)  # closing the descriptor releases the lock


def write_atomically(path: Path, text: str) -> None:
    """Write via a fsynced temporary file in the same directory and os.replace, keeping the file mode.

    Symlinks are followed (the target is replaced); the directory is fsynced so the rename survives a crash.
    """
    path = real_path(path)
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
        _fsync_directory(path.parent)
    except OSError as exc:
        raise StoreError(
            f"cannot write {path}: {exc.strerror or exc}",
            hint="check that the directory exists and is writable",
        ) from None
    finally:
        if temporary is not None:
            Path(temporary).unlink(missing_ok=True)


def _fsync_directory(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _dump(document: BaseModel) -> str:
    return json.dumps(document.model_dump(mode="json", exclude_none=True), indent=2, ensure_ascii=False) + "\n"


# --- the stores --------------------------------------------------------------------------------------------


@dataclass
class _TrustContents:
    """A trust file being read or changed, indexed so that a batch of 100k records stays linear."""

    trusted: dict[tuple[str, str], TrustedImage]
    history: list[HistoryRecord]
    watch: dict[str, WatchSettings]
    changed: bool = field(default=False)

    def document(self) -> TrustDocument:
        return TrustDocument(
            schema_version=SCHEMA_VERSION,
            trusted=tuple(self.trusted[key] for key in sorted(self.trusted)),
            history=tuple(self.history),
            watch=tuple(self.watch[image] for image in sorted(self.watch)),
        )


class FileTrustStore:
    """ports.TrustReader and ports.TrustRecorder on one JSON file; every call reads the file afresh, so edits by
    hand are seen.

    Each write is a locked read-modify-write of the whole file. Inside `with store.batch():` the file is read
    once under the lock, every write changes that copy, and the file is written once at the end (or not at
    all when the block raises): an import is one write, all or nothing.
    """

    def __init__(self, path: Path, *, clock: Callable[[], datetime] = utcnow) -> None:
        self.path = path
        self._clock = clock
        self._batch: _TrustContents | None = None

    def _read(self) -> _TrustContents:
        document = _read_document(self.path, TrustDocument, _TRUST_SHAPE) or TrustDocument(
            schema_version=SCHEMA_VERSION
        )
        trusted: dict[tuple[str, str], TrustedImage] = {}
        for record in document.trusted:
            if (record.image, record.tag) in trusted:
                raise StoreError(
                    f'{self.path} lists {record.ref.familiar} twice under "trusted"',
                    hint='keep one current record per tag; move the other to "history"',
                )
            trusted[record.image, record.tag] = record
        watch: dict[str, WatchSettings] = {}
        for settings in document.watch:
            if settings.image in watch:
                raise StoreError(f"{self.path} lists the watch settings of {settings.image} twice", hint="merge them")
            watch[settings.image] = settings
        return _TrustContents(trusted, list(document.history), watch)

    def _contents(self) -> _TrustContents:
        """What readers see: the batch in progress (with its pending writes), else the file as it is now."""
        return self._batch if self._batch is not None else self._read()

    def _update[R](self, change: Callable[[_TrustContents], R]) -> R:
        if self._batch is not None:
            return change(self._batch)  # written when the batch ends
        with locked(self.path):
            contents = self._read()
            result = change(contents)
            if contents.changed:
                write_atomically(self.path, _dump(contents.document()))
        return result

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Writes inside the block are made to one copy, read and written under one lock, saved once at the end."""
        if self._batch is not None:
            raise RuntimeError("FileTrustStore.batch() is not reentrant")
        with locked(self.path):
            self._batch = self._read()
            try:
                yield
                if self._batch.changed:
                    write_atomically(self.path, _dump(self._batch.document()))
            finally:
                self._batch = None

    def load_all(self) -> list[TrustedImage]:
        contents = self._contents()
        return [contents.trusted[key] for key in sorted(contents.trusted)]

    def get(self, image: str, tag: str, *, consistent: bool = False) -> TrustedImage | None:
        return self._contents().trusted.get((image, tag))

    def history(self, image: str, tag: str) -> list[TrustedImage]:
        return [entry.to_trusted() for entry in self._contents().history if entry.image == image and entry.tag == tag]

    def digests_ever_recorded(self, image: str) -> set[Digest]:
        contents = self._contents()
        return {record.digest for record in (*contents.trusted.values(), *contents.history) if record.image == image}

    def record(self, item: TrustedImage, *, replace: bool = False, moving: bool = False) -> RecordOutcome:
        check_record_request(item, replace=replace)  # a usage error before the file is locked or read

        def change(contents: _TrustContents) -> RecordOutcome:
            decision = decide_record(contents.trusted.get((item.image, item.tag)), item, replace=replace, moving=moving)
            if decision.outcome is RecordOutcome.UNCHANGED:
                return decision.outcome
            if decision.superseded is not None:
                contents.history.append(
                    HistoryRecord.model_validate(
                        {
                            **decision.superseded.model_dump(),
                            "superseded_at": self._clock(),
                            "superseded_by": item.digest,
                        }
                    )
                )
            contents.trusted[item.image, item.tag] = item
            contents.changed = True
            return decision.outcome

        return self._update(change)

    def load_watch_settings(self) -> list[WatchSettings]:
        watch = self._contents().watch
        return [watch[image] for image in sorted(watch)]

    def load_snapshot(self) -> TrustSnapshot:
        # A file is read whole: an invalid watch entry in it is a clear StoreError naming the file (fix the file).
        contents = self._contents()
        return TrustSnapshot(
            [contents.trusted[key] for key in sorted(contents.trusted)],
            [contents.watch[image] for image in sorted(contents.watch)],
        )

    def snapshot_pages(self) -> Iterator[TrustSnapshot]:
        yield self.load_snapshot()  # one file, one page

    def get_watch_settings(self, image: str) -> WatchSettings | None:
        return self._contents().watch.get(image)

    def put_watch_settings(self, settings: WatchSettings) -> None:
        def change(contents: _TrustContents) -> None:
            contents.watch[settings.image] = settings
            contents.changed = True

        self._update(change)


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
        with locked(self.path):  # another run saving at the same time must not lose our states (or we theirs)
            states = self.load_all()
            for state in changed:
                states[state.key] = state
            ordered = tuple(states[key] for key in sorted(states))
            write_atomically(self.path, _dump(StateDocument(schema_version=SCHEMA_VERSION, tags=ordered)))


class FileRunLease:
    """ports.RunLease for a local state file: an exclusive `flock` on `<state file>.lease`, held for the run.

    The kernel drops the lock when the holding process ends, however it ends, so a file lease never goes
    stale and needs no expiry; the file itself only tells the next run who holds it.
    """

    def __init__(self, state_path: Path) -> None:
        self.path = state_path.with_name(state_path.name + ".lease")
        self._handle: IO[str] | None = None
        self._owner: str | None = None

    def acquire(self, owner: str) -> LeaseClaim:
        try:
            handle = self.path.open("a+", encoding="utf-8")
        except OSError as exc:
            raise StoreError(
                f"cannot open the run lease {self.path}: {exc.strerror or exc}",
                hint="the directory of --state-file must be writable",
            ) from None
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read(512).strip() or "another run"
            handle.close()
            return LeaseClaim(acquired=False, holder=printable(holder, max_chars=200))
        handle.seek(0)
        handle.truncate()
        handle.write(f"run {owner} (pid {os.getpid()}) since {utcnow():%Y-%m-%dT%H:%M:%SZ}\n")
        handle.flush()
        self._handle, self._owner = handle, owner
        return LeaseClaim(acquired=True, holder=owner)

    def renew(self, owner: str) -> bool:
        return self._handle is not None and self._owner == owner

    def release(self, owner: str) -> None:
        if self._handle is None or self._owner != owner:
            return
        handle, self._handle, self._owner = self._handle, None, None
        with contextlib.suppress(OSError):
            handle.truncate(0)
        handle.close()  # closing the descriptor drops the lock
