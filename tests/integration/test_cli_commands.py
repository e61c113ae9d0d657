"""The `digest-audit` commands as operators and CI use them, against moto (server mode) and a real registry.

Exact output and exit codes are the interface here: CI scripts branch on them and people read them.
"""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from audit.adapters.dynamodb_store import DynamoStateStore, DynamoTrustStore
from audit.models import Digest
from tests.support.aws_fixtures import AwsClients, TableNames
from tests.support.cli_runner import CliResult, CliRunner, set_audit_environment
from tests.support.local_registry import LocalRegistry
from tests.support.pusher import PushedImage

pytestmark = pytest.mark.integration

SOURCE = "https://ci.example/org/app/runs/42"
REPORT_FIELDS = [
    "registry",
    "repository",
    "tag",
    "trusted_digest",
    "source",
    "commit",
    "recorded_at",
    "live_digest",
    "status",
    "since",
]


@pytest.fixture
def bare_cli(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, docker_config: Path, registry: LocalRegistry
) -> CliRunner:
    """The CLI with no store, table or topic configured (only the registry)."""
    set_audit_environment(monkeypatch, docker_config=docker_config, insecure_registry=registry.host)
    return CliRunner(capsys)


def short(digest: str) -> str:
    return Digest.parse(digest).short


def pinned(registry: LocalRegistry, image: PushedImage) -> str:
    return registry.reference(image.repository, image.tag, image.digest)


def write_json(path: Path, document: object) -> Path:
    path.write_text(json.dumps(document), encoding="utf-8")
    return path


# --------------------------------------------------------------------------------------------------- init


def test_init_creates_both_tables_and_the_topic_and_can_run_again(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    docker_config: Path,
    aws: AwsClients,
) -> None:
    set_audit_environment(monkeypatch, docker_config=docker_config, trust_table="team-trust", state_table="team-state")
    cli = CliRunner(capsys)
    arn = f"arn:aws:sns:{aws.region}:123456789012:alerts"
    expected = CliResult(
        0, f"tables ready: team-trust (trusted digests), team-state (audit state)\ntopic ready: {arn}\n", ""
    )

    assert cli("init", "--topic", "alerts") == expected
    assert cli("init", "--topic", "alerts") == expected

    client = aws.dynamodb()
    assert sorted(client.list_tables()["TableNames"]) == ["team-state", "team-trust"]
    schemas = {
        name: [
            (key["AttributeName"], key["KeyType"])
            for key in client.describe_table(TableName=name)["Table"]["KeySchema"]
        ]
        for name in ("team-trust", "team-state")
    }
    assert schemas == {
        "team-trust": [("image", "HASH"), ("sk", "RANGE")],
        "team-state": [("image", "HASH"), ("tag", "RANGE")],
    }
    assert [topic["TopicArn"] for topic in aws.sns().list_topics()["Topics"]] == [arn]


# --------------------------------------------------------------------------------------------------- record


def test_replace_needs_a_reason_and_keeps_the_old_record_as_history(
    cli: CliRunner, registry: LocalRegistry, repo: str
) -> None:
    original = registry.pusher.push_image(repo, "1.0", "docker")
    rebuilt = registry.pusher.push_image(repo, None, "docker")
    assert cli("record", pinned(registry, original), "--source", SOURCE, "--commit", "c1").code == 0
    new_reference = registry.reference(repo, "1.0", rebuilt.digest)

    no_reason = cli("record", new_reference, "--source", SOURCE, "--replace")
    assert no_reason == CliResult(
        2,
        "",
        "digest-audit: error: --replace needs --reason TEXT\n"
        "  hint: say why the trusted digest changes; the old record is kept\n",
    )

    replaced = cli(
        "record", new_reference, "--source", f"{SOURCE}-rebuild", "--replace", "--reason", "rebuilt for CVE-2024-1"
    )
    assert replaced == CliResult(0, f"replaced: {new_reference}\n", "")

    exported = cli("trust", "export", "--format", "json")
    assert exported.code == 0
    document = json.loads(exported.out)
    assert document["schema_version"] == 1
    assert [(r["tag"], r["digest"], r["source"], r.get("reason")) for r in document["trusted"]] == [
        ("1.0", rebuilt.digest, f"{SOURCE}-rebuild", "rebuilt for CVE-2024-1")
    ]
    assert [(r["tag"], r["digest"], r["source"], r["commit"]) for r in document["history"]] == [
        ("1.0", original.digest, SOURCE, "c1")
    ]


