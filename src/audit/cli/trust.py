"""`digest-audit trust import|export|backfill`: back-fill digests from CI history, or move between backends."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from audit import bootstrap
from audit.app.trust_transfer import export_trust, import_trust_file
from audit.cli import backfill
from audit.cli.common import add_store_options, positive_int, settings_from
from audit.errors import UsageError
from audit.trust_formats import DEFAULT_MAX_ROWS

_FORMATS = ("json", "csv")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("trust", help="import or export trusted digests (CSV or JSON)")
    actions = parser.add_subparsers(dest="trust_command", required=True, metavar="ACTION")
    importing = actions.add_parser("import", help="add trusted digests from a CSV or JSON file")
    importing.add_argument("file", type=Path, metavar="FILE")
    importing.add_argument("--format", choices=_FORMATS, help="default: from the file name")
    importing.add_argument(
        "--max-rows",
        type=positive_int,
        default=DEFAULT_MAX_ROWS,
        metavar="N",
        help=f"refuse input with more than N records (default {DEFAULT_MAX_ROWS})",
    )
    add_store_options(importing)
    importing.set_defaults(handler=run_import)
    exporting = actions.add_parser("export", help="print every trusted digest (and history) as CSV or JSON")
    exporting.add_argument("--format", choices=_FORMATS, default="json")
    exporting.add_argument("-o", "--output", type=Path, metavar="FILE", help="write to FILE instead of stdout")
    add_store_options(exporting)
    exporting.set_defaults(handler=run_export)
    backfill.register(actions)


def _format_of(path: Path, explicit: str | None) -> str:
    if explicit:
        return explicit
    suffix = path.suffix.lower().lstrip(".")
    if suffix in _FORMATS:
        return suffix
    raise UsageError(f"cannot tell the format of {path}", hint="name it .csv or .json, or pass --format csv|json")


def run_import(args: argparse.Namespace) -> int:
    fmt = _format_of(args.file, args.format)
    if not args.file.is_file():
        problem = "is a directory" if args.file.is_dir() else "does not exist"
        raise UsageError(f"cannot read {args.file}: it {problem}", hint="give the path of a CSV or JSON file")
    store = bootstrap.build(settings_from(args)).recorder
    summary = import_trust_file(store, args.file, fmt, max_rows=args.max_rows)
    print(summary.describe())
    return 1 if summary.conflicts else 0


def run_export(args: argparse.Namespace) -> int:
    store = bootstrap.build(settings_from(args)).trust
    text = export_trust(store, args.format)
    if args.output is not None:
        try:
            args.output.write_text(text, encoding="utf-8")
        except OSError as exc:
            raise UsageError(
                f"cannot write {args.output}: {exc.strerror or exc}", hint="check the path given to -o"
            ) from None
    else:
        sys.stdout.write(text)
    return 0
