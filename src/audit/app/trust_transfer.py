"""`trust import` and `trust export`: moving trust records between a store and a CSV or JSON document.

Import validates every record first (formats: `audit.trust_formats`), then records each by the record rules
(`audit.app.recording`) without replace: a row whose pinned tag is trusted with another digest is reported as a
conflict and never replaces anything. A tag declared moving advances to a newer row (APPENDED, as `record` does);
a row older than the moving tag's current record is listed as stale and not written, so importing an old export
never moves a tag back. It reads "trusted" only (history in the input is counted, not imported); the watch
settings of a JSON input are written first, so a moving tag's policy is known before its records are judged.
A store that can batch (the trust file) is written once, all or nothing; DynamoDB is written record by record,
so an import that stops half-way leaves the records before the failure, and running it again is safe (the same
digest again is "unchanged").
"""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from audit.app.recording import MovingTags
from audit.errors import AuditError, TrustConflictError
from audit.models import Digest, RecordOutcome
from audit.ports import TrustReader, TrustRecorder
from audit.records import TrustedImage
from audit.trust_formats import (
    DEFAULT_MAX_ROWS,
    TrustExport,
    TrustImportError,
    TrustInput,
    file_opener,
    render_export,
    text_opener,
)


@dataclass(frozen=True)
class ImportConflict:
    """A row whose tag is already trusted with another digest; nothing was written for it."""

    where: str  # "line 4" (CSV) or "record 3" (JSON)
    reference: str
    trusted_digest: Digest | None  # None when it could not be read back
    imported_digest: Digest


@dataclass(frozen=True)
class ImportSummary:
    created: tuple[str, ...] = ()
    unchanged: tuple[str, ...] = ()
    conflicts: tuple[ImportConflict, ...] = ()
    skipped_history: int = 0  # history entries in a JSON input, which import does not write
    watch_settings: int = 0  # per-repository watch settings written (JSON input only)
    appended: tuple[str, ...] = ()  # moving tags advanced to the imported (newer) digest
    stale: tuple[ImportConflict, ...] = ()  # moving-tag rows older than the tag's current record: not written

    def describe(self) -> str:
        """Counts, then one line per conflict or stale row with what to do about it."""
        counts = [f"created {len(self.created)}", f"unchanged {len(self.unchanged)}"]
        if self.appended:
            counts.append(f"moving tags advanced {len(self.appended)}")
        if self.stale:
            counts.append(f"stale {len(self.stale)}")
        lines = [", ".join([*counts, f"conflicts {len(self.conflicts)}"])]
        if self.watch_settings:
            lines.append(f"watch settings of {self.watch_settings} repositories imported")
        if self.skipped_history:
            lines.append(f"{self.skipped_history} history entries in the input were not imported")
        for conflict in self.conflicts:
            trusted = str(conflict.trusted_digest) if conflict.trusted_digest else "another digest"
            lines.append(
                f"conflict ({conflict.where}): {conflict.reference} is trusted as {trusted}, "
                f"not {conflict.imported_digest}"
            )
        if self.conflicts:
            lines.append(
                "  hint: conflicting rows were not imported; if a new digest is a legitimate re-release, "
                "record it with `digest-audit record --replace --reason TEXT`"
            )
        for row in self.stale:
            trusted = str(row.trusted_digest) if row.trusted_digest else "another digest"
            lines.append(
                f"stale ({row.where}): moving tag {row.reference} already has a newer record ({trusted}); "
                f"{row.imported_digest} was not imported"
            )
        return "\n".join(lines)


# --- export ------------------------------------------------------------------------------------------------


def trust_export(store: TrustReader) -> TrustExport:
    """Every current record and the history of each tag (oldest first), sorted by image and tag."""
    records = sorted(store.load_all(), key=lambda record: (record.image, record.tag))
    return TrustExport(
        trusted=records,
        history=[entry for record in records for entry in store.history(record.image, record.tag)],
        watch=sorted(store.load_watch_settings(), key=lambda item: item.image),
    )


def export_trust(store: TrustReader, fmt: str) -> str:
    """The export as CSV (current records) or JSON (with history and watch settings)."""
    if fmt == "csv":  # CSV carries neither history nor watch settings: do not read them
        records = sorted(store.load_all(), key=lambda record: (record.image, record.tag))
        return render_export(TrustExport(trusted=records), fmt)
    return render_export(trust_export(store), fmt)


# --- import ------------------------------------------------------------------------------------------------


