"""`digest-audit run`: the full audit (the same engine the Lambda runs), against DynamoDB/SNS or local files."""

from __future__ import annotations

import argparse
import asyncio

from audit import bootstrap
from audit.app.audit import RunOptions, RunReport
from audit.cli.common import add_registry_options, add_store_options, err, positive_float, positive_int, settings_from
from audit.errors import UsageError
from audit.untrusted import printable


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "run",
        help="audit every tracked tag, alert on problems, remember what was alerted",
        description="Audit every tracked tag against its trusted digest. With --trust-file/--state-file it runs "
        "locally and prints alerts; otherwise it uses TRUSTED_DIGESTS_TABLE, AUDIT_STATE_TABLE and "
        "ALERT_TOPIC_ARN. Exit 0 all fine, 1 drift or missing, 3 unverifiable, 4 a store or the topic failed, "
        "5 another run was auditing (this one stepped aside and did nothing).",
    )
    add_store_options(parser, state=True)
    parser.add_argument("--dry-run", action="store_true", help="decide and report, publish and save nothing")
    parser.add_argument(
        "--repository",
        action="append",
        default=[],
        metavar="IMAGE",
        help="audit only this repository (repeatable)",
    )
    add_audit_options(parser)
    add_registry_options(parser)
    parser.set_defaults(handler=run_audit)


def add_audit_options(parser: argparse.ArgumentParser) -> None:
    """Alerting and re-verification options shared by `run` and `listen`."""
    parser.add_argument(
        "--print-alerts", action="store_true", help="print alerts on stdout instead of publishing them to SNS"
    )
    parser.add_argument("--reverify-delay", type=float, metavar="SECONDS", help="wait before re-checking a drift")
    parser.add_argument("--reminder-interval", type=positive_float, metavar="SECONDS")
    parser.add_argument("--unverifiable-after", type=positive_int, metavar="RUNS")


def audit_app(args: argparse.Namespace, *, dry_run: bool = False) -> bootstrap.App:
    """Local files (`--trust-file` and `--state-file`, alerts printed) or DynamoDB and SNS from the environment."""
    local = args.trust_file is not None or args.state_file is not None
    if local and (args.trust_file is None or args.state_file is None):
        raise UsageError("--trust-file and --state-file go together", hint="give both for a local run")
    # A dry run publishes nothing, so it needs no topic.
    app = bootstrap.build(settings_from(args, print_alerts=local or dry_run))
    # Stores and the alert channel first (a wrong path, a missing table or topic is the first thing to hear
    # about), then the registry client. A dry run may run beside another run: it takes no lease.
    _ = (app.trust, app.state, app.alerts) if dry_run else (app.trust, app.state, app.lease, app.alerts)
    return app


def run_audit(args: argparse.Namespace) -> int:
    app = audit_app(args, dry_run=args.dry_run)
    repositories = frozenset(bootstrap.image_name(name) for name in args.repository) or None
    options = RunOptions(repositories=repositories, dry_run=args.dry_run)

    async def audit() -> RunReport:
        async with app:
            return await app.auditor(dry_run=args.dry_run).run(options)

    report = asyncio.run(audit())
    print_summary(report, dry_run=args.dry_run)
    return report.worst_exit_code()


def print_summary(report: RunReport, *, dry_run: bool) -> None:
    if report.stepped_aside is not None:
        claim = report.stepped_aside
        until = f" until {claim.expires_at:%Y-%m-%dT%H:%M:%SZ} at the latest" if claim.expires_at else ""
        err(
            f"run {report.run_id}: stepped aside: {printable(claim.holder, max_chars=200)} is auditing now{until}; "
            "nothing was checked, published or saved (exit 5). Try again when it has finished."
        )
        return
    verdicts = ", ".join(f"{n} {v}" for v, n in sorted(report.by_verdict.items())) or "nothing"
    action = "would alert" if dry_run else "published"
    err(
        f"run {report.run_id}: checked {report.checked} tag(s): {verdicts}; "
        f"{len(report.findings)} finding(s) {action} in {report.alerts_published} message(s); "
        f"{report.duration_ms} ms"
    )
    if report.checked == 0 and not report.unreached:
        err("  nothing is tracked here: record trusted digests first (`digest-audit record`, `trust import`)")
    if report.unreached:
        err(f"  not reached (time ran out): {len(report.unreached)} tag(s)")
        for ref in report.unreached:
            err(f"    {ref.familiar}")
    for image, reason in sorted(report.unlisted.items()):
        err(printable(f"  could not list the tags of {image}: {reason}"))
    if report.unverifiable:
        err("  this run could not verify every tag:")
        for result in report.unverifiable:
            err(printable(f"    {result.ref.familiar}: {result.reason}"))
