"""Untrusted text on its way out: what a registry, index, CI log, webhook or file said, made safe for each sink.

Every value that came from outside is data. Before it reaches a terminal, a Markdown or HTML page, a spreadsheet or
a command a responder will paste, it passes through the one function here for that sink.
"""

from __future__ import annotations

import shlex
import unicodedata

#: Unicode categories that can move the cursor, hide text or reorder it: controls (C0, DEL, C1), format
#: characters (bidi overrides, zero-width joiners), line/paragraph separators, surrogates and unassigned points.
_UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn"})

#: First characters a spreadsheet reads as a formula (OWASP "CSV injection").
_FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r", "\n")

DEFAULT_MAX_CHARS = 512


def _escape_char(char: str) -> str:
    code = ord(char)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def has_unsafe_characters(text: str) -> bool:
    """True when the text holds a character that a terminal, a mail reader or an editor could act on."""
    return any(unicodedata.category(char) in _UNSAFE_CATEGORIES for char in text)


def printable(text: str, *, max_chars: int = DEFAULT_MAX_CHARS) -> str:
    """One visible line: control and format characters escaped (`\\x1b`, `\\u202e`), the length bounded.

    Use for any untrusted value printed to a terminal, logged, or put in an alert or report.
    """
    suffix = ""
    if len(text) > max_chars:
        suffix = f"…(+{len(text) - max_chars} chars)"
        text = text[:max_chars]
    if not has_unsafe_characters(text) and "\\" not in text:
        return text + suffix
    out = []
    for char in text:
        if char == "\\":
            out.append("\\\\")
        elif unicodedata.category(char) in _UNSAFE_CATEGORIES:
            out.append(_escape_char(char))
        else:
            out.append(char)
    return "".join(out) + suffix


def csv_cell(text: str) -> str:
    """A cell a spreadsheet shows as text: a leading formula character gets a `'` (OWASP), controls escaped."""
    safe = printable(text, max_chars=32_768)
    if safe.startswith(_FORMULA_PREFIXES):
        return "'" + safe
    return safe


#: Characters that mean something to Markdown (emphasis, links, code, tables, headings, raw HTML).
_MARKDOWN_SPECIAL = str.maketrans({char: f"\\{char}" for char in "\\`*_{}[]()<>#+-.!|~"})


def markdown_text(text: str, *, max_chars: int = DEFAULT_MAX_CHARS) -> str:
    """Text a Markdown renderer shows as it is, also inside a table cell: controls escaped, punctuation that
    could open code, a link, raw HTML or end the cell backslash-escaped, `&` as an entity."""
    return printable(text, max_chars=max_chars).translate(_MARKDOWN_SPECIAL).replace("&", "&amp;")


def shell_word(text: str) -> str:
    """One shell word, quoted so that pasting it runs nothing (`shlex.quote` of the printable form)."""
    return shlex.quote(printable(text))
