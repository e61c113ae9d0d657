"""`digest-audit report --format html|markdown`: the incident page rendered by headless Chromium, DOM asserted.

Trust and state files hold releases from Docker Hub, GHCR and a private registry, with hostile values where
the trust table takes free text (source, commit). `--live` runs against a real registry with one tag swapped.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from audit.adapters.file_store import FileStateStore, FileTrustStore
from audit.models import Digest, Verdict
from audit.records import TagState, TrustedImage
from tests.support.browser import Element, Rendered, render
from tests.support.cli_runner import CliRunner
from tests.support.local_registry import LocalRegistry

pytestmark = pytest.mark.integration

HOSTILE_SOURCE = "https://ci.example/run/4\"><script>document.title='pwned'</script><svg/onload=alert(1)>"
T = datetime(2021, 4, 1, 10, 0, tzinfo=UTC)


def digest(char: str) -> Digest:
    return Digest.parse("sha256:" + char * 64)


def record(
    registry: str, repository: str, tag: str, char: str, source: str, *, day: int, commit: str | None
) -> TrustedImage:
    return TrustedImage(
        registry=registry,
        repository=repository,
        tag=tag,
        digest=digest(char),
        source=source,
        commit=commit,
        recorded_at=T.replace(day=day),
    )


def state(item: TrustedImage, verdict: Verdict, live: Digest | None) -> TagState:
    return TagState(
        registry=item.registry,
        repository=item.repository,
        tag=item.tag,
        last_verdict=verdict,
        last_live_digest=live,
        first_seen=T,
        last_seen=datetime(2021, 4, 20, 8, 30, tzinfo=UTC),
    )


@pytest.fixture
def cli(files_cli: CliRunner) -> CliRunner:
    """The CLI with no table, topic or registry: only local files."""
    return files_cli


@pytest.fixture
def stores(tmp_path: Path) -> tuple[Path, Path]:
    """Five releases (one before the window); audit state for three of those in the window."""
    trust_file, state_file = tmp_path / "trusted.json", tmp_path / "state.json"
    trust = FileTrustStore(trust_file)
    hub = "registry-1.docker.io"
    verified = record(
        hub, "openzaak/open-zaak", "1.3.4", "a", "https://github.com/org/app/actions/runs/1", day=2, commit="1" * 40
    )
    changed = record(
        "ghcr.io", "org/app", "2.0", "b", "https://github.com/org/app/actions/runs/2", day=3, commit="2" * 40
    )
    never = record(
        "registry.example.com", "team/tool", "0.9", "c", "javascript:alert(document.domain)", day=4, commit=None
    )
    hostile = record(hub, "openzaak/open-zaak", "1.3.5", "d", HOSTILE_SOURCE, day=5, commit="abc\x1b[31m\u202eevil")
    before = record(
        hub, "openzaak/open-zaak", "1.2.0", "e", "https://github.com/org/app/actions/runs/0", day=1, commit=None
    )
    for item in (verified, changed, never, hostile):
        trust.record(item)
    trust.record(before.model_copy(update={"recorded_at": datetime(2020, 12, 1, tzinfo=UTC)}))
    FileStateStore(state_file).save(
        [
            state(verified, Verdict.MATCH, digest("a")),
            state(changed, Verdict.DRIFT, digest("f")),
            state(hostile, Verdict.UNVERIFIABLE, None),
        ]
    )
    return trust_file, state_file


def cells(row: Element) -> list[Element]:
    return [child for child in row.children if child.tag in ("th", "td")]


def links(element: Element) -> list[str]:
    return [a.attrs.get("href", "") for a in element.find_all("a")]


def rendered_report(cli: CliRunner, stores: tuple[Path, Path], tmp_path: Path, *extra: str) -> Rendered:
    page = tmp_path / "report.html"
    trust_file, state_file = stores
    result = cli(
        "report", "--format", "html", "--trust-file", trust_file, "--state-file", state_file,
        "--recorded-since", "2021-01-01", "--recorded-until", "2021-06-30", "--output", page, *extra,
    )  # fmt: skip
    assert (result.code, result.out, result.err) == (0, "", "")
    return render(page, tmp_path)


def test_html_report_in_a_browser_summary_rows_links_and_accessible_table(
    cli: CliRunner, stores: tuple[Path, Path], tmp_path: Path
) -> None:
    page = rendered_report(cli, stores, tmp_path)

    (summary,) = [p for p in page.all("p") if p.attrs.get("id") == "summary"]
    assert summary.text == "4 releases in the window: 1 verified, 1 changed, 2 not verifiable."
    (table,) = page.all("table")
    (caption,) = table.find_all("caption")
    assert caption.text.startswith("One row per release")
    headers = table.find_all("thead")[0].find_all("th")
    assert [th.attrs.get("scope") for th in headers] == ["col"] * 7
    rows = table.find_all("tbody")[0].find_all("tr")
    assert [cells(row)[0].text for row in rows] == [  # by repository, then by recording time
        "ghcr.io/org/app:2.0",
        "openzaak/open-zaak:1.3.4",
        "openzaak/open-zaak:1.3.5",
        "registry.example.com/team/tool:0.9",
    ]
    assert all(cells(row)[0].tag == "th" and cells(row)[0].attrs.get("scope") == "row" for row in rows)
    verdicts = [cells(row)[5] for row in rows]
    assert [cell.attrs.get("data-verdict") for cell in verdicts] == [
        "changed",
        "verified",
        "not verifiable",
        "not verifiable",
    ]
    assert [cell.text.split(":")[0] for cell in verdicts] == [
        "✖ CHANGED",
        "✔ Verified",
        "? Not verifiable",
        "? Not verifiable",
    ]
    assert links(cells(rows[1])[1]) == ["https://github.com/org/app/actions/runs/1"]
    assert links(cells(rows[1])[6]) == [
        f"https://hub.docker.com/layers/openzaak/open-zaak/1.3.4/images/sha256-{'a' * 64}"
    ]
    assert links(cells(rows[0])[6]) == ["https://github.com/users/org/packages/container/package/app"]
    assert cells(rows[0])[4].text.startswith(f"sha256:{'f' * 64} last audit, 2021-04-20 08:30 UTC")
    assert links(cells(rows[3])[6]) == []  # a private registry has no public page
    assert cells(rows[3])[4].text == "- never audited, -"
    assert "1 Apr 2021" not in page.dom_text and "from 2021-01-01 00:00 UTC to 2021-06-30 23:59 UTC" in page.dom_text
    assert (tmp_path / "report.png").stat().st_size > 10_000


def test_hostile_values_stay_inert_text_in_the_browser(
    cli: CliRunner, stores: tuple[Path, Path], tmp_path: Path
) -> None:
    page = rendered_report(cli, stores, tmp_path)

    assert [title.text for title in page.all("title")] == ["Release integrity report"]
    assert page.all("script") == [] and page.all("svg") == []
    rows = page.all("tbody")[0].find_all("tr")
    javascript_source = cells(rows[3])[1]
    assert links(javascript_source) == [] and javascript_source.text == "javascript:alert(document.domain)"
    hostile = cells(rows[2])
    assert links(hostile[1]) == [HOSTILE_SOURCE]  # an https URL: a link, its markup only an attribute value
    assert hostile[1].text == HOSTILE_SOURCE
    assert hostile[2].text == "abc\\x1b[31m\\u202eevil"
    every_href = [a.attrs.get("href", "") for a in page.all("a")]
    assert all(href.startswith("https://") for href in every_href)
    assert "Uncaught" not in page.console and "Refused to" not in page.console


def test_markdown_section_has_the_same_summary_and_rows(cli: CliRunner, stores: tuple[Path, Path]) -> None:
    trust_file, state_file = stores
    result = cli(
        "report",
        "--format",
        "markdown",
        "--trust-file",
        trust_file,
        "--state-file",
        state_file,
        "--recorded-since",
        "2021-01-01",
    )

    assert result.code == 0, result.err
    lines = result.out.splitlines()
    assert lines[:3] == [
        "## Release integrity report",
        "",
        "**4 releases in the window: 1 verified, 1 changed, 2 not verifiable.**",
    ]
    table = [line for line in lines if line.startswith("| ")]
    assert len(table) == 5
    assert table[2].startswith(
        "| openzaak/open\\-zaak:1\\.3\\.4 | "
        "[https://github\\.com/org/app/actions/runs/1](<https://github.com/org/app/actions/runs/1>) |"
    )
    assert "✖ CHANGED: serves a different digest" in table[1]
    assert "javascript:" in table[4] and "](<javascript" not in table[4]
    assert "<script>" not in result.out and "&lt;script&gt;" not in result.out and "\\<script\\>" in result.out
    assert "\x1b" not in result.out and "\u202e" not in result.out


def test_live_report_asks_the_registry_now(
    cli: CliRunner, registry: LocalRegistry, repository: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DIGEST_AUDIT_INSECURE_REGISTRIES", registry.host)
    trust_file = tmp_path / "trusted.json"
    pushed = {tag: registry.pusher.push_image(repository, tag, "oci") for tag in ("1.0", "1.1")}
    for tag, image in pushed.items():
        ref = registry.reference(repository, tag, image.digest)
        assert cli("record", ref, "--source", f"https://ci.example/run/{tag}", "--trust-file", trust_file).code == 0
    swapped = registry.pusher.tamper(repository, "1.1")
    page_file = tmp_path / "live.html"

    result = cli("report", "--format", "html", "--live", "--trust-file", trust_file, "--output", page_file)

    assert (result.code, result.err) == (0, "")
    page = render(page_file, tmp_path)
    (summary,) = [p for p in page.all("p") if p.attrs.get("id") == "summary"]
    assert summary.text == "2 releases in the window: 1 verified, 1 changed, 0 not verifiable."
    rows = page.all("tbody")[0].find_all("tr")
    assert [cells(row)[5].attrs.get("data-verdict") for row in rows] == ["verified", "changed"]
    assert cells(rows[1])[4].text.startswith(f"{swapped.digest} checked live")
    assert "Digest served now" in [th.text for th in page.all("th")]


def test_live_goes_with_the_incident_formats_only(cli: CliRunner, stores: tuple[Path, Path]) -> None:
    result = cli("report", "--format", "csv", "--live", "--trust-file", stores[0])

    assert result.code == 2
    assert "--live goes with --format html or markdown" in result.err
