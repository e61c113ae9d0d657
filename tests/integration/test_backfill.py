"""`digest-audit trust backfill` against fake GitHub and GitLab APIs over real HTTP, into a trust file and DynamoDB.

The archives are zip files built here from real-format logs; the fake GitHub redirects log downloads to a storage
server on another port (another origin), so the test sees whether the token travelled with the redirect.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path
from typing import Any

import pytest

from audit.adapters.dynamodb_store import DynamoTrustStore
from audit.adapters.file_store import FileTrustStore
from tests.support import ci_log_samples as samples
from tests.support.aws_fixtures import AwsClients, TableNames
from tests.support.ci_log_samples import digest, github, gitlab
from tests.support.ci_servers import Answer, CiServers, zip_archive
from tests.support.cli_runner import CliRunner

pytestmark = pytest.mark.integration

TOKEN = "ghp_not-a-real-token-0123456789"
SHA = {n: f"{n:x}" * 40 for n in range(1, 8)}


@pytest.fixture
def cli(files_cli: CliRunner, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    """The CLI with only local files, and CI tokens that are not real."""
    monkeypatch.setenv("GITHUB_TOKEN", TOKEN)
    monkeypatch.setenv("GITLAB_TOKEN", "glpat-not-real")
    return files_cli


def release_archive(step_log: str, job: str = "release") -> bytes:
    """Both shapes GitHub puts in one archive: the whole job (`0_release.txt`) and its step files."""
    setup = github("##[group]Run actions/checkout@v4\nSyncing repository: org/app\n##[endgroup]")
    return zip_archive(
        {f"0_{job}.txt": setup + step_log, f"{job}/1_Set up job.txt": setup, f"{job}/2_Push.txt": step_log}
    )


@pytest.fixture
def history(ci_servers: CiServers) -> CiServers:
    """Five successful runs, oldest first: 1.3.3 pushed, two expired, 2.0 by BuildKit, 1.3.3 again (another digest)."""
    gh = ci_servers.github
    gh.add_run(
        101, "2021-01-10T09:00:00Z", SHA[1], release_archive(github(samples.DOCKER_PUSH.replace("1.3.4", "1.3.3")))
    )
    gh.add_run(102, "2021-01-20T09:00:00Z", SHA[2], None, status=410)
    gh.add_run(103, "2021-01-25T09:00:00Z", SHA[3], None, status=404)
    gh.add_run(104, "2021-02-01T09:00:00Z", SHA[4], release_archive(github(samples.BUILDKIT_PUSH)))
    again = samples.DOCKER_PUSH.replace("1.3.4", "1.3.3").replace(digest("a"), digest("9"))
    gh.add_run(105, "2021-03-01T09:00:00Z", SHA[5], release_archive(github(again)))
    return ci_servers


def plan_of(cli: CliRunner, *argv: str | Path) -> list[dict[str, Any]]:
    result = cli("trust", "backfill", *argv, "--json")
    assert result.code == 0, result.err
    plan = json.loads(result.out)
    assert isinstance(plan, list)
    return plan


def summary(plan: list[dict[str, Any]]) -> list[tuple[str, str | None, str | None, str]]:
    return [
        (entry["status"], entry["reference"], entry["digest"], entry["source"].rsplit("/", 1)[-1]) for entry in plan
    ]


def test_github_plan_lists_evidence_and_expired_logs_and_writes_nothing(
    cli: CliRunner, history: CiServers, tmp_path: Path
) -> None:
    trust_file = tmp_path / "trusted.json"
    result = cli(
        "trust",
        "backfill",
        "--github",
        "org/app",
        "--api-url",
        history.github.url,
        "--trust-file",
        trust_file,
        "--json",
    )

    assert result.code == 0, result.err
    plan = json.loads(result.out)
    assert summary(plan) == [
        ("new", "openzaak/open-zaak:1.3.3", digest("a"), "101"),
        ("log-expired", None, None, "102"),
        ("log-expired", None, None, "103"),
        ("new", "ghcr.io/org/app:2.0", digest("b"), "104"),
        ("new", "ghcr.io/org/app:latest", digest("b"), "104"),
        ("conflict", "openzaak/open-zaak:1.3.3", digest("9"), "105"),
    ]
    assert plan[0] == {
        "reference": "openzaak/open-zaak:1.3.3",
        "digest": digest("a"),
        "source": "https://github.com/org/app/actions/runs/101",
        "commit": SHA[1],
        "evidence": "job 'release', step 'Push', line 9: docker push",
        "status": "new",
        "pushed_at": "2021-01-10T09:00:00Z",
    }
    assert plan[1]["evidence"] == "logs gone (HTTP 410): past the repository's log retention"
    assert plan[5]["trusted_digest"] == digest("a")  # the conflict is with run 101 of the same back-fill
    assert not trust_file.exists()
    assert "backfill: 5/5 runs read" in result.err
    assert "nothing written (plan only: add --apply)" in result.err


def test_token_goes_to_the_api_only_never_to_the_redirected_storage(
    cli: CliRunner, history: CiServers, tmp_path: Path
) -> None:
    plan_of(cli, "--github", "org/app", "--api-url", history.github.url, "--trust-file", str(tmp_path / "t.json"))

    api = history.github.seen
    assert api and all(seen.authorization == f"Bearer {TOKEN}" for seen in api)
    pages = [seen.query["page"] for seen in api if seen.path.endswith("/actions/runs")]
    assert pages == [["1"], ["2"], ["3"]]  # five runs, two per page: the Link header asked for more twice
    assert {seen.query["status"][0] for seen in api if seen.path.endswith("/actions/runs")} == {"success"}
    storage = history.storage.seen
    assert len(storage) == 3  # the three archives that had not expired
    assert all(seen.authorization is None and seen.private_token is None for seen in storage)


def test_apply_records_new_entries_with_source_commit_and_push_time(
    cli: CliRunner, history: CiServers, tmp_path: Path
) -> None:
    trust_file = tmp_path / "trusted.json"
    argv = ("trust", "backfill", "--github", "org/app", "--api-url", history.github.url, "--trust-file", trust_file)

    result = cli(*argv, "--apply")

    assert result.code == 1  # the conflicting 1.3.3 of run 105 was not recorded
    assert "conflict (not recorded)" in result.out
    assert "recorded 3" in result.err
    store = FileTrustStore(trust_file)
    record = store.get("registry-1.docker.io/openzaak/open-zaak", "1.3.3")
    assert record is not None
    assert (str(record.digest), record.source, record.commit, record.recorded_at.isoformat()) == (
        digest("a"),
        "https://github.com/org/app/actions/runs/101",
        SHA[1],
        "2021-01-10T09:00:00+00:00",
    )
    assert {(r.tag, str(r.digest)) for r in store.load_all()} == {
        ("1.3.3", digest("a")),
        ("2.0", digest("b")),
        ("latest", digest("b")),
    }

    again = plan_of(cli, *argv[2:])
    assert [entry["status"] for entry in again] == ["same", "log-expired", "log-expired", "same", "same", "conflict"]


def test_apply_to_dynamodb_replaces_with_a_reason_and_moving_tags_append(
    cli: CliRunner, history: CiServers, aws: AwsClients, tables: TableNames
) -> None:
    assert cli("watch", "ghcr.io/org/app", "--moving", "latest").code == 0
    newer = samples.BUILDKIT_PUSH.replace(digest("b"), digest("c")).replace("app:2.0", "app:2.1")
    history.github.add_run(106, "2021-04-01T09:00:00Z", SHA[6], release_archive(github(newer)))
    argv = ("trust", "backfill", "--github", "org/app", "--api-url", history.github.url, "--apply")

    assert cli(*argv, "--replace").code == 2
    result = cli(*argv, "--replace", "--reason", "1.3.3 was rebuilt in run 105 (ticket SEC-12)")

    assert result.code == 0, result.out + result.err
    store = DynamoTrustStore(tables.trust, aws.dynamodb())
    pinned = store.get("registry-1.docker.io/openzaak/open-zaak", "1.3.3")
    assert pinned is not None and str(pinned.digest) == digest("9")
    assert pinned.reason == "1.3.3 was rebuilt in run 105 (ticket SEC-12)"
    assert [str(old.digest) for old in store.history("registry-1.docker.io/openzaak/open-zaak", "1.3.3")] == [
        digest("a")
    ]
    latest = store.get("ghcr.io/org/app", "latest")
    assert latest is not None and str(latest.digest) == digest("c")
    assert [str(old.digest) for old in store.history("ghcr.io/org/app", "latest")] == [digest("b")]


def test_rate_limits_are_waited_out_and_reported_on_stderr(cli: CliRunner, history: CiServers, tmp_path: Path) -> None:
    history.github.pause_by_reset()
    history.github.pause_by_retry_after()

    result = cli(
        "trust",
        "backfill",
        "--github",
        "org/app",
        "--api-url",
        history.github.url,
        "--trust-file",
        tmp_path / "t.json",
        "--json",
    )

    assert result.code == 0, result.err
    assert [entry["status"] for entry in json.loads(result.out)].count("new") == 3
    assert result.err.count("rate limited by 127.0.0.1: waiting") == 2
    assert [seen.query.get("page") for seen in history.github.seen[:3]] == [["1"], ["1"], ["1"]]


def test_a_rate_limit_longer_than_max_wait_stops_with_a_clear_error(
    cli: CliRunner, history: CiServers, tmp_path: Path
) -> None:
    history.github.pause_by_retry_after()

    result = cli(
        "trust",
        "backfill",
        "--github",
        "org/app",
        "--api-url",
        history.github.url,
        "--max-wait",
        "0.5",
        "--trust-file",
        tmp_path / "t.json",
    )

    assert result.code == 3
    assert "rate limited by 127.0.0.1 for 1 s more" in result.err
    assert "Traceback" not in result.err


def bomb() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("release/1_Push.txt", b"\0" * (20 * 1024 * 1024))
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("archive", "reason"),
    [
        (bomb(), "expands"),
        (zip_archive({f"job{n}/1_step.txt": "x" for n in range(1001)}), "1001 entries (limit 1000)"),
        (
            zip_archive({"../../etc/cron.d/evil.txt": github(samples.DOCKER_PUSH)}),
            "unsafe entry name '../../etc/cron.d/evil.txt'",
        ),
        (b"<html>storage error</html>", "not a zip archive"),
    ],
    ids=["zip-bomb", "many-entries", "path-traversal", "not-a-zip"],
)
def test_a_hostile_archive_is_refused_for_its_run_only(
    cli: CliRunner, ci_servers: CiServers, tmp_path: Path, archive: bytes, reason: str
) -> None:
    ci_servers.github.add_run(201, "2021-01-01T00:00:00Z", SHA[1], archive)
    ci_servers.github.add_run(202, "2021-01-02T00:00:00Z", SHA[2], release_archive(github(samples.BUILD_PUSH_ACTION)))

    plan = plan_of(
        cli, "--github", "org/app", "--api-url", ci_servers.github.url, "--trust-file", str(tmp_path / "t.json")
    )

    assert [entry["status"] for entry in plan] == ["log-unreadable", "new", "new"]
    assert reason in plan[0]["evidence"]


def test_gitlab_jobs_and_traces(cli: CliRunner, ci_servers: CiServers, tmp_path: Path) -> None:
    lab = ci_servers.gitlab
    trace = gitlab(
        samples.DOCKER_PUSH.replace("openzaak/open-zaak", "registry.gitlab.com/group/app").replace(
            "docker.io/registry.gitlab.com", "registry.gitlab.com"
        )
    )
    lab.add_job(11, "release-image", "2024-05-14T11:19:00Z", SHA[1], trace)
    lab.add_job(12, "release-image", "2024-05-20T11:19:00Z", SHA[2], None)
    lab.add_job(13, "mirror", "2024-05-21T11:19:00Z", SHA[3], gitlab(samples.CRANE_COPY))
    trust_file = tmp_path / "trusted.json"

    result = cli(
        "trust",
        "backfill",
        "--gitlab",
        "group/app",
        "--api-url",
        f"{lab.url}/api/v4",
        "--trust-file",
        trust_file,
        "--apply",
    )

    assert result.code == 0, result.err
    assert [line.split()[0] for line in result.out.splitlines()[1:]] == ["new", "log-expired", "new"]
    assert all(seen.private_token == "glpat-not-real" for seen in lab.seen)
    assert [seen.query.get("page") for seen in lab.seen if seen.path.endswith("/jobs")] == [["1"], ["2"]]
    record = FileTrustStore(trust_file).get("registry.gitlab.com/group/app", "1.3.4")
    assert record is not None
    assert (record.source, record.commit) == ("https://gitlab.example.com/group/app/-/jobs/11", SHA[1])


def test_saved_log_of_any_ci_with_ambiguity_reported(cli: CliRunner, tmp_path: Path) -> None:
    log = tmp_path / "build.log"
    second = samples.DOCKER_PUSH.replace(digest("a"), digest("b"))
    log.write_text(github(samples.SKOPEO_COPY + samples.DOCKER_PUSH + second), encoding="utf-8")

    plan = plan_of(
        cli,
        "--log",
        str(log),
        "--source",
        "https://ci.example/run/7",
        "--commit",
        SHA[7],
        "--trust-file",
        str(tmp_path / "t.json"),
    )

    assert summary(plan) == [
        ("new", "quay.io/org/cli:5.2", digest("5"), "7"),
        ("ambiguous", "openzaak/open-zaak:1.3.4", None, "7"),
    ]
    assert plan[1]["digests"] == [digest("a"), digest("b")]
    assert plan[1]["evidence"].endswith("the same job pushed this tag with 2 different digests")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--github", "org/app/../x"], "--github 'org/app/../x' is not OWNER/REPO"),
        (["--github", "org/app", "--api-url", "http://ci.example.com"], "uses plain http"),
        (["--gitlab", "group/../app"], "is not a project path or id"),
        (["--log", "build.log"], "--log needs --source URL"),
        (["--log", "build.log", "--source", "javascript:alert(1)"], "is not the web URL of a CI run"),
        (["--gitlab", "group/app", "--branch", "main"], "--branch only go with --github"),
        (["--github", "org/app", "--replace", "--reason", "x"], "--replace only goes with --apply"),
        (["--github", "org/app", "--workflow", "../x"], "is neither a workflow id nor a file name"),
        (["--github", "org/app", "--apply", "--replace"], "--replace needs --reason TEXT"),
        (["--github", "org/app", "--reason", "x"], "--reason only goes with --replace"),
        (
            ["--github", "org/app", "--apply", "--replace", "--reason", "ok\x1b[2Jforged line"],
            "--reason contains a control or format character",
        ),
        (["--github", "org/app", "--recorded-by", "ci\nadmin"], "--recorded-by contains a control or format"),
        (["--log", "b.log", "--source", "https://ci.example.com/run/1", "--commit", "a\u202eb"], "--commit contains"),
    ],
)
def test_bad_input_is_a_usage_error_naming_the_input(
    cli: CliRunner, tmp_path: Path, argv: list[str], message: str
) -> None:
    result = cli("trust", "backfill", *argv, "--trust-file", str(tmp_path / "t.json"))

    assert result.code == 2
    assert message in result.err
    assert "Traceback" not in result.err


def test_a_redirect_to_plain_http_elsewhere_is_refused_for_that_run(
    cli: CliRunner, ci_servers: CiServers, tmp_path: Path
) -> None:
    ci_servers.github.add_run(301, "2021-01-01T00:00:00Z", SHA[1], release_archive(github(samples.DOCKER_PUSH)))
    ci_servers.github.logs[301] = Answer(302, headers={"Location": "http://storage.example.com/301.zip?sig=s3cr3t"})

    plan = plan_of(cli, "--github", "org/app", "--api-url", ci_servers.github.url, "--trust-file", tmp_path / "t.json")

    assert [(entry["status"], entry["source"]) for entry in plan] == [
        ("log-unreadable", "https://github.com/org/app/actions/runs/301")
    ]
    assert "redirect target 'http://storage.example.com/301.zip' uses plain http" in plan[0]["evidence"]
    assert "s3cr3t" not in json.dumps(plan)  # a signed URL's query is a credential: never printed


def test_workflow_branch_window_and_run_cap_reach_the_api(cli: CliRunner, history: CiServers, tmp_path: Path) -> None:
    plan = plan_of(
        cli, "--github", "org/app", "--api-url", history.github.url, "--trust-file", tmp_path / "t.json",
        "--workflow", "release.yml", "--branch", "main", "--since", "2021-01-01", "--until", "2021-12-31",
        "--max-runs", "2",
    )  # fmt: skip

    (listing, *_) = [seen for seen in history.github.seen if seen.path.endswith("/runs")]
    assert listing.path == "/repos/org/app/actions/workflows/release.yml/runs"
    assert (listing.query["branch"], listing.query["created"]) == (
        ["main"],
        ["2021-01-01T00:00:00Z..2021-12-31T23:59:59Z"],
    )
    assert [entry["source"].rsplit("/", 1)[-1] for entry in plan] == ["104", "104", "105"]  # the two newest runs
