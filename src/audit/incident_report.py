"""The one-page incident report: every release recorded in an exposure window, and whether it is still what CI built.

Written for someone who was not in the incident: a summary to read in ten seconds, then one row per release
(image:tag, CI run, commit, trusted digest, digest served now or at the last audit, the verdict in words and
colour). `render_html` gives a self-contained page (inline CSS, no scripts, no external assets, prints on paper);
`render_markdown` the same summary and table as a section to paste. Every value from the trust table, the audit
state or a registry is escaped; only http(s) URLs become links.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from urllib.parse import quote, urlsplit

from audit.models import Digest, Observation, Verdict
from audit.records import TagState, TrustedImage
from audit.reference import DOCKER_HUB_API_HOST, familiar_name
from audit.untrusted import has_unsafe_characters, markdown_text, printable

MAX_URL_CHARS = 2048


class ReleaseVerdict(StrEnum):
    VERIFIED = "verified"
    CHANGED = "changed"
    MISSING = "missing"
    NOT_VERIFIABLE = "not verifiable"


#: The verdict in words, so that colour is never the only signal (and the page reads the same on paper).
VERDICT_WORDS = {
    ReleaseVerdict.VERIFIED: "Verified: serves the digest CI recorded",
    ReleaseVerdict.CHANGED: "CHANGED: serves a different digest",
    ReleaseVerdict.MISSING: "MISSING: the tag is gone",
    ReleaseVerdict.NOT_VERIFIABLE: "Not verifiable: no digest established",
}
_MARKS = {
    ReleaseVerdict.VERIFIED: "✔",
    ReleaseVerdict.CHANGED: "✖",
    ReleaseVerdict.MISSING: "✖",
    ReleaseVerdict.NOT_VERIFIABLE: "?",
}


def release_verdict(verdict: Verdict | None) -> ReleaseVerdict:
    """An audit verdict in the report's four words; anything not established is never `verified`."""
    if verdict is Verdict.MATCH:
        return ReleaseVerdict.VERIFIED
    if verdict is Verdict.DRIFT:
        return ReleaseVerdict.CHANGED
    if verdict is Verdict.MISSING:
        return ReleaseVerdict.MISSING
    return ReleaseVerdict.NOT_VERIFIABLE


@dataclass(frozen=True)
class ReleaseRow:
    record: TrustedImage
    verdict: ReleaseVerdict
    served_digest: Digest | None
    served_at: datetime | None  # when the served digest was seen (now with --live, else the last audit)
    served_how: str  # "checked live", "last audit", "never audited"
    reason: str | None = None

    @property
    def reference(self) -> str:
        return f"{familiar_name(self.record.registry, self.record.repository)}:{self.record.tag}"


@dataclass(frozen=True)
class IncidentReport:
    rows: tuple[ReleaseRow, ...]
    since: datetime | None
    until: datetime | None
    generated_at: datetime
    live: bool

    def count(self, verdict: ReleaseVerdict) -> int:
        return sum(row.verdict is verdict for row in self.rows)

    @property
    def window(self) -> str:
        if self.since is None and self.until is None:
            return "all recorded releases (no exposure window given)"
        start = _when(self.since) if self.since else "the first record"
        end = _when(self.until) if self.until else "now"
        return f"releases recorded from {start} to {end}"

    @property
    def summary(self) -> str:
        total = len(self.rows)
        noun = "release" if total == 1 else "releases"
        if total == 0:
            return "No releases were recorded in the window."
        verified = self.count(ReleaseVerdict.VERIFIED)
        if verified == total:
            return f"{total} {noun} in the window: all verified."
        parts = [f"{verified} verified"]
        changed = self.count(ReleaseVerdict.CHANGED)
        missing = self.count(ReleaseVerdict.MISSING)
        unverifiable = self.count(ReleaseVerdict.NOT_VERIFIABLE)
        parts.append(f"{changed} changed")
        if missing:
            parts.append(f"{missing} missing")
        parts.append(f"{unverifiable} not verifiable")
        return f"{total} {noun} in the window: " + ", ".join(parts) + "."

    @property
    def served_column(self) -> str:
        return "Digest served now" if self.live else "Digest served at the last audit"


