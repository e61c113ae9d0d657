"""Output escaping of untrusted text: terminal, CSV, shell."""

from __future__ import annotations

import shlex
import subprocess

import pytest
from hypothesis import given
from hypothesis import strategies as st

from audit.untrusted import csv_cell, has_unsafe_characters, printable, shell_word


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("v1.2.3", "v1.2.3"),
        ("a\x1b[31mred", "a\\x1b[31mred"),
        ("line\nforged", "line\\x0aforged"),
        ("c1\x9bx", "c1\\x9bx"),
        ("bidi\u202eevil", "bidi\\u202eevil"),
        ("back\\slash", "back\\\\slash"),
        ("", ""),
    ],
)
def test_printable_escapes_controls(raw: str, shown: str) -> None:
    assert printable(raw) == shown


def test_printable_bounds_length() -> None:
    shown = printable("x" * 70_000, max_chars=100)
    assert shown.startswith("x" * 100)
    assert shown.endswith("…(+69900 chars)")


@given(st.text())
def test_printable_output_is_always_safe(text: str) -> None:
    assert not has_unsafe_characters(printable(text, max_chars=10_000))


@pytest.mark.parametrize("raw", ["=1+1", "+cmd", "-2", "@SUM(A1)", "\tx", '=HYPERLINK("http://x")'])
def test_csv_cell_neutralises_formulas(raw: str) -> None:
    cell = csv_cell(raw)
    assert cell[0] not in "=+-@\t\r"
    assert cell.lstrip("'") in (raw, printable(raw))


def test_csv_cell_leaves_plain_text() -> None:
    assert csv_cell("sha256:abc") == "sha256:abc"


@given(st.text(max_size=50))
def test_shell_word_is_one_inert_word(text: str) -> None:
    word = shell_word(text)
    assert shlex.split(word) == [printable(text)]


def test_shell_word_runs_nothing() -> None:
    out = subprocess.run(["sh", "-c", f"echo {shell_word("v4';id;echo'")}"], capture_output=True, text=True, check=True)
    assert out.stdout == "v4';id;echo'\n"
