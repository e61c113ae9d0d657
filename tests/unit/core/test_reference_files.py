"""`-f FILE`: comments, blank lines, trimming, and errors that name the file and line."""

from __future__ import annotations

from pathlib import Path

import pytest

from audit.cli.common import parse_references, read_reference_file
from audit.errors import UsageError


def test_comments_and_blank_lines(tmp_path: Path) -> None:
    refs = tmp_path / "refs.txt"
    refs.write_text(
        "# releases\n\n  nginx:1.27  \nghcr.io/o/a:1 # the app\n\t# indented comment\nquay.io/x/y:2\t# tab\n"
    )
    assert read_reference_file(refs) == [("nginx:1.27", 3), ("ghcr.io/o/a:1", 4), ("quay.io/x/y:2", 6)]


def test_positional_and_file_combine(tmp_path: Path) -> None:
    refs = tmp_path / "refs.txt"
    refs.write_text("redis:7\n")
    parsed = parse_references(["nginx"], [refs])
    assert [typed for typed, _ in parsed] == ["nginx", "redis:7"]
    assert parsed[1][1].repository == "library/redis"


def test_bad_line_names_file_and_line(tmp_path: Path) -> None:
    refs = tmp_path / "refs.txt"
    refs.write_text("nginx\n\nNot/Valid\n")
    with pytest.raises(UsageError) as info:
        parse_references([], [refs])
    assert f"{refs}:3:" in info.value.message
    assert info.value.exit_code == 2


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(UsageError) as info:
        parse_references([], [tmp_path / "missing.txt"])
    assert "missing.txt" in info.value.message


def test_nothing_given() -> None:
    with pytest.raises(UsageError, match="no image references"):
        parse_references([], [])
