"""`digest-audit run`: the full audit (the same engine the Lambda runs), against DynamoDB/SNS or local files."""

from __future__ import annotations

import argparse
import asyncio
import sys
from datetime import timedelta

from audit import bootstrap, drift
from audit.adapters.sns_alerts import PrintAlerts
from audit.cli.common import (
    add_registry_options,
    add_store_options,
    err,
    positive_float,
    positive_int,
    registry_options_from,
)
from audit.config import Environment, audit_config
from audit.errors import UsageError
from audit.ports import Alerts
from audit.service import AuditService, RunOptions, RunReport
from audit.untrusted import printable


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "run",
        help="audit every tracked tag, alert on problems, remember what was alerted",
        description="Audit every tracked tag against its trusted digest. With --trust-file/--state-file it runs "
        "locally and prints alerts; otherwise it uses TRUSTED_DIGESTS_TABLE, AUDIT_STATE_TABLE and "
        "ALERT_TOPIC_ARN. Exit 0 all fine, 1 drift or missing, 3 unverifiable, 4 a store or the topic failed.",
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
    parser.add_argument(
        "--print-alerts", action="store_true", help="print alerts on stdout instead of publishing them to SNS"
    )
    parser.add_argument("--reverify-delay", type=float, metavar="SECONDS", help="wait before re-checking a drift")
    parser.add_argument("--reminder-interval", type=positive_float, metavar="SECONDS")
    parser.add_argument("--unverifiable-after", type=positive_int, metavar="RUNS")
    add_registry_options(parser)
    parser.set_defaults(handler=run_audit)


def run_audit(args: argparse.Namespace) -> int:
    env = Environment()
    config = audit_config(env, registry_options_from(args, env))
    local = args.trust_file is not None or args.state_file is not None
    if local and (args.trust_file is None or args.state_file is None):
        raise UsageError("--trust-file and --state-file go together", hint="give both for a local run")
    trust = bootstrap.trust_store(args.trust_file, config)
    state = bootstrap.state_store(args.state_file, config)
    # A dry run publishes nothing, so it needs no topic.
    printing = local or args.print_alerts or args.dry_run
    alerts: Alerts = PrintAlerts(sys.stdout) if printing else bootstrap.sns_alerts(config)
    repositories = frozenset(bootstrap.image_name(name) for name in args.repository) or None
    policy = drift.AlertPolicy(
        reminder_interval=timedelta(seconds=args.reminder_interval)
        if args.reminder_interval
        else config.reminder_interval,
        unverifiable_after=args.unverifiable_after or config.unverifiable_after,
    )
    delay = args.reverify_delay if args.reverify_delay is not None else config.reverify_delay
    options = RunOptions(repositories=repositories, dry_run=args.dry_run)

    async def audit() -> RunReport:
        async with bootstrap.registry_client(config.registry) as client:
            service = AuditService(
                trust,
                state,
                client,
                alerts,
                alert_policy=policy,
                reverify_delay=delay,
                max_tags_per_repository=config.max_tags_per_repository,
                max_in_flight=bootstrap.check_workers(client.settings),
            )
            return await service.run(options)

    report = asyncio.run(audit())
    print_summary(report, dry_run=args.dry_run)
    return report.worst_exit_code()


def print_summary(report: RunReport, *, dry_run: bool) -> None:
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
