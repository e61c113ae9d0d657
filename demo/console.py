"""The demo's output: numbered sections, a shell-like transcript and indented blocks; colour only on a terminal."""

from __future__ import annotations

import json
import os
import shlex
import textwrap
import time
from collections.abc import Sequence
from typing import TextIO

_WIDTH = 100
_BOLD = "\033[1m"
_CYAN = "\033[36m"
_DIM = "\033[2m"
_GREEN = "\033[32m"
_RED = "\033[31m"
_RESET = "\033[0m"


def wants_colour(stream: TextIO) -> bool:
    """ANSI colour only for an interactive terminal, and never when NO_COLOR is set (https://no-color.org)."""
    if os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb":
        return False
    return stream.isatty()


class Console:
    """Writes the transcript; every section remembers how long it took for the closing timing table."""

    def __init__(self, stream: TextIO, *, colour: bool | None = None) -> None:
        self._stream = stream
        self._colour = wants_colour(stream) if colour is None else colour
        self._section = 0
        self._section_title: str | None = None
        self._section_started = time.monotonic()
        self.timings: list[tuple[str, float]] = []

    def _paint(self, text: str, style: str) -> str:
        return f"{style}{text}{_RESET}" if self._colour else text

    def _write(self, text: str = "") -> None:
        self._stream.write(text + "\n")
        self._stream.flush()

    def section(self, title: str) -> None:
        self.close_section()
        self._section += 1
        self._section_title = title
        self._section_started = time.monotonic()
        heading = f"{self._section}. {title}"
        self._write()
        self._write(self._paint(heading, _BOLD))
        self._write(self._paint("=" * len(heading), _BOLD))

    def close_section(self) -> None:
        if self._section_title is not None:
            self.timings.append((self._section_title, time.monotonic() - self._section_started))
            self._section_title = None

    def say(self, text: str) -> None:
        """Narrative: wrapped prose, one paragraph."""
        self._write(textwrap.fill(" ".join(text.split()), width=_WIDTH))

    def blank(self) -> None:
        self._write()

    def note(self, text: str) -> None:
        """A side remark, like a shell comment."""
        for line in textwrap.wrap(" ".join(text.split()), width=_WIDTH - 2):
            self._write(self._paint(f"# {line}", _DIM))

    def command(self, argv: Sequence[str]) -> None:
        self._write(self._paint(f"$ {shlex.join(argv)}", _CYAN))

    def export(self, variables: Sequence[tuple[str, str]]) -> None:
        for name, value in variables:
            self._write(self._paint(f"$ export {name}={shlex.quote(value)}", _CYAN))

    def block(self, text: str, *, indent: str = "    ") -> None:
        for line in text.rstrip("\n").splitlines() or [""]:
            self._write(f"{indent}{line}".rstrip())

    def json_block(self, value: object, *, indent: str = "    ") -> None:
        self.block(json.dumps(value, indent=2, ensure_ascii=False), indent=indent)

    def ok(self, text: str) -> None:
        self._write(self._paint(f"ok: {text}", _GREEN))

    def fields(self, rows: Sequence[tuple[str, str]], *, indent: str = "    ", width: int = 0) -> None:
        """Aligned `label: value` lines; `width` is a minimum label width, to line up with other blocks."""
        width = max([width, *(len(label) for label, _ in rows)])
        for label, value in rows:
            self._write(f"{indent}{label + ':':<{width + 2}}{value}")

    def failure(self, text: str, stream: TextIO) -> None:
        message = f"demo failed: {text}"
        stream.write((f"{_RED}{message}{_RESET}" if wants_colour(stream) else message) + "\n")
        stream.flush()
