"""The incident report's pure parts: verdict words, the ten-second summary, links and escaping."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from audit.incident_report import (
    IncidentReport,
    ReleaseRow,
    ReleaseVerdict,
    build_report,
    registry_page,
    release_verdict,
    render_html,
    render_markdown,
    safe_link,
)
from audit.models import Digest, Verdict
from audit.records import TagState, TrustedImage

T = datetime(2021, 4, 1, tzinfo=UTC)


def item(
    registry: str = "ghcr.io", repository: str = "org/app", tag: str = "1.0", source: str = "https://ci/1"
) -> TrustedImage:
    return TrustedImage(
        registry=registry,
        repository=repository,
        tag=tag,
        digest=Digest.parse("sha256:" + "a" * 64),
        source=source,
        recorded_at=T,
    )


def report(*verdicts: ReleaseVerdict) -> IncidentReport:
    rows = tuple(
        ReleaseRow(item(tag=f"1.{n}"), verdict, None, None, "last audit") for n, verdict in enumerate(verdicts)
    )
    return IncidentReport(rows, T, None, T, live=False)


@pytest.mark.parametrize(
    ("verdict", "expected"),
    [
        (Verdict.MATCH, ReleaseVerdict.VERIFIED),
        (Verdict.DRIFT, ReleaseVerdict.CHANGED),
        (Verdict.MISSING, ReleaseVerdict.MISSING),
        (Verdict.UNVERIFIABLE, ReleaseVerdict.NOT_VERIFIABLE),
        (Verdict.UNTRACKED, ReleaseVerdict.NOT_VERIFIABLE),
        (None, ReleaseVerdict.NOT_VERIFIABLE),
    ],
)
def test_only_a_match_is_verified(verdict: Verdict | None, expected: ReleaseVerdict) -> None:
    assert release_verdict(verdict) is expected


@pytest.mark.parametrize(
    ("verdicts", "summary"),
    [
        ((), "No releases were recorded in the window."),
        ((ReleaseVerdict.VERIFIED,), "1 release in the window: all verified."),
        ((ReleaseVerdict.VERIFIED,) * 3, "3 releases in the window: all verified."),
        (
            (ReleaseVerdict.VERIFIED, ReleaseVerdict.CHANGED, ReleaseVerdict.NOT_VERIFIABLE),
            "3 releases in the window: 1 verified, 1 changed, 1 not verifiable.",
        ),
        (
            (ReleaseVerdict.MISSING, ReleaseVerdict.NOT_VERIFIABLE),
            "2 releases in the window: 0 verified, 0 changed, 1 missing, 1 not verifiable.",
        ),
    ],
)
def test_summary_reads_in_ten_seconds(verdicts: tuple[ReleaseVerdict, ...], summary: str) -> None:
    assert report(*verdicts).summary == summary


def test_rows_without_audit_state_are_not_verifiable() -> None:
    audited, never = item(tag="1.0"), item(tag="2.0")
    states = {
        (audited.image, "1.0"): TagState(
            registry="ghcr.io", repository="org/app", tag="1.0", last_verdict=Verdict.MATCH,
            last_live_digest=audited.digest, first_seen=T, last_seen=T,
        )
    }  # fmt: skip
    built = build_report([audited, never], states, since=None, until=None, generated_at=T)

    assert [(row.verdict, row.served_how) for row in built.rows] == [
        (ReleaseVerdict.VERIFIED, "last audit"),
        (ReleaseVerdict.NOT_VERIFIABLE, "never audited"),
    ]
    assert built.window == "all recorded releases (no exposure window given)"


@pytest.mark.parametrize(
    ("url", "link"),
    [
        ("https://github.com/org/app/actions/runs/1", True),
        ("http://ci.internal/job/7", True),
        ("javascript:alert(1)", False),
        ("JaVaScRiPt:alert(1)", False),
        ("data:text/html,<script>alert(1)</script>", False),
        ("vbscript:msgbox", False),
        ("file:///etc/passwd", False),
        ("//evil.example/x", False),
        ("https://ci/run 1", False),
        ("https://ci/\u202erun", False),
        ("https://ci/" + "x" * 3000, False),
        ("manual back-fill from the 2021 spreadsheet", False),
    ],
)
def test_only_http_urls_become_links(url: str, link: bool) -> None:
    assert (safe_link(url) is not None) is link


def test_registry_pages() -> None:
    hub = item("registry-1.docker.io", "library/nginx", "1.27")
    assert registry_page(hub) == f"https://hub.docker.com/layers/library/nginx/1.27/images/sha256-{'a' * 64}"
    assert registry_page(item("ghcr.io", "org/tools/cli")) == (
        "https://github.com/users/org/packages/container/package/tools%2Fcli"
    )
    assert registry_page(item("registry.example.com", "team/app")) is None


def test_html_escapes_attribute_breakouts_and_markup() -> None:
    hostile = 'https://ci/x"onmouseover="alert(1)"><script>alert(2)</script>'
    page = render_html(
        IncidentReport(
            (ReleaseRow(item(source=hostile), ReleaseVerdict.CHANGED, None, None, "x"),), None, None, T, False
        )
    )

    assert "<script>" not in page and 'x"onmouseover' not in page
    assert 'href="https://ci/x&quot;onmouseover=&quot;alert(1)&quot;&gt;&lt;script&gt;' in page
    assert "default-src 'none'" in page  # the page itself forbids scripts and external loads


def test_markdown_escapes_cells_and_never_links_other_schemes() -> None:
    rows = (
        ReleaseRow(item(source="javascript:alert(1)"), ReleaseVerdict.VERIFIED, None, None, "x"),
        ReleaseRow(item(source="https://ci/a|b)<x>[y]"), ReleaseVerdict.VERIFIED, None, None, "x"),
    )
    text = render_markdown(IncidentReport(rows, None, None, T, False))
    table = [line for line in text.splitlines() if line.startswith("| ")][1:]

    assert "](<javascript" not in text and "javascript:alert\\(1\\)" in table[0]
    assert "(<https://ci/a%7Cb)%3Cx%3E[y]>)" in table[1]
    assert all(line.replace("\\|", "").count("|") == 8 for line in table)  # seven cells, no extra column
