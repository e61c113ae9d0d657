"""The `digest-audit` command line: argument parsing, dispatch, and turning errors into exit codes."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from audit.cli import check, init, listen, record, report, run, trust, watch
from audit.errors import AuditError

_COMMANDS = (check, record, watch, trust, run, listen, report, init)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="digest-audit",
        description="Record trusted image digests and audit registries for tags that no longer serve them.",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output on stderr")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in _COMMANDS:
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.DEBUG if args.verbose > 1 else logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        code: int = args.handler(args)
    except AuditError as exc:
        print(f"digest-audit: error: {exc.diagnostics()}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("digest-audit: interrupted", file=sys.stderr)
        return 130
    return code