@runtime_checkable
class _BatchingStore(Protocol):
    """A store that can collect writes and make them at once (the trust file): import is then all or nothing."""

    def batch(self) -> AbstractContextManager[None]: ...


def import_trust(store: TrustRecorder, text: str, fmt: str, *, max_rows: int = DEFAULT_MAX_ROWS) -> ImportSummary:
    """Import records given as text (see `import_trust_file` for files, which are streamed)."""
    return import_document(store, TrustInput(text_opener(text), fmt, max_rows=max_rows))


def import_trust_file(store: TrustRecorder, path: Path, fmt: str, *, max_rows: int = DEFAULT_MAX_ROWS) -> ImportSummary:
    """Import a CSV or JSON file; errors name the file, the line (CSV) or record (JSON) and the field."""
    try:
        return import_document(store, TrustInput(file_opener(path), fmt, max_rows=max_rows))
    except TrustImportError as exc:
        raise TrustImportError(f"{path}: {exc.message}", hint=exc.hint) from None


def import_document(store: TrustRecorder, document: TrustInput) -> ImportSummary:
    """Validate every record first, then record each one; conflicts are listed, never replaced."""
    _check_duplicates(document.records())  # pass 1: nothing is kept but the keys
    watch = document.watch_settings()
    batching = isinstance(store, _BatchingStore)
    outcomes: dict[RecordOutcome, list[str]] = {outcome: [] for outcome in RecordOutcome}
    conflicts: list[ImportConflict] = []
    stale: list[ImportConflict] = []
    where = "the start"
    try:
        with store.batch() if isinstance(store, _BatchingStore) else nullcontext():
            # Settings first: a moving tag's policy must be known before its records are judged.
            for settings in watch:
                store.put_watch_settings(settings)
            moving = MovingTags(store)
            for where, record in document.records():
                reference = record.ref.familiar
                is_moving = moving(record.image, record.tag)
                if is_moving and (newer := _newer_record(store, record)) is not None:
                    stale.append(ImportConflict(where, reference, newer.digest, record.digest))
                    continue
                try:
                    outcome = store.record(record, moving=is_moving)
                except TrustConflictError:
                    current = store.get(record.image, record.tag, consistent=True)
                    conflicts.append(
                        ImportConflict(where, reference, current.digest if current else None, record.digest)
                    )
                    continue
                outcomes[outcome].append(reference)
            where = "the end (saving the import)"
    except AuditError as exc:
        done = sum(map(len, outcomes.values())) + len(conflicts) + len(stale)
        raise _stopped(exc, where, done, document.total, batching=batching) from None
    return ImportSummary(
        created=tuple(outcomes[RecordOutcome.CREATED]),
        unchanged=tuple(outcomes[RecordOutcome.UNCHANGED]),
        conflicts=tuple(conflicts),
        skipped_history=document.skipped_history,
        watch_settings=len(watch),
        appended=tuple(outcomes[RecordOutcome.APPENDED]),
        stale=tuple(stale),
    )


def _newer_record(store: TrustRecorder, record: TrustedImage) -> TrustedImage | None:
    """The moving tag's current record when it names another digest and is not older than the imported row."""
    current = store.get(record.image, record.tag, consistent=True)
    if current is None or current.digest == record.digest or current.recorded_at < record.recorded_at:
        return None
    return current


def _stopped(exc: AuditError, where: str, done: int, total: int | None, *, batching: bool) -> AuditError:
    """The store failed half-way: say what the store holds now, and that running the import again is safe."""
    if batching:
        left = "nothing was imported (the file is written once, at the end)"
        hint = exc.hint
    else:
        of = f" of {total}" if total is not None else ""
        left = f"the {done}{of} records before it were written and stay"
        hint = "fix the cause and run the same import again: records already trusted are reported unchanged"
        if exc.hint:
            hint = f"{exc.hint}; then {hint}"
    return type(exc)(f"import stopped at {where}: {exc.message}; {left}", hint=hint)


def _check_duplicates(rows: Iterable[tuple[str, TrustedImage]]) -> None:
    # Only the tag names are kept (per repository, so each repository name is held once): a streamed pass 1.
    first_seen: dict[str, dict[str, str]] = {}
    for where, record in rows:
        tags = first_seen.setdefault(record.image, {})
        if record.tag in tags:
            raise TrustImportError(
                f"{where}: {record.ref.familiar} appears again (first at {tags[record.tag]})",
                hint="keep one record per tag; older digests belong in the history, not in the import",
            )
        tags[record.tag] = where