def test_a_buildx_metadata_file_records_every_name_it_lists(
    cli: CliRunner, registry: LocalRegistry, repo: str, tmp_path: Path, aws: AwsClients, tables: TableNames
) -> None:
    image = registry.pusher.push_image(repo, "1", "oci-index")
    registry.pusher.tag(image, "1.0")
    names = f"{registry.reference(repo, '1')},{registry.reference(repo, '1.0')}"
    metadata = write_json(
        tmp_path / "metadata.json",
        {"containerimage.digest": image.digest, "image.name": names, "buildx.build.ref": "builder/x/y"},
    )

    result = cli("record", "--from-buildx-metadata", metadata, "--source", SOURCE)
    assert result == CliResult(
        0,
        f"created: {registry.reference(repo, '1', image.digest)}\n"
        f"created: {registry.reference(repo, '1.0', image.digest)}\n",
        "",
    )
    records = DynamoTrustStore(tables.trust, aws.dynamodb()).load_all()
    assert [(r.tag, str(r.digest), r.media_type) for r in records] == [
        ("1", image.digest, "application/vnd.oci.image.index.v1+json"),
        ("1.0", image.digest, "application/vnd.oci.image.index.v1+json"),
    ]
    assert {name: str(digest) for name, digest in (records[0].platforms or {}).items()} == image.platforms


def test_resolve_records_what_the_registry_serves_and_says_so(
    cli: CliRunner, registry: LocalRegistry, repo: str, aws: AwsClients, tables: TableNames
) -> None:
    image = registry.pusher.push_image(repo, "0.9", "oci")

    result = cli("record", "--resolve", registry.reference(repo, "0.9"), "--source", "first-adoption")
    assert result == CliResult(
        0,
        f"created: {pinned(registry, image)} (resolved from the registry now, not from a CI build)\n",
        "",
    )
    record = DynamoTrustStore(tables.trust, aws.dynamodb()).get(f"{registry.host}/{repo}", "0.9")
    assert record is not None
    assert (str(record.digest), record.source) == (image.digest, "first-adoption")


# --------------------------------------------------------------------------------------------------- report


@pytest.fixture
def audited(cli: CliRunner, registry: LocalRegistry, repo: str, tmp_path: Path) -> dict[str, PushedImage]:
    """1.0 and 1.1 back-filled with old recording times, 2.0 recorded now; then 1.1 drifted and two runs."""
    pusher = registry.pusher
    releases = {
        "1.0": pusher.push_image(repo, "1.0", "docker"),
        "1.1": pusher.push_image(repo, "1.1", "oci"),
        "2.0": pusher.push_image(repo, "2.0", "oci-index"),
    }
    history = write_json(
        tmp_path / "backfill.json",
        {
            "schema_version": 1,
            "trusted": [
                {
                    "registry": registry.host,
                    "repository": repo,
                    "tag": tag,
                    "digest": releases[tag].digest,
                    "source": f"{SOURCE}/{tag}",
                    "recorded_at": recorded_at,
                }
                for tag, recorded_at in (("1.0", "2024-01-10T09:00:00Z"), ("1.1", "2024-03-05T10:30:00+00:00"))
            ],
        },
    )
    assert cli("trust", "import", history) == CliResult(0, "created 2, unchanged 0, conflicts 0\n", "")
    assert cli("record", pinned(registry, releases["2.0"]), "--source", f"{SOURCE}/2.0", "--commit", "c2").code == 0
    assert cli("run").code == 0
    releases["tampered"] = pusher.tamper(repo, "1.1")
    assert cli("run").code == 1
    return releases


