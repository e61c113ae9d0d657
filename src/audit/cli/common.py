"""Pieces shared by the subcommands: registry options, reading reference files, stdout/stderr discipline."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from audit.config import (
    DEFAULT_CONCURRENCY,
    DEFAULT_TIMEOUT,
    Environment,
    RegistrySettings,
    Settings,
    registry_options,
)
from audit.errors import AuditError, UsageError
from audit.models import ImageRef
from audit.untrusted import has_unsafe_characters, printable


def add_registry_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("registry access")
    group.add_argument(
        "--insecure-registry",
        action="append",
        default=[],
        metavar="HOST[:PORT]",
        help="talk plain HTTP to this registry (repeatable; also DIGEST_AUDIT_INSECURE_REGISTRIES)",
    )
    group.add_argument("--ca-file", type=Path, help="a PEM CA bundle added to the system trust store")
    group.add_argument("--docker-config", type=Path, metavar="DIR", help="directory holding config.json")
    group.add_argument(
        "--concurrency",
        type=positive_int,
        help=f"the most requests in flight per registry host; adaptive below it (default {DEFAULT_CONCURRENCY})",
    )
    group.add_argument("--timeout", type=positive_float, help=f"seconds per request (default {DEFAULT_TIMEOUT:g})")


def settings_from(args: argparse.Namespace, *, print_alerts: bool = False, ci_tokens: bool = False) -> Settings:
    """Every setting of a command in one call: its flags (those it has) over the environment.

    `print_alerts` besides `--print-alerts`: a command that must not publish (a local or dry run) says so.
    The CLI reads package index credentials from ~/.netrc too (the Lambda does not).
    """
    flags = vars(args)
    return Settings.from_environment(
        Environment(),
        insecure=flags.get("insecure_registry") or (),
        ca_file=flags.get("ca_file"),
        timeout=flags.get("timeout"),
        concurrency=flags.get("concurrency"),
        docker_config=flags.get("docker_config"),
        netrc=True,
        trust_file=flags.get("trust_file"),
        state_file=flags.get("state_file"),
        print_alerts=print_alerts or bool(flags.get("print_alerts")),
        reverify_delay=flags.get("reverify_delay"),
        reminder_interval=flags.get("reminder_interval"),
        unverifiable_after=flags.get("unverifiable_after"),
        ci_tokens=ci_tokens,
    )


def registry_options_from(args: argparse.Namespace, env: Environment | None = None) -> RegistrySettings:
    """Only the registry settings (flags over the environment), for commands that use no store or alert channel
    (`check`): a malformed variable of a setting they never use is none of their business."""
    return registry_options(
        env or Environment(),
        insecure=args.insecure_registry,
        ca_file=args.ca_file,
        timeout=args.timeout,
        concurrency=args.concurrency,
        docker_config=args.docker_config,
        netrc=True,
    )


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be greater than 0")
    return value


def read_reference_file(path: Path) -> list[tuple[str, int]]:
    """Lines of a references file as (reference, line number): `#` comments and blank lines skipped."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(
            f"cannot read references file {path}: {exc.strerror or exc}",
            hint="check the path given to -f",
        ) from None
    except UnicodeDecodeError:
        raise UsageError(f"references file {path} is not UTF-8 text", hint="save it as UTF-8") from None
    entries: list[tuple[str, int]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        content = line.strip()
        if content.startswith("#"):
            continue
        for marker in (" #", "\t#"):
            cut = content.find(marker)
            if cut != -1:
                content = content[:cut].strip()
        if content:
            entries.append((content, number))
    return entries


def parse_references(positional: Sequence[str], files: Sequence[Path]) -> list[tuple[str, ImageRef]]:
    """Positional references and `-f` files together, each parsed; a bad one names itself (and its line)."""
    parsed: list[tuple[str, ImageRef]] = []
    for text in positional:
        parsed.append((text, _parse_one(text, where="")))
    for path in files:
        for text, line in read_reference_file(path):
            parsed.append((text, _parse_one(text, where=f"{path}:{line}: ")))
    if not parsed:
        raise UsageError("no image references given", hint="name images as arguments or with -f FILE")
    return parsed


def _parse_one(text: str, *, where: str) -> ImageRef:
    try:
        return ImageRef.parse(text)
    except AuditError as exc:
        raise UsageError(f"{where}{exc.message}", hint=exc.hint) from None


def print_json(value: Any) -> None:
    """One write of the whole document: `json.dump` to a stream writes each token on its own (about 100,000
    writes for 2,000 rows of `check --json`, 0.1 s of a 2 s run)."""
    sys.stdout.write(json.dumps(value, indent=2) + "\n")
    sys.stdout.flush()


def render_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines.extend("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows)
    return "\n".join(lines)


def refuse_unsafe_text(flag: str, value: str | None) -> None:
    """Text given on the command line that ends up in records, alerts and reports must be one visible line."""
    if value is not None and has_unsafe_characters(value):
        raise UsageError(
            f"{flag} contains a control or format character: {printable(value, max_chars=80)}",
            hint=f"give {flag} as one line of visible text (no line breaks, escape sequences or invisible characters)",
        )


def check_replace_reason(replace: bool, reason: str | None, *, changes: str) -> None:
    """`--replace` and `--reason` come together (`record`, `trust backfill`): a replace says why, in one line."""
    if replace and not (reason and reason.strip()):
        raise UsageError("--replace needs --reason TEXT", hint=f"say why the {changes}; the old record is kept")
    if reason and not replace:
        raise UsageError("--reason only goes with --replace", hint="add --replace or drop --reason")
    refuse_unsafe_text("--reason", reason)


def err(message: str) -> None:
    print(message, file=sys.stderr)


def add_store_options(parser: argparse.ArgumentParser, *, state: bool = False) -> None:
    group = parser.add_argument_group("stores (default: DynamoDB tables from TRUSTED_DIGESTS_TABLE/AUDIT_STATE_TABLE)")
    group.add_argument("--trust-file", type=Path, metavar="FILE", help="local JSON trust store instead of DynamoDB")
    if state:
        group.add_argument("--state-file", type=Path, metavar="FILE", help="local JSON audit state instead of DynamoDB")