def build_report(
    records: Sequence[TrustedImage],
    states: Mapping[tuple[str, str], TagState],
    *,
    since: datetime | None,
    until: datetime | None,
    generated_at: datetime,
    live: Mapping[tuple[str, str], tuple[Observation, Verdict, str | None]] | None = None,
) -> IncidentReport:
    """Rows from the trust records with either live verdicts (`--live`) or the audit state's last verdicts."""
    rows: list[ReleaseRow] = []
    for record in records:
        key = (record.image, record.tag)
        if live is not None:
            observation, verdict, reason = live[key]
            rows.append(
                ReleaseRow(
                    record,
                    release_verdict(verdict),
                    observation.live_digest,
                    observation.checked_at,
                    "checked live",
                    reason,
                )
            )
            continue
        state = states.get(key)
        if state is None:
            rows.append(ReleaseRow(record, ReleaseVerdict.NOT_VERIFIABLE, None, None, "never audited"))
        else:
            last = release_verdict(state.last_verdict)
            rows.append(ReleaseRow(record, last, state.last_live_digest, state.last_seen, "last audit"))
    return IncidentReport(tuple(rows), since, until, generated_at, live is not None)


# --------------------------------------------------------------------------------------------------- links


def safe_link(url: str | None) -> str | None:
    """The URL when it may be a link: http(s) with a host, printable, bounded; never javascript:, data: etc."""
    if not url or len(url) > MAX_URL_CHARS or has_unsafe_characters(url) or any(ch.isspace() for ch in url):
        return None
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        return None
    return url


def registry_page(record: TrustedImage) -> str | None:
    """The registry's web page for this digest where it has one: Docker Hub's layer page, GHCR's package page."""
    if record.registry == DOCKER_HUB_API_HOST:
        digest = f"{record.digest.algorithm}-{record.digest.hex}"
        return f"https://hub.docker.com/layers/{record.repository}/{quote(record.tag, safe='')}/images/{digest}"
    if record.registry == "ghcr.io":
        owner, _, package = record.repository.partition("/")
        if package:
            return f"https://github.com/users/{owner}/packages/container/package/{quote(package, safe='')}"
    return None


def _when(moment: datetime | None) -> str:
    if moment is None:
        return "-"
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


# --------------------------------------------------------------------------------------------------- HTML

_CSS = """
:root { color-scheme: light; }
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 2rem; color: #1b1b1b; }
h1 { font-size: 1.5rem; margin: 0 0 .25rem; }
.meta { color: #444; margin: 0 0 1rem; }
.summary { font-size: 1.35rem; font-weight: 600; padding: .8rem 1rem; border: 3px solid; border-radius: 6px;
  margin: 1rem 0 1.5rem; }
.summary.ok { border-color: #1a7f37; background: #e6f4ea; }
.summary.bad { border-color: #b3261e; background: #fdecea; }
.summary.unknown { border-color: #8a6d00; background: #fff8e1; }
table { border-collapse: collapse; width: 100%; font-size: .85rem; }
caption { text-align: left; font-weight: 600; padding: .4rem 0; }
th, td { border: 1px solid #999; padding: .35rem .45rem; text-align: left; vertical-align: top; }
thead th { background: #eee; }
code { font: .8rem/1.3 ui-monospace, Menlo, Consolas, monospace; word-break: break-all; }
.verdict { font-weight: 700; white-space: nowrap; }
.verified { background: #e6f4ea; color: #0f5323; }
.changed, .missing { background: #fdecea; color: #8c1d18; }
.not-verifiable { background: #fff8e1; color: #5c4700; }
.small { color: #444; font-size: .8rem; }
@media print {
  body { margin: 0; font-size: 11px; }
  a { color: inherit; text-decoration: none; }
  a[href]::after { content: " (" attr(href) ")"; font-size: .7rem; word-break: break-all; }
  tr { page-break-inside: avoid; }
  .summary, .verdict { -webkit-print-color-adjust: exact; print-color-adjust: exact; }
}
"""


def _text(value: str | None, *, max_chars: int = 512) -> str:
    return html.escape(printable(value, max_chars=max_chars)) if value else "-"


def _link(url: str | None, label: str) -> str:
    target = safe_link(url)
    if target is None:
        return html.escape(label)
    return f'<a href="{html.escape(target, quote=True)}" rel="noopener noreferrer">{html.escape(label)}</a>'


def _summary_class(report: IncidentReport) -> str:
    if report.count(ReleaseVerdict.CHANGED) or report.count(ReleaseVerdict.MISSING):
        return "bad"
    if report.count(ReleaseVerdict.NOT_VERIFIABLE):
        return "unknown"
    return "ok"