def report_rows(cli: CliRunner, *extra: str) -> list[dict[str, Any]]:
    result = cli("report", "--format", "json", *extra)
    assert (result.code, result.err) == (0, "")
    rows = json.loads(result.out)
    assert isinstance(rows, list)
    return rows


def test_report_json_joins_trust_records_with_the_last_audit(
    cli: CliRunner,
    registry: LocalRegistry,
    repo: str,
    audited: dict[str, PushedImage],
    aws: AwsClients,
    tables: TableNames,
) -> None:
    rows = report_rows(cli)

    assert all(list(row) == REPORT_FIELDS for row in rows)
    states = DynamoStateStore(tables.state, aws.dynamodb()).load_all()
    image = f"{registry.host}/{repo}"
    for row in rows:
        assert datetime.fromisoformat(row.pop("since")) == states[(image, row["tag"])].first_seen
    recorded_now = datetime.fromisoformat(rows[2].pop("recorded_at"))
    assert (datetime.now(UTC) - recorded_now).total_seconds() < 600  # recorded during this test, not back-filled
    assert rows == [
        {
            "registry": registry.host,
            "repository": repo,
            "tag": "1.0",
            "trusted_digest": audited["1.0"].digest,
            "source": f"{SOURCE}/1.0",
            "commit": None,
            "recorded_at": "2024-01-10T09:00:00Z",
            "live_digest": audited["1.0"].digest,
            "status": "match",
        },
        {
            "registry": registry.host,
            "repository": repo,
            "tag": "1.1",
            "trusted_digest": audited["1.1"].digest,
            "source": f"{SOURCE}/1.1",
            "commit": None,
            "recorded_at": "2024-03-05T10:30:00Z",
            "live_digest": audited["tampered"].digest,
            "status": "drift",
        },
        {
            "registry": registry.host,
            "repository": repo,
            "tag": "2.0",
            "trusted_digest": audited["2.0"].digest,
            "source": f"{SOURCE}/2.0",
            "commit": "c2",
            "live_digest": audited["2.0"].digest,
            "status": "match",
        },
    ]


def test_report_csv_markdown_and_table_carry_the_same_rows(
    cli: CliRunner, registry: LocalRegistry, repo: str, audited: dict[str, PushedImage]
) -> None:
    rows = report_rows(cli)

    as_csv = cli("report", "--format", "csv")
    assert as_csv.code == 0
    assert as_csv.out.splitlines()[0] == ",".join(REPORT_FIELDS)
    parsed = list(csv.DictReader(io.StringIO(as_csv.out)))
    assert parsed == [{name: "" if row[name] is None else row[name] for name in REPORT_FIELDS} for row in rows]

    image = f"{registry.host}/{repo}"
    cells = [
        [
            image,
            row["tag"],
            row["trusted_digest"],
            row["source"],
            row["recorded_at"],
            row["live_digest"],
            row["status"],
            row["since"],
        ]
        for row in rows
    ]
    markdown = cli(
        "report", "--format", "markdown"
    )  # the incident report's section (tests/integration/test_incident_report.py)
    assert markdown.code == 0
    assert [line.split(" | ")[0].removeprefix("| ") for line in markdown.out.splitlines() if line.startswith("| ")][
        1:
    ] == [f"{image}:{row[1]}".replace("-", "\\-").replace(".", "\\.") for row in cells]

    table = cli("report", "--format", "table")
    assert table.code == 0
    lines = table.out.splitlines()
    assert lines[0].split() == [
        "IMAGE",
        "TAG",
        "TRUSTED",
        "DIGEST",
        "SOURCE",
        "RECORDED",
        "AT",
        "LIVE",
        "DIGEST",
        "VERDICT",
        "SINCE",
    ]
    assert [line.split() for line in lines[1:]] == cells


