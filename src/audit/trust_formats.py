"""The trust file formats, CSV and JSON: what `trust import` reads and `trust export` writes (no store here;
the import and export flows are `audit.app.trust_transfer`).

Both formats carry the fields of TrustedImage: registry, repository, tag, digest, platforms (a JSON object
in CSV), media_type, source, commit, recorded_at (ISO 8601 with a time zone), recorded_by, reason. Empty
optional values mean "none". CSV holds the current records only; JSON is {"schema_version": 1, "trusted":
[...], "history": [...], "watch": [...]}, a valid `--trust-file`; watch settings travel with it, so moving
between backends keeps moving tags and ignore patterns.

Input is untrusted: a CSV is streamed (each pass reads it again), with at most `max_rows` records on lines of at
most MAX_LINE_BYTES, so a huge or hostile file is refused at its first bad line with memory bounded by
`max_rows`; a JSON file is read whole, at most JSON_BYTES_PER_RECORD per record. CSV cells are written with
`untrusted.csv_cell`, so a spreadsheet never runs a formula; import reads that form back (one leading `'` before
`= + - @ '`, tab, CR or LF is dropped; `\\\\` is one backslash). Text with control or format characters is
refused on import.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from pydantic import ValidationError

from audit.errors import AuditError, UsageError
from audit.models import Digest, ImageRef, MediaType
from audit.packages import is_package_registry, package_key
from audit.records import TrustedImage, WatchSettings
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
_OPTIONAL_TEXT = ("commit", "recorded_by", "reason")
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


def _check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise UsageError(f"unknown trust format {fmt!r}", hint="use csv or json")
    return fmt


# --- export ------------------------------------------------------------------------------------------------


def _record_fields(record: TrustedImage) -> dict[str, object]:
    return record.model_dump(mode="json", exclude_none=True)


@dataclass(frozen=True)
class TrustExport:
    """What an export holds: current records, the history of each tag (oldest first) and the watch settings."""

    trusted: Sequence[TrustedImage]
    history: Sequence[TrustedImage] = ()
    watch: Sequence[WatchSettings] = ()


def render_export(export: TrustExport, fmt: str) -> str:
    """The export as text: JSON (a valid `--trust-file`) or CSV (current records only), in the given order."""
    if _check_format(fmt) == "json":
        document = {
            "schema_version": 1,
            "trusted": [_record_fields(record) for record in export.trusted],
            "history": [_record_fields(entry) for entry in export.history],
            "watch": [settings.model_dump(mode="json") for settings in export.watch],
        }
        # ASCII only: a C1 control or bidi override in a record must not reach a terminal raw (\u009b instead).
        return json.dumps(document, indent=2) + "\n"
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=TRUST_FIELDS, lineterminator="\n")
    writer.writeheader()
    for record in export.trusted:
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


Opener = Callable[[], AbstractContextManager[BinaryIO]]


def text_opener(text: str) -> Opener:
    """Input given as text (tests, a document already in memory)."""
    data = text.encode("utf-8", errors="surrogatepass")
    return lambda: nullcontext(io.BytesIO(data))


def file_opener(path: Path) -> Opener:
    """Input read from a file, opened again for each pass (CSV is streamed twice)."""

    def open_input() -> AbstractContextManager[BinaryIO]:
        try:
            return path.open("rb")
        except OSError as exc:
            raise UsageError(f"cannot read {path}: {exc.strerror or exc}", hint="check the path") from None

    return open_input


class TrustInput:
    """A CSV or JSON trust document being imported, each record validated as it is read.

    CSV is streamed: `records()` reads the input again from the start on each call, holding one row at a time.
    JSON is read whole (bounded by `max_rows`) and parsed when the input is opened; `total` is then known.
    Errors are TrustImportError naming the line (CSV) or record (JSON) and the field.
    """

    def __init__(self, open_input: Opener, fmt: str, *, max_rows: int = DEFAULT_MAX_ROWS) -> None:
        self._open_input = open_input
        self._max_rows = max_rows
        self._format = _check_format(fmt)
        self._json_text: str | None = None
        self._parsed: list[tuple[str, TrustedImage]] = []
        self.skipped_history = 0  # history entries in a JSON input, which import does not write
        self.total: int | None = None  # records in the input when known before writing (JSON)
        if self._format == "json":
            with open_input() as handle:
                self._json_text = _read_json_text(handle, max_bytes=max_rows * JSON_BYTES_PER_RECORD)
            self._parsed, self.skipped_history = _json_records(self._json_text, max_rows)
            self.total = len(self._parsed)

    def records(self) -> Iterator[tuple[str, TrustedImage]]:
        """(where, record) pairs in input order: "line 4" (CSV) or "record 3" (JSON)."""
        if self._json_text is not None:
            yield from self._parsed
            return
        with self._open_input() as handle:
            yield from _csv_records(handle, self._max_rows)

    def watch_settings(self) -> list[WatchSettings]:
        """The per-repository watch settings a JSON input carries (CSV carries none)."""
        return [] if self._json_text is None else _json_watch_settings(self._json_text)


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


def _media_type_field(values: Mapping[str, object], where: str) -> MediaType | None:
    """Empty, or one of the four manifest media types: a typo is refused here rather than stored as unknown."""
    text = _text_field(values, "media_type", where)
    if text is None or not text.strip():
        return None
    if text.strip() in MediaType:
        return MediaType(text.strip())
    raise _field_error(
        where,
        "media_type",
        f"'{printable(text, max_chars=80)}' is not a manifest media type",
        f"leave it empty, or use one of {', '.join(m.value for m in MediaType)}",
    )


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
        media_type=_media_type_field(values, where),
        commit=optional["commit"],
        recorded_by=optional["recorded_by"],
        reason=optional["reason"],
    )