def _html_row(row: ReleaseRow) -> str:
    record = row.record
    source = printable(record.source, max_chars=300)
    run = _link(record.source, source) if safe_link(record.source) else _text(record.source, max_chars=300)
    served = f"<code>{html.escape(str(row.served_digest))}</code>" if row.served_digest else "-"
    served += f'<br><span class="small">{html.escape(row.served_how)}, {html.escape(_when(row.served_at))}</span>'
    verdict_class = row.verdict.value.replace(" ", "-")
    verdict = f"{_MARKS[row.verdict]} {VERDICT_WORDS[row.verdict]}"
    if row.reason and row.verdict is not ReleaseVerdict.VERIFIED:
        verdict += f'<br><span class="small">{_text(row.reason, max_chars=300)}</span>'
    page = registry_page(record)
    return (
        "<tr>"
        f'<th scope="row">{_text(row.reference, max_chars=300)}</th>'
        f"<td>{run}</td>"
        f"<td><code>{_text(record.commit, max_chars=64)}</code></td>"
        f"<td><code>{html.escape(str(record.digest))}</code>"
        f'<br><span class="small">recorded {html.escape(_when(record.recorded_at))}</span></td>'
        f"<td>{served}</td>"
        f'<td class="verdict {verdict_class}" data-verdict="{html.escape(row.verdict.value)}">{verdict}</td>'
        f"<td>{_link(page, 'registry page') if page else '-'}</td>"
        "</tr>"
    )


def render_html(report: IncidentReport) -> str:
    headers = ["Image:tag", "CI run", "Commit", "Trusted digest (from CI)", report.served_column, "Verdict", "Registry"]
    head = "".join(f'<th scope="col">{html.escape(name)}</th>' for name in headers)
    body = "\n".join(_html_row(row) for row in report.rows) or f'<tr><td colspan="{len(headers)}">none</td></tr>'
    how = (
        f"Served digests were checked live at {_when(report.generated_at)}."
        if report.live
        else "Served digests are those of the last audit run (time in each row); run with --live to check now."
    )
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Release integrity report</title>
<style>{_CSS}</style>
</head>
<body>
<main>
<h1>Release integrity report</h1>
<p class="meta">Exposure window: {html.escape(report.window)}. Generated {html.escape(_when(report.generated_at))} by
digest-audit. {html.escape(how)}</p>
<p class="summary {_summary_class(report)}" id="summary">{html.escape(report.summary)}</p>
<table>
<caption>One row per release: the digest CI recorded and the digest the registry serves.</caption>
<thead><tr>{head}</tr></thead>
<tbody>
{body}
</tbody>
</table>
<p class="small">Verified: the tag serves exactly the digest the CI run recorded. Changed: the registry serves
another image under the tag; treat it as a possible compromise. Missing: the tag was deleted. Not verifiable: the
registry did not establish a digest (access, rate limit, never audited); it is never counted as verified.</p>
</main>
</body>
</html>
"""


# --------------------------------------------------------------------------------------------------- Markdown


def _md(value: str | None, *, max_chars: int = 300) -> str:
    """A table cell: printable, Markdown punctuation escaped, HTML-significant characters as entities."""
    if not value:
        return "-"
    return markdown_text(value, max_chars=max_chars)


def _md_link(url: str | None, label: str) -> str:
    target = safe_link(url)
    if target is None:
        return _md(label)
    # Inside <...> a URL may hold anything but <, > and spaces (safe_link refused spaces); `|` would end the cell.
    encoded = target.replace("<", "%3C").replace(">", "%3E").replace("|", "%7C")
    return f"[{_md(label)}](<{encoded}>)"


def render_markdown(report: IncidentReport) -> str:
    headers = ["Image:tag", "CI run", "Commit", "Trusted digest", report.served_column, "Verdict", "Registry"]
    lines = [
        "## Release integrity report",
        "",
        f"**{report.summary}**",
        "",
        f"Exposure window: {_md(report.window)}. Generated {_when(report.generated_at)}.",
        "",
        "| " + " | ".join(headers) + " |",
        "|" + "---|" * len(headers),
    ]
    for row in report.rows:
        record = row.record
        served = f"`{row.served_digest}`" if row.served_digest else "-"
        served += f" ({row.served_how}, {_when(row.served_at)})"
        page = registry_page(record)
        cells = [
            _md(row.reference),
            _md_link(record.source, record.source),
            _md(record.commit, max_chars=64),
            f"`{record.digest}`",
            served,
            f"{_MARKS[row.verdict]} {VERDICT_WORDS[row.verdict]}",
            _md_link(page, "registry page") if page else "-",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