def test_report_narrows_to_releases_recorded_in_a_window(cli: CliRunner, audited: dict[str, PushedImage]) -> None:
    windows = {
        ("--recorded-since", "2024-01-01", "--recorded-until", "2024-02-01"): ["1.0"],
        ("--recorded-until", "2024-03-05"): ["1.0", "1.1"],  # a bare date covers that whole day
        ("--recorded-since", "2024-03-05T10:30:00Z"): ["1.1", "2.0"],
        ("--recorded-since", "2024-03-05T10:30:01Z", "--recorded-until", "2025-01-01"): [],
    }
    assert {window: [row["tag"] for row in report_rows(cli, *window)] for window in windows} == windows


def test_trust_export_imports_into_a_trust_file_unchanged(
    cli: CliRunner, registry: LocalRegistry, repo: str, tmp_path: Path
) -> None:
    pusher = registry.pusher
    first = pusher.push_image(repo, "1.0", "docker")
    index = pusher.push_image(repo, "2.0", "oci-index")
    rebuilt = pusher.push_image(repo, None, "docker")
    assert cli("record", pinned(registry, first), "--source", SOURCE, "--commit", "c1").code == 0
    assert cli("record", pinned(registry, index), "--source", SOURCE).code == 0
    replace = ("--source", SOURCE, "--replace", "--reason", "rebuild")
    assert cli("record", registry.reference(repo, "1.0", rebuilt.digest), *replace).code == 0

    exported = tmp_path / "export.json"
    assert cli("trust", "export", "--format", "json", "-o", exported) == CliResult(0, "", "")
    trust_file = tmp_path / "trust.json"
    assert cli("trust", "import", exported, "--trust-file", trust_file) == CliResult(
        0, "created 2, unchanged 0, conflicts 0\n1 history entries in the input were not imported\n", ""
    )
    again = cli("trust", "export", "--format", "json", "--trust-file", trust_file)
    assert again.code == 0
    original = json.loads(exported.read_text(encoding="utf-8"))
    assert len(original["history"]) == 1
    assert json.loads(again.out) == {**original, "history": []}
    # Importing the same export again changes nothing.
    assert cli("trust", "import", exported, "--trust-file", trust_file).out.startswith(
        "created 0, unchanged 2, conflicts 0\n"
    )

    as_csv = cli("trust", "export", "--format", "csv")
    csv_file = tmp_path / "export.csv"
    csv_file.write_text(as_csv.out, encoding="utf-8")
    other_file = tmp_path / "other.json"
    assert cli("trust", "import", csv_file, "--trust-file", other_file).out == "created 2, unchanged 0, conflicts 0\n"
    assert cli("trust", "export", "--format", "csv", "--trust-file", other_file).out == as_csv.out


# --------------------------------------------------------------------------------------------------- local mode


def test_a_local_run_prints_alerts_and_a_dry_run_saves_nothing(
    bare_cli: CliRunner, registry: LocalRegistry, repo: str, tmp_path: Path
) -> None:
    cli = bare_cli
    trust_file, state_file = tmp_path / "trust.json", tmp_path / "state.json"
    stores = ("--trust-file", trust_file, "--state-file", state_file)
    release = registry.pusher.push_image(repo, "1.0", "oci")
    assert cli("record", pinned(registry, release), "--source", SOURCE, "--trust-file", trust_file) == CliResult(
        0, f"created: {pinned(registry, release)}\n", ""
    )

    dry = cli("run", *stores, "--dry-run")
    assert (dry.code, dry.out) == (0, "")
    assert not state_file.exists()

    clean = cli("run", *stores)
    assert (clean.code, clean.out) == (0, "")
    saved = state_file.read_bytes()
    assert json.loads(saved)["tags"][0]["last_verdict"] == "match"

    tampered = registry.pusher.tamper(repo, "1.0")
    dry = cli("run", *stores, "--dry-run")
    assert (dry.code, dry.out) == (1, "")
    assert "checked 1 tag(s): 1 drift; 1 finding(s) would alert in 0 message(s)" in dry.err
    assert state_file.read_bytes() == saved

    breach = cli("run", *stores)
    assert breach.code == 1
    reference = registry.reference(repo, "1.0")
    assert breach.out == (
        f"DRIFT: {reference} (1 of 1 tags)\n"
        f"- {reference} [new]: drift; live {tampered.digest}; trusted {release.digest}; "
        f"serves {short(tampered.digest)}, CI recorded {short(release.digest)}\n"
        f"run {breach.run_id}\n\n"
    )
    assert json.loads(state_file.read_bytes())["tags"][0]["alerted_verdict"] == "drift"

    quiet = cli("run", *stores)
    assert (quiet.code, quiet.out) == (1, "")


