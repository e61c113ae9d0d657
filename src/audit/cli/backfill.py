"""`digest-audit trust backfill`: release history from CI logs into the trust store, planned first, then applied."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from audit import bootstrap
from audit.app.backfill import Applied, PlanEntry, PlanStatus, apply_plan, plan_backfill
from audit.cli.common import (
    add_store_options,
    check_replace_reason,
    err,
    positive_float,
    positive_int,
    refuse_unsafe_text,
    render_table,
    settings_from,
)
from audit.cli.record import default_recorder
from audit.cli.report import parse_moment, parse_moment_end
from audit.errors import UsageError
from audit.records import CiRun
from audit.untrusted import printable


def register(actions: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = actions.add_parser(
        "backfill",
        help="find pushed digests in CI logs and record them (plan first; --apply writes)",
        description="Read CI logs for evidence of pushed digests (docker push, BuildKit, build-push-action, crane, "
        "skopeo) and plan what they add to the trust store: new, same, conflict, log-expired, ambiguous. Nothing "
        "is written without --apply. Progress goes to stderr, the plan to stdout.",
    )
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--github", metavar="OWNER/REPO", help="successful GitHub Actions runs (token: GITHUB_TOKEN)")
    where.add_argument("--gitlab", metavar="PROJECT", help="successful GitLab CI jobs (token: GITLAB_TOKEN)")
    where.add_argument("--log", type=Path, metavar="FILE", help="a saved log of any CI (text, or a GitHub log zip)")
    github = parser.add_argument_group("GitHub")
    github.add_argument("--workflow", metavar="FILE_OR_ID", help="only runs of this workflow (release.yml)")
    github.add_argument("--branch", metavar="BRANCH", help="only runs on this branch")
    github.add_argument("--since", type=parse_moment, metavar="DATE", help="runs created on or after DATE")
    github.add_argument("--until", type=parse_moment_end, metavar="DATE", help="runs created on or before DATE")
    parser.add_argument("--api-url", metavar="URL", help="GitHub Enterprise or self-hosted GitLab API URL")
    saved = parser.add_argument_group("saved log")
    saved.add_argument("--source", metavar="URL", help="the CI run the log belongs to (with --log)")
    saved.add_argument("--commit", metavar="SHA", help="the commit it built (with --log)")
    parser.add_argument("--json", action="store_true", help="print the plan as a JSON array")
    parser.add_argument("--apply", action="store_true", help="record the new entries (default: plan only)")
    parser.add_argument("--replace", action="store_true", help="with --apply: replace conflicting pinned tags")
    parser.add_argument("--reason", help="why conflicting digests replace the trusted ones (with --replace)")
    parser.add_argument("--recorded-by", help="who records (default: CI actor or the local user)")
    parser.add_argument("--max-runs", type=positive_int, default=1000, help="read at most N runs (default 1000)")
    parser.add_argument(
        "--max-wait", type=positive_float, default=900.0, help="seconds to wait for rate limits in total (900)"
    )
    add_store_options(parser)
    parser.set_defaults(handler=run_backfill)


def _check_options(args: argparse.Namespace) -> None:
    github_only = [flag for flag, value in (("--workflow", args.workflow), ("--branch", args.branch)) if value]
    github_only += [flag for flag, value in (("--since", args.since), ("--until", args.until)) if value]
    if github_only and not args.github:
        raise UsageError(f"{', '.join(github_only)} only go with --github", hint="drop them or use --github")
    if args.log is not None:
        if not args.source:
            raise UsageError("--log needs --source URL", hint="give the web URL of the CI run the log came from")
        if args.api_url:
            raise UsageError("--api-url does not go with --log", hint="drop --api-url")
    elif args.source or args.commit:
        raise UsageError("--source and --commit only go with --log", hint="the API gives them for each run")
    check_replace_reason(args.replace, args.reason, changes="trusted digests change")
    for flag, value in (("--source", args.source), ("--commit", args.commit), ("--recorded-by", args.recorded_by)):
        refuse_unsafe_text(flag, value)
    if args.replace and not args.apply:
        raise UsageError("--replace only goes with --apply", hint="plan first without it, then add --apply")
    if args.since and args.until and args.since > args.until:
        raise UsageError("--since is after --until", hint="swap the two dates")


def _progress(done: int, total: int, run: CiRun) -> None:
    err(f"backfill: {done}/{total} runs read ({printable(run.source, max_chars=200)})")


def _origin(args: argparse.Namespace) -> bootstrap.CiLogOrigin:
    return bootstrap.CiLogOrigin(
        log=args.log,
        source=args.source,
        commit=args.commit,
        github=args.github,
        gitlab=args.gitlab,
        api_url=args.api_url,
        workflow=args.workflow,
        branch=args.branch,
        since=args.since,
        until=args.until,
        max_runs=args.max_runs,
        max_wait=args.max_wait,
    )


def _note(message: str) -> None:
    err(f"backfill: {message}")


def run_backfill(args: argparse.Namespace) -> int:
    _check_options(args)
    app = bootstrap.build(settings_from(args, ci_tokens=True))
    # A first back-fill plans against an empty store; planning never writes, so a missing file is fine.
    store = app.recorder
    with app.ci_logs(_origin(args), notify=_note) as source:
        plan = plan_backfill(store, source, progress=_progress)
    applied: list[Applied] = []
    if args.apply:
        reason = args.reason.strip() if args.replace else None
        applied = apply_plan(store, plan, recorded_by=args.recorded_by or default_recorder(), replace_reason=reason)
    if args.json:
        print(json.dumps([_json_entry(entry, applied) for entry in plan], indent=2))
    else:
        print(render_plan(plan, applied))
    counts = {status: sum(entry.status is status for entry in plan) for status in PlanStatus}
    summary = ", ".join(f"{status.value} {count}" for status, count in counts.items())
    if args.apply:
        recorded = sum(result.outcome is not None for result in applied)
        summary += f"; recorded {recorded}"
    elif counts[PlanStatus.NEW] or counts[PlanStatus.CONFLICT]:
        summary += "; nothing written (plan only: add --apply)"
    err(f"backfill: {summary}")
    return 1 if args.apply and any(result.outcome is None for result in applied) else 0


def _json_entry(entry: PlanEntry, applied: list[Applied]) -> dict[str, object]:
    document = entry.to_json()
    for result in applied:
        if result.entry is entry:
            document["recorded"] = result.outcome.value if result.outcome else None
            if result.problem:
                document["problem"] = result.problem
    return document


def render_plan(plan: list[PlanEntry], applied: list[Applied]) -> str:
    outcomes = {id(result.entry): result for result in applied}
    rows = []
    for entry in plan:
        status = entry.status.value
        if (result := outcomes.get(id(entry))) is not None:
            status += f" -> {result.outcome.value}" if result.outcome else " (not recorded)"
        detail = entry.evidence
        if entry.trusted_digest is not None:
            detail = f"trusted now: {entry.trusted_digest}; {detail}"
        if entry.moving and entry.status is PlanStatus.NEW:
            detail = f"moving tag: appends; {detail}"
        rows.append(
            [
                status,
                printable(entry.reference or "-", max_chars=200),
                str(entry.digest) if entry.digest else "-",
                printable(entry.source, max_chars=300),
                printable(entry.commit or "-", max_chars=64),
                printable(detail, max_chars=500),
            ]
        )
    if not rows:
        return "no runs with evidence found"
    return render_table(["STATUS", "REFERENCE", "DIGEST", "SOURCE", "COMMIT", "EVIDENCE"], rows)
