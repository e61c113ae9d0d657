"""Headless Chromium (Debian's `chromium`) renders a page; tests read the DOM it reports, and keep a screenshot.

The DOM is parsed with the standard library into elements with attributes and text, enough to assert on
tables, links and summaries. Console output is captured so a script error (or a blocked inline script) shows.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import override

import pytest

_TIMEOUT = 60


def chromium() -> str:
    """The browser binary; skipped locally when absent, a failure in CI (which installs it)."""
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    if os.environ.get("CI"):
        pytest.fail("chromium is not installed: .ci/run installs Debian's chromium for the report tests")
    pytest.skip("chromium is not installed (apt-get install chromium); CI installs it")


def _run(page: Path, profile: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    command = [
        chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-extensions",
        "--enable-logging=stderr",
        "--v=0",
        f"--user-data-dir={profile}",
        *extra,
        page.resolve().as_uri(),
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=_TIMEOUT, check=False)


@dataclass
class Element:
    tag: str
    attrs: dict[str, str]
    children: list[Element] = field(default_factory=list)
    text_parts: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        return " ".join(" ".join([*self.text_parts, *(child.text for child in self.children)]).split())

    def find_all(self, tag: str) -> list[Element]:
        found = [child for child in self.children if child.tag == tag]
        for child in self.children:
            found.extend(child.find_all(tag))
        return found


_VOID = frozenset({"meta", "link", "br", "img", "input", "hr", "col", "wbr", "source", "area", "base"})


class _TreeBuilder(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Element("#document", {})
        self.stack = [self.root]

    @override
    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        element = Element(tag, {name: value or "" for name, value in attrs})
        self.stack[-1].children.append(element)
        if tag not in _VOID:
            self.stack.append(element)

    @override
    def handle_endtag(self, tag: str) -> None:
        for index in range(len(self.stack) - 1, 0, -1):
            if self.stack[index].tag == tag:
                del self.stack[index:]
                return

    @override
    def handle_data(self, data: str) -> None:
        self.stack[-1].text_parts.append(data)


@dataclass(frozen=True)
class Rendered:
    dom: Element
    dom_text: str
    console: str  # chromium's stderr: console messages and errors

    def all(self, tag: str) -> list[Element]:
        return self.dom.find_all(tag)


def render(page: Path, workdir: Path) -> Rendered:
    """`--dump-dom` of the page after load, parsed; and a screenshot next to it for a person to look at."""
    result = _run(page, workdir / "chromium-profile", "--dump-dom")
    assert result.returncode == 0, f"chromium failed ({result.returncode}): {result.stderr[-2000:]}"
    shot = _run(
        page, workdir / "chromium-profile", f"--screenshot={workdir / (page.stem + '.png')}", "--window-size=1400,1200"
    )
    assert shot.returncode == 0, f"chromium screenshot failed: {shot.stderr[-2000:]}"
    builder = _TreeBuilder()
    builder.feed(result.stdout)
    return Rendered(builder.root, result.stdout, result.stderr)