# --------------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "command",
    [
        ("run",),
        ("report",),
        ("trust", "export"),
        ("watch", "example.com/team/app"),
        ("record", "example.com/team/app:1@sha256:" + "a" * 64, "--source", SOURCE, "--offline"),
    ],
)
def test_a_missing_trust_table_variable_is_named(
    bare_cli: CliRunner, aws: AwsClients, command: tuple[str, ...]
) -> None:
    assert bare_cli(*command) == CliResult(
        2,
        "",
        "digest-audit: error: no trust store configured\n  hint: set TRUSTED_DIGESTS_TABLE or pass --trust-file FILE\n",
    )


def test_run_without_a_topic_says_which_variable_to_set(cli: CliRunner, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ALERT_TOPIC_ARN")
    assert cli("run") == CliResult(
        2,
        "",
        "digest-audit: error: no alert topic configured\n  hint: set ALERT_TOPIC_ARN or pass --print-alerts\n",
    )


def test_a_table_that_does_not_exist_is_named_with_the_init_hint(
    cli: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRUSTED_DIGESTS_TABLE", "no-such-table")
    result = cli("run")
    assert result.code == 4
    assert result.out == ""
    lines = result.err.splitlines()
    assert lines[0] == "digest-audit: error: DynamoDB Scan on table 'no-such-table' failed: the table does not exist"
    assert lines[1].startswith("  hint: run `digest-audit init` or deploy the stack; else check TRUSTED_DIGESTS_TABLE")
    assert len(lines) == 2


# "Linux/AMD64" is no longer malformed: platforms are normalised as docker pull does (platforms.py)
@pytest.mark.parametrize("platform", ["linux", "linux/", "linux/amd64/v8/extra", "linux amd64"])
def test_check_refuses_a_malformed_platform(
    bare_cli: CliRunner, registry: LocalRegistry, repo: str, platform: str
) -> None:
    assert bare_cli("check", registry.reference(repo, "1.0"), "--platform", platform) == CliResult(
        2,
        "",
        f"digest-audit: error: invalid --platform {platform!r}\n"
        "  hint: use OS/ARCH[/VARIANT], e.g. linux/amd64, linux/arm64 or linux/arm/v7\n",
    )


def test_check_names_a_references_file_it_cannot_read(bare_cli: CliRunner, tmp_path: Path) -> None:
    missing = tmp_path / "missing.txt"
    assert bare_cli("check", "-f", missing) == CliResult(
        2,
        "",
        f"digest-audit: error: cannot read references file {missing}: No such file or directory\n"
        "  hint: check the path given to -f\n",
    )
    assert bare_cli("check", "-f", tmp_path) == CliResult(
        2,
        "",
        f"digest-audit: error: cannot read references file {tmp_path}: Is a directory\n"
        "  hint: check the path given to -f\n",
    )
    latin1 = tmp_path / "refs.txt"
    latin1.write_bytes("nginx:1.27 # caf\xe9\n".encode("latin-1"))
    assert bare_cli("check", "-f", latin1) == CliResult(
        2, "", f"digest-audit: error: references file {latin1} is not UTF-8 text\n  hint: save it as UTF-8\n"
    )


def test_check_reports_match_and_drift_against_the_live_registry(
    bare_cli: CliRunner, registry: LocalRegistry, repo: str
) -> None:
    release = registry.pusher.push_image(repo, "1.0", "docker")
    stale = registry.pusher.push_image(repo, None, "docker")
    references = [pinned(registry, release), registry.reference(repo, "1.0", stale.digest)]

    result = bare_cli("check", "--json", *references)
    assert result.code == 1
    rows = json.loads(result.out)
    assert [(row["reference"], row["status"], row["live_digest"]) for row in rows] == [
        (references[0], "match", release.digest),
        (references[1], "drift", release.digest),
    ]
    assert rows[1]["reason"] == f"serves {short(release.digest)}, pinned {short(stale.digest)}"
    assert result.err == "checked 2 reference(s): 1 drift, 1 match\n"


def test_check_selects_one_platform_of_an_index(bare_cli: CliRunner, registry: LocalRegistry, repo: str) -> None:
    index = registry.pusher.push_image(repo, "2.0", "oci-index")
    arm64 = index.platforms["linux/arm64/v8"]

    resolved = bare_cli("check", "--json", "--platform", "linux/arm64/v8", registry.reference(repo, "2.0"))
    assert resolved.code == 0
    [row] = json.loads(resolved.out)
    assert (row["status"], row["live_digest"], row["platform"]) == ("resolved", arm64, "linux/arm64/v8")
    assert row["platforms"] == index.platforms

    pinned_child = registry.reference(repo, "2.0", arm64)
    assert json.loads(bare_cli("check", "--json", "--platform", "linux/arm64/v8", pinned_child).out)[0]["status"] == (
        "match"
    )
    absent = bare_cli("check", "--json", "--platform", "linux/s390x", registry.reference(repo, "2.0"))
    assert absent.code == 2  # a usage problem listing what the index has, never `missing` (platforms.py)
    assert json.loads(absent.out)[0]["reason"] == (
        "platform linux/s390x is not in the index (it has linux/amd64, linux/arm64/v8)"
    )


def test_trust_import_reports_conflicts_and_never_replaces(
    cli: CliRunner, registry: LocalRegistry, repo: str, tmp_path: Path, aws: AwsClients, tables: TableNames
) -> None:
    release = registry.pusher.push_image(repo, "1.0", "docker")
    assert cli("record", pinned(registry, release), "--source", SOURCE).code == 0
    other = "sha256:" + "cd" * 32
    rows = tmp_path / "rows.csv"
    rows.write_text(
        "registry,repository,tag,digest,source,recorded_at\n"
        f"{registry.host},{repo},1.0,{other},{SOURCE},2024-01-10T09:00:00Z\n"
        f"{registry.host},{repo},1.1,{other},{SOURCE},2024-01-10T09:00:00Z\n",
        encoding="utf-8",
    )

    result = cli("trust", "import", rows)
    assert result == CliResult(
        1,
        "created 1, unchanged 0, conflicts 1\n"
        f"conflict (line 2): {registry.reference(repo, '1.0')} is trusted as {release.digest}, not {other}\n"
        "  hint: conflicting rows were not imported; if a new digest is a legitimate re-release, "
        "record it with `digest-audit record --replace --reason TEXT`\n",
        "",
    )
    store = DynamoTrustStore(tables.trust, aws.dynamodb())
    assert [(r.tag, str(r.digest)) for r in store.load_all()] == [("1.0", release.digest), ("1.1", other)]
    assert store.history(f"{registry.host}/{repo}", "1.0") == []
    # The table is written record by record; running the same import again (e.g. after it stopped half-way)
    # is safe: what is already trusted is unchanged.
    assert cli("trust", "import", rows).out.startswith("created 0, unchanged 1, conflicts 1\n")
    assert [(r.tag, str(r.digest)) for r in store.load_all()] == [("1.0", release.digest), ("1.1", other)]


@pytest.mark.parametrize("flags", [(), ("--platforms",)], ids=["plain", "with-platforms"])
def test_check_explains_a_pin_that_is_a_child_of_the_live_index(
    bare_cli: CliRunner, registry: LocalRegistry, repo: str, flags: tuple[str, ...]
) -> None:
    """A platform digest pinned against a multi-arch tag is the classic false drift; the reason must say so."""
    index = registry.pusher.push_image(repo, "2.0", "oci-index")
    pinned_child = registry.reference(repo, "2.0", index.platforms["linux/arm64/v8"])

    result = bare_cli("check", "--json", *flags, pinned_child)
    assert result.code == 1
    [row] = json.loads(result.out)
    assert (row["status"], row["live_digest"]) == ("drift", index.digest)
    assert row["reason"] == (
        f"the pinned digest is the linux/arm64/v8 child of the live index {short(index.digest)}; "
        "add --platform linux/arm64/v8 to compare that child"
    )


def test_record_refuses_a_digest_the_registry_does_not_serve(
    cli: CliRunner, registry: LocalRegistry, repo: str, aws: AwsClients, tables: TableNames
) -> None:
    registry.pusher.push_image(repo, "1.0", "docker")
    unknown = "sha256:" + "ef" * 32

    result = cli("record", registry.reference(repo, "1.0", unknown), "--source", SOURCE)
    # The reference is named once: the registry client's own message would name it a second time.
    assert result == CliResult(
        3,
        "",
        f"digest-audit: error: cannot read {registry.reference(repo, None, unknown)} from the registry to record "
        "it: digest not found\n"
        "  hint: record only digests the registry serves, or pass --offline to record without checking\n",
    )
    assert DynamoTrustStore(tables.trust, aws.dynamodb()).load_all() == []


def test_record_resolve_refuses_a_tag_the_registry_does_not_have(
    cli: CliRunner, registry: LocalRegistry, repo: str, aws: AwsClients, tables: TableNames
) -> None:
    registry.pusher.push_image(repo, "1.0", "docker")

    result = cli("record", "--resolve", registry.reference(repo, "9.9"), "--source", "first-adoption")
    assert result == CliResult(
        3,
        "",
        f"digest-audit: error: cannot resolve {registry.reference(repo, '9.9')}: tag not found\n"
        "  hint: check the name, the tag and the registry credentials\n",
    )
    assert DynamoTrustStore(tables.trust, aws.dynamodb()).load_all() == []


# --------------------------------------------------------------------------------------------------- hostile data


def test_an_invalid_watch_entry_is_refused_on_import_and_one_warning_at_run_time(
    cli: CliRunner, registry: LocalRegistry, repo: str, aws: AwsClients, tables: TableNames, tmp_path: Path
) -> None:
    release = registry.pusher.push_image(repo, "1.0", "oci")
    assert cli("record", pinned(registry, release), "--source", SOURCE).code == 0
    bad = {"registry": "Not A Host!", "repository": "org/app", "track_new_tags": True}
    document = write_json(tmp_path / "import.json", {"schema_version": 1, "trusted": [], "watch": [bad]})

    refused = cli("trust", "import", document)
    assert refused.code == 2
    assert "watch entry 1" in refused.err and "invalid image 'Not A Host!/org/app'" in refused.err
    assert "Traceback" not in refused.err

    # Written to the table by hand instead: the audit of everything else goes on.
    aws.dynamodb().put_item(
        TableName=tables.trust,
        Item={
            "image": {"S": "Not A Host!/org/app"},
            "sk": {"S": "$watch"},
            **{name: {"S": value} for name, value in bad.items() if isinstance(value, str)},
            "track_new_tags": {"BOOL": True},
        },
    )
    run = cli("run", "--dry-run")
    assert run.code == 3  # not a usage error (2): one entry could not be used, every tag was checked
    assert "checked 1 tag(s): 1 match" in run.err
    assert "could not list the tags of Not A Host!/org/app: invalid watch settings, not used" in run.err
