"""`digest-audit report`: the evidence table a security team attaches to an incident."""

from __future__ import annotations

import argparse
import asyncio
import csv
import io
import json
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any

from audit import bootstrap
from audit.app.report import (
    LiveVerdicts,
    ReleaseEvidence,
    ReportScope,
    evidence_rows,
    gather_evidence,
    incident_report,
    live_verdicts,
)
from audit.cli.common import add_registry_options, add_store_options, render_table, settings_from
from audit.errors import UsageError
from audit.incident_report import render_html, render_markdown
from audit.reference import familiar_name
from audit.untrusted import csv_cell, printable

FIELDS = (
    "registry",
    "repository",
    "tag",
    "trusted_digest",
    "source",
    "commit",
    "recorded_at",
    "live_digest",
    "status",
    "since",
)
INCIDENT_FORMATS = ("html", "markdown")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "report",
        help="print the evidence table: trusted vs last seen digest for every tracked tag",
        description="Join the trusted digests with the last audit state. --recorded-since/--recorded-until narrow "
        "it to releases recorded in an exposure window (dates are UTC; a bare date covers the whole day).",
    )
    parser.add_argument(
        "--format",
        choices=("table", "markdown", "csv", "json", "html"),
        default="table",
        help="html: the one-page incident report; markdown: its summary and table as a section to paste",
    )
    parser.add_argument("--recorded-since", type=parse_moment, metavar="DATE")
    parser.add_argument("--recorded-until", type=parse_moment_end, metavar="DATE")
    parser.add_argument("--repository", action="append", default=[], metavar="IMAGE", help="only this repository")
    parser.add_argument(
        "--live", action="store_true", help="html/markdown: ask the registries now instead of using the last audit"
    )
    parser.add_argument("-o", "--output", type=Path, metavar="FILE", help="write to FILE instead of stdout")
    add_store_options(parser, state=True)
    add_registry_options(parser)
    parser.set_defaults(handler=run_report)


def parse_moment(text: str, *, end_of_day: bool = False) -> datetime:
    try:
        if len(text) == 10:
            day = date.fromisoformat(text)
            moment = datetime.combine(day, time.min, tzinfo=UTC)
            return moment + timedelta(days=1) - timedelta(microseconds=1) if end_of_day else moment
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a date: use YYYY-MM-DD or an ISO 8601 time like 2021-04-01T12:00:00Z"
        ) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def parse_moment_end(text: str) -> datetime:
    return parse_moment(text, end_of_day=True)


def run_report(args: argparse.Namespace) -> int:
    if args.recorded_since and args.recorded_until and args.recorded_since > args.recorded_until:
        raise UsageError("--recorded-since is after --recorded-until", hint="swap the two dates")
    app = bootstrap.build(settings_from(args))
    trust = app.trust
    state = app.optional_state
    scope = ReportScope(
        repositories={bootstrap.image_name(name) for name in args.repository},
        recorded_since=args.recorded_since,
        recorded_until=args.recorded_until,
    )
    evidence = gather_evidence(trust, state, scope)
    if args.format in INCIDENT_FORMATS:
        text = _incident_report(args, app, evidence, scope)
    else:
        if args.live:
            raise UsageError("--live goes with --format html or markdown", hint="use `check` for a live table")
        text = render(evidence_rows(evidence), args.format)
    if args.output is not None:
        try:
            args.output.write_text(text + "\n", encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"cannot write {args.output}: {exc.strerror or exc}", hint="check the path") from None
    else:
        print(text)
    return 0


def _incident_report(
    args: argparse.Namespace, app: bootstrap.App, evidence: ReleaseEvidence, scope: ReportScope
) -> str:
    live = None
    if args.live:

        async def observe() -> LiveVerdicts:
            async with app:
                return await live_verdicts(
                    app.registry, app.trust, evidence.records, workers=app.settings.registry.check_workers
                )

        live = asyncio.run(observe())
    report = incident_report(evidence, scope, live=live)
    return render_html(report) if args.format == "html" else render_markdown(report)


def render(rows: list[dict[str, Any]], fmt: str) -> str:
    if fmt == "json":
        return json.dumps(rows, indent=2)
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=FIELDS, lineterminator="\n")
        writer.writeheader()
        # Every cell is text for a spreadsheet: a source like `=HYPERLINK(...)` must never run as a formula.
        writer.writerows(
            {name: csv_cell("" if value is None else str(value)) for name, value in row.items()} for row in rows
        )
        return buffer.getvalue().rstrip("\n")
    headers = ["IMAGE", "TAG", "TRUSTED DIGEST", "SOURCE", "RECORDED AT", "LIVE DIGEST", "VERDICT", "SINCE"]
    body = [
        [
            familiar_name(row["registry"], row["repository"]),
            row["tag"],
            row["trusted_digest"],
            row["source"],
            row["recorded_at"],
            row["live_digest"] or "-",
            row["status"],
            row["since"] or "-",
        ]
        for row in rows
    ]
    return render_table(headers, [[printable(cell) for cell in row] for row in body])
