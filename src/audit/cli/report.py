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
from audit.cli.common import add_registry_options, add_store_options, registry_options_from, render_table
from audit.config import Environment, RegistryOptions, audit_config
from audit.errors import UsageError
from audit.incident_report import build_report, observe_releases, render_html, render_markdown
from audit.models import Observation, TagState, TrustedImage, Verdict, iso_utc, utcnow
from audit.ports import TrustReader
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
NOT_AUDITED = "unchecked"
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
    config = audit_config(Environment(), RegistryOptions())
    trust = bootstrap.trust_store(args.trust_file, config)
    state = bootstrap.state_store(args.state_file, config) if args.state_file or config.state_table else None
    states = state.load_all() if state is not None else {}
    wanted = {bootstrap.image_name(name) for name in args.repository}
    records = [
        item
        for item in trust.load_all()
        if (not wanted or item.image in wanted)
        and (args.recorded_since is None or item.recorded_at >= args.recorded_since)
        and (args.recorded_until is None or item.recorded_at <= args.recorded_until)
    ]
    records.sort(key=lambda item: (item.image, item.recorded_at, item.tag))
    if args.format in INCIDENT_FORMATS:
        text = _incident_report(args, trust, records, states)
    else:
        if args.live:
            raise UsageError("--live goes with --format html or markdown", hint="use `check` for a live table")
        rows = [evidence_row(item, states.get((item.image, item.tag))) for item in records]
        text = render(rows, args.format)
    if args.output is not None:
        try:
            args.output.write_text(text + "\n", encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"cannot write {args.output}: {exc.strerror or exc}", hint="check the path") from None
    else:
        print(text)
    return 0


def _incident_report(
    args: argparse.Namespace, trust: TrustReader, records: list[TrustedImage], states: dict[tuple[str, str], TagState]
) -> str:
    live = None
    if args.live:
        settings = trust.load_watch_settings()

        async def observe() -> dict[tuple[str, str], tuple[Observation, Verdict, str | None]]:
            async with bootstrap.registry_client(registry_options_from(args)) as client:
                return await observe_releases(client, trust, records, settings)

        live = asyncio.run(observe())
    report = build_report(
        records, states, since=args.recorded_since, until=args.recorded_until, generated_at=utcnow(), live=live
    )
    return render_html(report) if args.format == "html" else render_markdown(report)


def evidence_row(item: TrustedImage, state: TagState | None) -> dict[str, Any]:
    return {
        "registry": item.registry,
        "repository": item.repository,
        "tag": item.tag,
        "trusted_digest": str(item.digest),
        "source": item.source,
        "commit": item.commit,
        "recorded_at": iso_utc(item.recorded_at),
        "live_digest": str(state.last_live_digest) if state and state.last_live_digest else None,
        "status": state.last_verdict.value if state else NOT_AUDITED,
        "since": iso_utc(state.first_seen) if state else None,
    }


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
