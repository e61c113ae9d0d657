"""`digest-audit listen`: receive registry push events and audit the named tags within seconds, without AWS.

Same receiver code as the Lambda (`audit.hooks`), same engine, state and dedup as `run`: an event is only a hint
to check a tag now; the verdict comes from the registry and the trust store.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from datetime import datetime

from audit import bootstrap, hooks
from audit.app.listen import PushAudit
from audit.cli.common import add_registry_options, add_store_options, err
from audit.cli.run import add_audit_options, audit_app, print_summary
from audit.config import ENV_GITHUB_WEBHOOK_SECRET, ENV_WEBHOOK_TOKEN, Environment, webhook_secrets
from audit.errors import AuditError, ConfigError, UsageError
from audit.hooks import CheckRequest, HookSecrets
from audit.listener import MAX_HEADER_BYTES, AuditBatch, Listener
from audit.models import Notice, utcnow
from audit.records import Finding
from audit.reference import parse_image_name
from audit.untrusted import printable

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "listen",
        help="receive registry push events and audit the pushed tags after a grace period",
        description="Serve POST /hooks/distribution (Authorization: Bearer $DIGEST_AUDIT_WEBHOOK_TOKEN), "
        "/hooks/github (X-Hub-Signature-256 with $DIGEST_AUDIT_GITHUB_WEBHOOK_SECRET) and "
        "/hooks/dockerhub/$DIGEST_AUDIT_WEBHOOK_TOKEN; after --grace seconds, audit the named tags with the "
        "normal engine and alert (stores and topic as for `run`). Runs until SIGTERM or SIGINT, then exits 0.",
    )
    parser.add_argument("--port", type=_port, required=True, help="TCP port (0 picks a free one and prints it)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument(
        "--grace",
        type=_non_negative,
        default=60.0,
        metavar="SECONDS",
        help="wait this long after a push before checking, so CI can record it first (default 60)",
    )
    parser.add_argument(
        "--registry-alias",
        action="append",
        default=[],
        metavar="HOST=REGISTRY",
        help="a registry that announces itself as HOST (its request.host) is REGISTRY in the trust store "
        "(repeatable; e.g. localhost:5000=registry.example.com)",
    )
    add_store_options(parser, state=True)
    add_audit_options(parser)
    add_registry_options(parser)
    parser.set_defaults(handler=listen)


def _port(text: str) -> int:
    if not text.isdigit() or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a TCP port (0-65535)")
    return int(text)


def _non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be 0 or more")
    return value


def _aliases(entries: list[str]) -> dict[str, str]:
    aliases: dict[str, str] = {}
    for entry in entries:
        host, sep, registry = entry.partition("=")
        try:
            if not sep:
                raise ConfigError("missing '='")
            parse_image_name(host.strip(), "x")
            normalised, _ = parse_image_name(registry.strip(), "x")
        except UsageError:
            raise UsageError(
                f"invalid --registry-alias {entry!r}",
                hint="write HOST=REGISTRY, e.g. localhost:5000=registry.example.com",
            ) from None
        aliases[host.strip().lower()] = normalised
    return aliases


def _secrets() -> HookSecrets:
    token, github_secret = webhook_secrets(Environment())
    if token is None and github_secret is None:
        raise UsageError(
            "listen has no route to serve: no webhook secret is set",
            hint=f"set {ENV_WEBHOOK_TOKEN} (distribution and Docker Hub) and/or {ENV_GITHUB_WEBHOOK_SECRET} (GitHub)",
        )
    return HookSecrets(webhook_token=token, github_secret=github_secret)


def listen(args: argparse.Namespace) -> int:
    secrets = _secrets()
    aliases = _aliases(args.registry_alias)
    app = audit_app(args)
    # What arrived and what was refused is this command's output, so it is shown without -v.
    for name in ("audit.listener", "audit.hooks"):
        logging.getLogger(name).setLevel(logging.DEBUG if args.verbose > 1 else logging.INFO)
    return asyncio.run(_serve(args, secrets, aliases, app))


async def _serve(args: argparse.Namespace, secrets: HookSecrets, aliases: dict[str, str], app: bootstrap.App) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with app:
        listener = Listener(
            secrets, _audit_batch(app.push_audit(with_packages=False)), grace=args.grace, aliases=aliases
        )
        try:
            server = await asyncio.start_server(listener.handle, args.host, args.port, limit=MAX_HEADER_BYTES)
        except OSError as exc:
            raise UsageError(
                f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}",
                hint="choose another --port, or stop what is using it",
            ) from None
        port = server.sockets[0].getsockname()[1]
        routes = []
        if secrets.webhook_token:
            routes += ["/hooks/distribution", "/hooks/dockerhub/<token>"]
        if secrets.github_secret:
            routes.append("/hooks/github")
        err(f"listening on http://{args.host}:{port} ({', '.join(routes)}); grace {args.grace:g} s")
        if args.host not in ("127.0.0.1", "::1", "localhost"):
            err("  plain HTTP beyond loopback: put a TLS-terminating proxy in front of it")
        worker = asyncio.create_task(listener.work())
        stopped = asyncio.create_task(stop.wait())
        await asyncio.wait({worker, stopped}, return_when=asyncio.FIRST_COMPLETED)
        server.close()
        listener.stop()
        await worker  # finishes a running audit; pending checks are dropped (the schedule covers them)
        stopped.cancel()
    err("stopped")
    return 0


def _audit_batch(push_audit: PushAudit) -> AuditBatch:
    async def audit(requests: list[CheckRequest]) -> None:
        report = await push_audit.run(requests)
        if report is None:
            err(f"nothing recorded to check for {hooks.describe(requests)}")
            return
        print_summary(report, dry_run=False)
        if report.stepped_aside is not None:
            # Another run (the hourly one, say) holds the lease and checked nothing of ours: try again later.
            raise AuditError("another audit run holds the lease", hint="the listener retries after a pause")
        _report_time_to_detect(requests, report.findings, utcnow())

    return audit


def _report_time_to_detect(requests: list[CheckRequest], findings: list[Finding], published: datetime) -> None:
    """Push (the event's time) to alert published, per new finding: the number this feature exists for."""
    pushed: dict[tuple[str, str | None], datetime] = {}
    for request in requests:
        if request.event_time is not None:
            pushed[request.key] = min(request.event_time, pushed.get(request.key, request.event_time))
    for finding in findings:
        at = pushed.get((finding.image, finding.tag))
        if finding.notice is Notice.NEW and at is not None:
            seconds = (published - at).total_seconds()
            err(f"  time to detect {printable(finding.reference)}: {seconds:.1f} s from push to alert")
