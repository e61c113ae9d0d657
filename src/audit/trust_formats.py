"""Import and export of trust records as CSV or JSON: back-fill digests from CI history, or change stores.

Both formats carry the fields of TrustedImage: registry, repository, tag, digest, platforms (a JSON object
in CSV), media_type, source, commit, recorded_at (ISO 8601 with a time zone), recorded_by, reason. Empty
optional values mean "none". CSV holds the current records only; JSON is {"schema_version": 1, "trusted":
[...], "history": [...], "watch": [...]}, a valid `--trust-file`; watch settings travel with it, so moving
between backends keeps moving tags and ignore patterns. Import goes through `TrustRecorder.record` without replace:
a row whose tag is trusted with another digest is reported as a conflict and never replaces anything.
Import reads "trusted" only (history in the input is counted, not imported), and validates all input first.

Input is untrusted: a CSV is streamed twice (validate every row keeping only tag names, then write), with at
most `max_rows` records on lines of at most MAX_LINE_BYTES, so a huge or hostile file is refused at its first
bad line with memory bounded by `max_rows`; a JSON file is read whole, at most JSON_BYTES_PER_RECORD per record.
A store that can batch (the trust file) is written once, all or nothing; DynamoDB is written record by record,
so an import that stops half-way leaves the records before the failure, and running it again is safe (the same
digest again is "unchanged"). CSV cells are written with `untrusted.csv_cell`, so a spreadsheet never runs a
formula; import reads that form back (one leading `'` before `= + - @ '`, tab, CR or LF is dropped; `\\\\` is
one backslash). Text with control or format characters is refused on import.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO, Protocol, runtime_checkable

from pydantic import ValidationError

from audit.errors import AuditError, TrustConflictError, UsageError
from audit.models import Digest, ImageRef, RecordOutcome, TrustedImage, WatchSettings
from audit.packages import is_package_registry, package_key
from audit.ports import TrustReader, TrustRecorder
from audit.reference import normalise_registry
from audit.untrusted import csv_cell, has_unsafe_characters, printable

TRUST_FIELDS = (
    "registry",
    "repository",
    "tag",
    "digest",
    "platforms",
    "media_type",
    "source",
    "commit",
    "recorded_at",
    "recorded_by",
    "reason",
)
REQUIRED_FIELDS = frozenset({"registry", "repository", "tag", "digest", "source", "recorded_at"})
FORMATS = ("csv", "json")
_OPTIONAL_TEXT = ("media_type", "commit", "recorded_by", "reason")
_JSON_KEYS = frozenset({"schema_version", "trusted", "history", "watch"})

#: Records one import may hold; a back-fill of CI history is thousands, so this stops runaway input early.
DEFAULT_MAX_ROWS = 200_000
#: Longest physical CSV line; a record is a few hundred bytes, platforms of a large index a few thousand.
MAX_LINE_BYTES = 64 * 1024
#: Bytes a JSON import may use per allowed record (an index with dozens of platforms stays well below).
JSON_BYTES_PER_RECORD = 4096
#: What `csv_cell` puts before a cell a spreadsheet would read as a formula; import takes it off again.
_NEUTRALISED = re.compile(r"^'(?=['=+\-@\t\r\n])")


class TrustImportError(UsageError):
    """Input that cannot be imported; the message names the line (CSV) or record (JSON) and the field."""

    default_hint = (
        "each record needs registry, repository, tag, digest, source and recorded_at "
        "(e.g. 2024-05-01T12:00:00Z); `digest-audit trust export` shows the expected format"
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

    def describe(self) -> str:
        """Counts, then one line per conflict with what to do about it."""
        lines = [f"created {len(self.created)}, unchanged {len(self.unchanged)}, conflicts {len(self.conflicts)}"]
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
        return "\n".join(lines)


def _check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise UsageError(f"unknown trust format {fmt!r}", hint="use csv or json")
    return fmt


# --- export ------------------------------------------------------------------------------------------------


def _record_fields(record: TrustedImage) -> dict[str, object]:
    return record.model_dump(mode="json", exclude_none=True)


def export_trust(store: TrustReader, fmt: str) -> str:
    """Every current record (JSON adds the history of each tag, oldest first), sorted by image and tag."""
    records = sorted(store.load_all(), key=lambda record: (record.image, record.tag))
    if _check_format(fmt) == "json":
        history = [entry for record in records for entry in store.history(record.image, record.tag)]
        document = {
            "schema_version": 1,
            "trusted": [_record_fields(record) for record in records],
            "history": [_record_fields(entry) for entry in history],
            "watch": [
                settings.model_dump(mode="json")
                for settings in sorted(store.load_watch_settings(), key=lambda item: item.image)
            ],
        }
        # ASCII only: a C1 control or bidi override in a record must not reach a terminal raw (\u009b instead).
        return json.dumps(document, indent=2) + "\n"
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=TRUST_FIELDS, lineterminator="\n")
    writer.writeheader()
    for record in records:
        row = {name: "" for name in TRUST_FIELDS}
        for name, value in _record_fields(record).items():
            row[name] = _to_csv_cell(json.dumps(value, sort_keys=True) if name == "platforms" else str(value))
        writer.writerow(row)
    return buffer.getvalue()


# --- import ------------------------------------------------------------------------------------------------


def _to_csv_cell(text: str) -> str:
    """`csv_cell`, plus a `'` before a value that itself starts with `'`, so import can take exactly one off."""
    cell = csv_cell(text)
    return "'" + cell if text.startswith("'") else cell


def _from_csv_cell(cell: str) -> str:
    """The value `_to_csv_cell` wrote: the leading `'` it added dropped, `\\\\` back to one backslash."""
    cell = _NEUTRALISED.sub("", cell, count=1)
    return cell.replace("\\\\", "\\") if "\\\\" in cell else cell


@runtime_checkable
class _BatchingStore(Protocol):
    """A store that can collect writes and make them at once (the trust file): import is then all or nothing."""

    def batch(self) -> AbstractContextManager[None]: ...


Opener = Callable[[], AbstractContextManager[BinaryIO]]


def import_trust(store: TrustRecorder, text: str, fmt: str, *, max_rows: int = DEFAULT_MAX_ROWS) -> ImportSummary:
    """Import records given as text (see `import_trust_file` for files, which are streamed)."""
    data = text.encode("utf-8", errors="surrogatepass")
    return _import(store, lambda: nullcontext(io.BytesIO(data)), fmt, max_rows=max_rows)


def import_trust_file(store: TrustRecorder, path: Path, fmt: str, *, max_rows: int = DEFAULT_MAX_ROWS) -> ImportSummary:
    """Import a CSV or JSON file; errors name the file, the line (CSV) or record (JSON) and the field."""

    def open_input() -> AbstractContextManager[BinaryIO]:
        try:
            return path.open("rb")
        except OSError as exc:
            raise UsageError(f"cannot read {path}: {exc.strerror or exc}", hint="check the path") from None

    try:
        return _import(store, open_input, fmt, max_rows=max_rows)
    except TrustImportError as exc:
        raise TrustImportError(f"{path}: {exc.message}", hint=exc.hint) from None


def _import(store: TrustRecorder, open_input: Opener, fmt: str, *, max_rows: int) -> ImportSummary:
    """Validate every record first, then record each one; conflicts are listed, never replaced."""
    watch: list[WatchSettings] = []
    if _check_format(fmt) == "csv":
        with open_input() as handle:
            _check_duplicates(_csv_records(handle, max_rows))  # pass 1: nothing is kept but the keys

        def rows() -> Iterator[tuple[str, TrustedImage]]:
            with open_input() as handle:
                yield from _csv_records(handle, max_rows)

        skipped_history = 0
        total = None
    else:
        with open_input() as handle:
            text = _read_json_text(handle, max_bytes=max_rows * JSON_BYTES_PER_RECORD)
        parsed, skipped_history = _json_records(text, max_rows)
        _check_duplicates(parsed)
        watch = _json_watch_settings(text)
        total = len(parsed)

        def rows() -> Iterator[tuple[str, TrustedImage]]:
            return iter(parsed)

    batching = isinstance(store, _BatchingStore)
    created: list[str] = []
    unchanged: list[str] = []
    conflicts: list[ImportConflict] = []
    where = "the start"
    try:
        with store.batch() if isinstance(store, _BatchingStore) else nullcontext():
            # Settings first: a moving tag's policy must be known before its records are judged.
            for settings in watch:
                store.put_watch_settings(settings)
            for where, record in rows():
                reference = record.ref.familiar
                try:
                    outcome = store.record(record)
                except TrustConflictError:
                    current = store.get(record.image, record.tag, consistent=True)
                    conflicts.append(
                        ImportConflict(where, reference, current.digest if current else None, record.digest)
                    )
                    continue
                (created if outcome is RecordOutcome.CREATED else unchanged).append(reference)
            where = "the end (saving the import)"
    except AuditError as exc:
        raise _stopped(exc, where, len(created) + len(unchanged) + len(conflicts), total, batching=batching) from None
    return ImportSummary(tuple(created), tuple(unchanged), tuple(conflicts), skipped_history, len(watch))


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


def _read_json_text(handle: BinaryIO, *, max_bytes: int) -> str:
    """The whole document (JSON cannot be validated in pieces), bounded by what `max_rows` records can need."""
    data = handle.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise TrustImportError(
            f"larger than {max_bytes} bytes ({JSON_BYTES_PER_RECORD} per record of --max-rows)",
            hint="split the file, import it as CSV (streamed), or raise --max-rows N",
        )
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise TrustImportError(
            f"not UTF-8 text (byte {exc.start})", hint="save the file as UTF-8 (e.g. `iconv -f WINDOWS-1252 -t UTF-8`)"
        ) from None


def _json_watch_settings(text: str) -> list[WatchSettings]:
    data = json.loads(text)  # already validated by _json_records
    entries = data.get("watch", []) if isinstance(data, dict) else []
    if not isinstance(entries, list):
        raise TrustImportError('"watch" must be a list of watch settings')
    settings: list[WatchSettings] = []
    for number, entry in enumerate(entries, start=1):
        try:
            settings.append(WatchSettings.model_validate(entry))
        except ValidationError as exc:
            problem = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
            raise TrustImportError(
                f"watch entry {number}: {problem}",
                hint='e.g. {"registry": "ghcr.io", "repository": "org/app", "moving": {"latest": "any-trusted"}}',
            ) from None
    return settings


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


def _bounded_lines(handle: BinaryIO) -> Iterator[str]:
    """Physical lines of at most MAX_LINE_BYTES, each decoded on its own so that an error names its line."""
    number = 0
    while True:
        raw = handle.readline(MAX_LINE_BYTES + 1)
        if not raw:
            return
        number += 1
        if len(raw) > MAX_LINE_BYTES:
            raise TrustImportError(
                f"line {number}: longer than {MAX_LINE_BYTES} bytes",
                hint="one record per line, each a few hundred characters; is this the right file?",
            )
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise TrustImportError(
                f"line {number}: not UTF-8 text (byte {exc.start + 1} of the line)",
                hint="save the file as UTF-8 (e.g. `iconv -f WINDOWS-1252 -t UTF-8`)",
            ) from None
        yield line.removeprefix("\ufeff") if number == 1 else line


def _csv_records(handle: BinaryIO, max_rows: int) -> Iterator[tuple[str, TrustedImage]]:
    reader = csv.reader(_bounded_lines(handle))
    try:
        header = next(reader, None)
        if header is None:
            raise TrustImportError("line 1: the CSV input is empty; it needs a header row")
        columns = [name.strip() for name in header]
        unknown = [name for name in columns if name not in TRUST_FIELDS]
        if unknown:
            raise TrustImportError(
                f"line 1: unknown column {printable(unknown[0], max_chars=64)!r}",
                hint=f"the columns are {', '.join(TRUST_FIELDS)}",
            )
        missing = sorted(REQUIRED_FIELDS - set(columns))
        if missing:
            raise TrustImportError(f"line 1: required column {missing[0]!r} is missing")
        if len(set(columns)) != len(columns):
            raise TrustImportError("line 1: a column appears twice in the header")
        line = reader.line_num
        count = 0
        for cells in reader:
            where = f"line {line + 1}"  # where the row starts; a quoted value may span lines
            line = reader.line_num
            if not cells or all(not cell.strip() for cell in cells):
                continue
            count += 1
            if count > max_rows:
                raise TrustImportError(
                    f"{where}: more than {max_rows} records",
                    hint="split the file, or raise the limit with --max-rows N (the import holds every tag name)",
                )
            if len(cells) != len(columns):
                raise TrustImportError(f"{where}: {len(cells)} values for {len(columns)} columns")
            values: dict[str, object] = {
                name: _from_csv_cell(cell) for name, cell in zip(columns, cells, strict=True) if cell
            }
            if "platforms" in values:
                values["platforms"] = _platforms_from_csv(str(values["platforms"]), where)
            yield where, _trusted_from_values(values, where)
    except csv.Error as exc:
        raise TrustImportError(f"line {reader.line_num}: not valid CSV: {exc}") from None


def _platforms_from_csv(text: str, where: str) -> object:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        raise TrustImportError(
            f"{where}, field 'platforms': not a JSON object",
            hint='write platforms as JSON, e.g. {"linux/amd64": "sha256:..."}, or leave it empty',
        ) from None


def _json_records(text: str, max_rows: int) -> tuple[list[tuple[str, TrustedImage]], int]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise TrustImportError(f"line {exc.lineno}, column {exc.colno}: not valid JSON: {exc.msg}") from None
    except RecursionError:
        raise TrustImportError(
            "not a trust document: the JSON is nested too deeply",
            hint='use {"schema_version": 1, "trusted": [...]} as `digest-audit trust export` writes it',
        ) from None
    except ValueError as exc:  # e.g. an integer beyond Python's 4300-digit limit
        raise TrustImportError(f"not valid JSON: {exc}") from None
    skipped_history = 0
    if isinstance(data, dict):
        unknown = sorted(set(data) - _JSON_KEYS)
        if unknown:
            raise TrustImportError(
                f"unknown top-level key {unknown[0]!r}", hint='use {"schema_version": 1, "trusted": [...]}'
            )
        if data.get("schema_version", 1) != 1:
            raise TrustImportError(
                f"unsupported schema_version {data['schema_version']!r}",
                hint="this version reads schema_version 1",
            )
        history = data.get("history", [])
        skipped_history = len(history) if isinstance(history, list) else 0
        data = data.get("trusted")
    if not isinstance(data, list):
        raise TrustImportError(
            'the JSON input must be a list of records or an object with a "trusted" list',
            hint='e.g. {"schema_version": 1, "trusted": [{"registry": "ghcr.io", ...}]}',
        )
    if len(data) > max_rows:
        raise TrustImportError(
            f"{len(data)} records, more than {max_rows}",
            hint="split the file, or raise the limit with --max-rows N",
        )
    rows: list[tuple[str, TrustedImage]] = []
    for number, entry in enumerate(data, start=1):
        where = f"record {number}"
        if not isinstance(entry, dict):
            raise TrustImportError(f"{where}: not a JSON object")
        values = {str(key): value for key, value in entry.items() if value is not None and value != ""}
        rows.append((where, _trusted_from_values(values, where)))
    return rows, skipped_history


def _field_error(where: str, field: str, problem: str, hint: str | None = None) -> TrustImportError:
    return TrustImportError(f"{where}, field {field!r}: {problem}", hint=hint)


def _text_field(values: Mapping[str, object], name: str, where: str) -> str | None:
    value = values.get(name)
    if value is None:
        if name in REQUIRED_FIELDS:
            raise _field_error(where, name, "is required")
        return None
    if not isinstance(value, str):
        raise _field_error(where, name, f"must be a string, not {type(value).__name__}")
    if name in REQUIRED_FIELDS and not value.strip():
        raise _field_error(where, name, "is required")
    if not value.isprintable() and has_unsafe_characters(value):  # isprintable: a fast "nothing unsafe"
        raise _field_error(
            where,
            name,
            f"contains a control or format character: {printable(value, max_chars=80)}",
            "remove it: line breaks, escape sequences and invisible characters are not accepted in trust records",
        )
    return value


def _image_fields(values: Mapping[str, object], where: str) -> tuple[str, str, str]:
    """Registry, repository and tag, normalised as ImageRef.parse would (docker.io/nginx -> library/nginx)."""
    registry = _text_field(values, "registry", where) or ""
    repository = _text_field(values, "repository", where) or ""
    tag = _text_field(values, "tag", where) or ""
    if is_package_registry(registry):  # a Python package file (audit.packages)
        try:
            return package_key(registry, repository, tag)
        except AuditError as exc:
            raise _field_error(where, "registry", exc.message, exc.hint) from None
    try:
        host_check = ImageRef.parse(f"{registry}/x")
    except AuditError as exc:
        raise _field_error(where, "registry", exc.message, exc.hint) from None
    if host_check.registry != normalise_registry(registry):
        raise _field_error(
            where,
            "registry",
            f"{registry!r} is not a registry host",
            "e.g. ghcr.io, docker.io or localhost:5000",
        )
    if ":" in repository or "@" in repository:
        raise _field_error(where, "repository", "must not contain a tag or digest", "put the tag in the tag column")
    try:
        named = ImageRef.parse(f"{registry}/{repository}")
    except AuditError as exc:
        raise _field_error(where, "repository", exc.message, exc.hint) from None
    try:
        tagged = ImageRef.parse(f"{named.image}:{tag}")
    except AuditError as exc:
        raise _field_error(where, "tag", exc.message, exc.hint) from None
    if tagged.tag != tag or tagged.image != named.image:
        raise _field_error(where, "tag", f"invalid tag {tag!r}")
    return named.registry, named.repository, tag


def _digest_field(value: object, where: str, field: str) -> Digest:
    if value is None:
        raise _field_error(where, field, "is required")
    if not isinstance(value, str):
        raise _field_error(where, field, f"must be a string, not {type(value).__name__}")
    try:
        return Digest.parse(value)
    except AuditError as exc:
        raise _field_error(where, field, exc.message, exc.hint) from None


def _platforms_field(value: object, where: str) -> dict[str, Digest] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise _field_error(where, "platforms", "must be an object of platform -> digest")
    return {str(platform): _digest_field(digest, where, f"platforms[{platform}]") for platform, digest in value.items()}


def _timestamp_field(values: Mapping[str, object], where: str) -> datetime:
    text = _text_field(values, "recorded_at", where) or ""
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise _field_error(
            where, "recorded_at", f"{text!r} is not an ISO 8601 time", "e.g. 2024-05-01T12:00:00Z"
        ) from None
    if moment.tzinfo is None:
        raise _field_error(where, "recorded_at", f"{text!r} has no time zone", "add Z for UTC: 2024-05-01T12:00:00Z")
    return moment.astimezone(UTC)


def _trusted_from_values(values: Mapping[str, object], where: str) -> TrustedImage:
    unknown = sorted(set(values) - set(TRUST_FIELDS))
    if unknown:
        raise _field_error(
            where, unknown[0], "is not a trust record field", f"the fields are {', '.join(TRUST_FIELDS)}"
        )
    registry, repository, tag = _image_fields(values, where)
    optional = {name: _text_field(values, name, where) for name in _OPTIONAL_TEXT}
    return TrustedImage(
        registry=registry,
        repository=repository,
        tag=tag,
        digest=_digest_field(values.get("digest"), where, "digest"),
        platforms=_platforms_field(values.get("platforms"), where),
        source=_text_field(values, "source", where) or "",
        recorded_at=_timestamp_field(values, where),
        media_type=optional["media_type"],
        commit=optional["commit"],
        recorded_by=optional["recorded_by"],
        reason=optional["reason"],
    )
