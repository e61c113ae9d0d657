"""The `digest-audit` command line: argument parsing, dispatch, and turning errors into exit codes."""

from __future__ import annotations

import argparse
import gc
import importlib
import logging
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from audit.errors import AuditError

#: Each command's module, in the order `--help` lists them.
_COMMANDS = ("check", "record", "watch", "trust", "run", "listen", "report", "init")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The whole parser, or (given the command being run) only that command's: a process imports the module of
    the one command it runs, not all eight (`check` then loads no store, alert or CI log code at start-up)."""
    parser = argparse.ArgumentParser(
        prog="digest-audit",
        description="Record trusted image digests and audit registries for tags that no longer serve them.",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output on stderr")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in _COMMANDS if command is None else (command,):
        importlib.import_module(f"audit.cli.{name}").register(sub)
    return parser


def command_in(argv: Sequence[str]) -> str | None:
    """The command an argument list runs: its first word that is not an option (the only option before it,
    -v, takes no value), when that is a command; otherwise None (help, a typo: the whole parser answers)."""
    first = next((word for word in argv if not word.startswith("-")), None)
    return first if first in _COMMANDS else None


@contextmanager
def collection_paused() -> Iterator[None]:
    """No cyclic garbage collection while a command's modules load: an import allocates thousands of objects
    that all live on, so the collections it would set off find nothing to free (about 10 ms of a `check`
    process's 0.15 s of imports). Reference counting still frees everything; collection resumes after."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def main(argv: Sequence[str] | None = None) -> int:
    arguments = sys.argv[1:] if argv is None else list(argv)
    with collection_paused():
        parser = build_parser(command_in(arguments))
    args = parser.parse_args(arguments)
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


def console() -> int:
    """The `digest-audit` command (and `python -m audit`): `main`, for a process that ends right after it.

    The interpreter's last act would be a full garbage collection over every object the imports created, to
    free memory the operating system takes back anyway: about 20 ms of a one-tag `check`'s 0.16 s. Freezing
    them first (`gc.freeze`) makes that collection skip them. Nothing else about the exit changes: atexit
    handlers and finalizers run and stdout and stderr are flushed as before. Only here, never in `main`,
    which tests call thousands of times in one process.
    """
    code = main()
    gc.freeze()
    return code
