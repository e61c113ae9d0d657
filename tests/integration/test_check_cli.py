"""`digest-audit check` end to end against real registries: exit codes, the JSON contract and stderr summary.

Most runs go through `audit.cli.main` in-process (capsys); one runs `python -m audit` as a real subprocess.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from audit.cli import main
from audit.config import ALL_VARIABLES, ENV_ENABLE_ECR, ENV_INSECURE_REGISTRIES
from audit.models import Digest
from tests.support.docker_config import write_docker_config
from tests.support.local_registry import LocalRegistry
from tests.support.pusher import PushedImage
from tests.support.registry_process import free_port

pytestmark = pytest.mark.integration

PROJECT_ROOT = Path(__file__).resolve().parents[2]
# The fields `check --json` promises for every reference.
ROW_FIELDS = (
    "reference",
    "registry",
    "repository",
    "tag",
    "trusted_digest",
    "live_digest",
    "status",
    "reason",
    "checked_at",
    "platforms",
)


def short(digest: str) -> str:
    return Digest.parse(digest).short


@dataclass(frozen=True)
class Scenario:
    """Images on the module's plain registry in every state `check` must tell apart."""

    registry: LocalRegistry
    repository: str
    pinned: PushedImage  # still served: a match
    original: PushedImage  # what "1.1" served before it was re-pushed
    tampered: PushedImage  # what "1.1" serves now
    deleted: PushedImage  # "1.2", deleted
    dead_host: str  # 127.0.0.1:PORT with nothing listening

    def ref(self, tag: str, digest: str | None = None) -> str:
        return self.registry.reference(self.repository, tag, digest)

    @property
    def match_ref(self) -> str:
        return self.ref("1.0", self.pinned.digest)

    @property
    def drift_ref(self) -> str:
        return self.ref("1.1", self.original.digest)

    @property
    def missing_ref(self) -> str:
        return self.ref("1.2", self.deleted.digest)

    @property
    def unpinned_ref(self) -> str:
        return self.ref("1.0")

    @property
    def unreachable_ref(self) -> str:
        return f"{self.dead_host}/team/app:v1@{self.pinned.digest}"


@pytest.fixture(scope="module")
def scenario(registry: LocalRegistry) -> Scenario:
    repository = f"cli-tests/app-{secrets.token_hex(3)}"
    pusher = registry.pusher
    pinned = pusher.push_image(repository, "1.0", "docker")
    original = pusher.push_image(repository, "1.1", "oci")
    tampered = pusher.tamper(repository, "1.1")
    deleted = pusher.push_image(repository, "1.2", "docker")
    pusher.delete_manifest(repository, deleted.digest)
    return Scenario(registry, repository, pinned, original, tampered, deleted, f"127.0.0.1:{free_port()}")


@pytest.fixture
def cli_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, scenario: Scenario) -> dict[str, str]:
    """Only what the test sets: the plain registry (and the dead port) listed insecure, no docker login, no ECR."""
    for variable in ALL_VARIABLES:
        monkeypatch.delenv(variable, raising=False)
    empty_docker_config = tmp_path / "no-docker-login"
    empty_docker_config.mkdir()
    values = {
        ENV_INSECURE_REGISTRIES: f"{scenario.registry.host},{scenario.dead_host}",
        ENV_ENABLE_ECR: "false",
        "DOCKER_CONFIG": str(empty_docker_config),
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    return values


@dataclass(frozen=True)
class Run:
    exit_code: int
    stdout: str
    stderr: str

    @property
    def rows(self) -> list[dict[str, Any]]:
        document = json.loads(self.stdout)  # the whole of stdout must be one JSON document
        assert isinstance(document, list)
        return document


def check(capsys: pytest.CaptureFixture[str], *args: str) -> Run:
    capsys.readouterr()
    code = main(["check", *args])
    captured = capsys.readouterr()
    return Run(code, captured.out, captured.err)


def contract(row: dict[str, Any]) -> dict[str, Any]:
    """The promised fields, minus the clock."""
    assert set(ROW_FIELDS) <= set(row), f"missing fields: {set(ROW_FIELDS) - set(row)}"
    return {name: row[name] for name in ROW_FIELDS if name != "checked_at"}


def expected_row(
    scenario: Scenario,
    reference: str,
    tag: str | None,
    *,
    trusted: str | None,
    live: str | None,
    status: str,
    reason: str | None,
    platforms: dict[str, str] | None = None,
) -> dict[str, Any]:
    return {
        "reference": reference,
        "registry": scenario.registry.host,
        "repository": scenario.repository,
        "tag": tag,
        "trusted_digest": trusted,
        "live_digest": live,
        "status": status,
        "reason": reason,
        "platforms": platforms,
    }


# --- each verdict on its own, with its exit code ------------------------------------------------------------


def test_matching_pin_exits_0(capsys: pytest.CaptureFixture[str], scenario: Scenario, cli_env: object) -> None:
    run = check(capsys, "--json", scenario.match_ref)

    assert run.exit_code == 0
    [row] = run.rows
    assert contract(row) == expected_row(
        scenario,
        scenario.match_ref,
        "1.0",
        trusted=scenario.pinned.digest,
        live=scenario.pinned.digest,
        status="match",
        reason=None,
    )
    assert run.stderr == "checked 1 reference(s): 1 match\n"


def test_a_malformed_variable_of_a_setting_check_never_uses_is_none_of_its_business(
    capsys: pytest.CaptureFixture[str], scenario: Scenario, cli_env: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`check` reads the registry settings only: the audit's variables may be wrong without stopping it."""
    monkeypatch.setenv("DIGEST_AUDIT_REVERIFY_DELAY", "soon")
    monkeypatch.setenv("DIGEST_AUDIT_UNVERIFIABLE_AFTER", "0")

    run = check(capsys, "--json", scenario.match_ref)

    assert run.exit_code == 0
    assert [row["status"] for row in run.rows] == ["match"]


def tampered_pin(s: Scenario) -> tuple[str, dict[str, Any]]:
    reason = f"serves {short(s.tampered.digest)}, pinned {short(s.original.digest)}"
    row = expected_row(
        s, s.drift_ref, "1.1", trusted=s.original.digest, live=s.tampered.digest, status="drift", reason=reason
    )
    return s.drift_ref, row


def deleted_tag(s: Scenario) -> tuple[str, dict[str, Any]]:
    row = expected_row(
        s, s.missing_ref, "1.2", trusted=s.deleted.digest, live=None, status="missing", reason="tag not found"
    )
    return s.missing_ref, row


def unpinned_reference(s: Scenario) -> tuple[str, dict[str, Any]]:
    row = expected_row(s, s.unpinned_ref, "1.0", trusted=None, live=s.pinned.digest, status="resolved", reason=None)
    return s.unpinned_ref, row


@pytest.mark.parametrize(
    ("case", "exit_code"),
    [
        pytest.param(tampered_pin, 1, id="tampered-pin-is-drift-and-exits-1"),
        pytest.param(deleted_tag, 1, id="deleted-tag-is-missing-and-exits-1"),
        pytest.param(unpinned_reference, 0, id="unpinned-reference-is-resolved-and-exits-0"),
    ],
)
def test_one_reference_gives_its_row_and_exit_code(
    capsys: pytest.CaptureFixture[str],
    scenario: Scenario,
    cli_env: object,
    case: Callable[[Scenario], tuple[str, dict[str, Any]]],
    exit_code: int,
) -> None:
    reference, expected = case(scenario)
    run = check(capsys, "--json", reference)

    assert run.exit_code == exit_code
    [row] = run.rows
    assert contract(row) == expected


def test_unreachable_registry_is_unverifiable_and_exits_3(
    capsys: pytest.CaptureFixture[str], scenario: Scenario, cli_env: object
) -> None:
    run = check(capsys, "--json", scenario.unreachable_ref)

    assert run.exit_code == 3
    [row] = run.rows
    assert contract(row) == {
        "reference": scenario.unreachable_ref,
        "registry": scenario.dead_host,
        "repository": "team/app",
        "tag": "v1",
        "trusted_digest": scenario.pinned.digest,
        "live_digest": None,
        "status": "unverifiable",
        "reason": "connection refused",
        "platforms": None,
    }
    assert run.stderr.splitlines() == [
        "checked 1 reference(s): 1 unverifiable",
        f"  unverifiable: {scenario.unreachable_ref}: connection refused",
    ]


def test_all_verdicts_in_one_run(capsys: pytest.CaptureFixture[str], scenario: Scenario, cli_env: object) -> None:
    references = [
        scenario.match_ref,
        scenario.drift_ref,
        scenario.missing_ref,
        scenario.unpinned_ref,
        scenario.unreachable_ref,
    ]
    before = datetime.now(UTC)

    run = check(capsys, "--json", *references)

    after = datetime.now(UTC)
    assert run.exit_code == 1  # drift and missing outrank unverifiable
    assert [row["reference"] for row in run.rows] == references
    assert [row["status"] for row in run.rows] == ["match", "drift", "missing", "resolved", "unverifiable"]
    assert [row["live_digest"] for row in run.rows] == [
        scenario.pinned.digest,
        scenario.tampered.digest,
        None,
        scenario.pinned.digest,
        None,
    ]
    for row in run.rows:
        assert row["checked_at"].endswith("Z")
        assert before <= datetime.fromisoformat(row["checked_at"]) <= after
    assert run.stderr.splitlines() == [
        "checked 5 reference(s): 1 drift, 1 match, 1 missing, 1 resolved, 1 unverifiable",
        f"  unverifiable: {scenario.unreachable_ref}: connection refused",
    ]


def test_without_json_stdout_is_a_table(
    capsys: pytest.CaptureFixture[str], scenario: Scenario, cli_env: object
) -> None:
    run = check(capsys, scenario.match_ref, scenario.drift_ref)

    assert run.exit_code == 1
    header, first, second = run.stdout.splitlines()
    assert header.split() == ["REFERENCE", "STATUS", "LIVE", "DIGEST", "REASON"]
    assert first.split() == [scenario.match_ref, "MATCH", scenario.pinned.digest]
    assert second.split()[:3] == [scenario.drift_ref, "DRIFT", scenario.tampered.digest]


# --- reference files ----------------------------------------------------------------------------------------


def test_references_from_a_file_with_comments(
    capsys: pytest.CaptureFixture[str], scenario: Scenario, cli_env: object, tmp_path: Path
) -> None:
    listing = tmp_path / "images.txt"
    listing.write_text(
        "# images of release 7\n"
        "\n"
        f"{scenario.match_ref}   # the API\n"
        "   # a commented-out line: registry.invalid/none:1\n"
        f"\t{scenario.unpinned_ref}\n"
    )

    run = check(capsys, "--json", scenario.drift_ref, "-f", str(listing))

    assert run.exit_code == 1
    assert [(row["reference"], row["status"]) for row in run.rows] == [
        (scenario.drift_ref, "drift"),
        (scenario.match_ref, "match"),
        (scenario.unpinned_ref, "resolved"),
    ]


def test_a_bad_reference_in_a_file_names_its_line(
    capsys: pytest.CaptureFixture[str], scenario: Scenario, cli_env: object, tmp_path: Path
) -> None:
    listing = tmp_path / "images.txt"
    listing.write_text(f"{scenario.match_ref}\n# fine so far\nteam/App:1.0\n")

    run = check(capsys, "--json", "-f", str(listing))

    assert run.exit_code == 2
    assert run.stdout == ""
    first_line = run.stderr.splitlines()[0]
    assert first_line.startswith("digest-audit: error: ")
    assert f"{listing}:3:" in first_line
    assert "'team/App:1.0'" in first_line


# --- usage errors -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    ["127.0.0.1:5000/Team/App:v1", "team/app:1.0@sha256:abc", "team/app:has space", "team//app"],
)
def test_a_bad_reference_exits_2_naming_it(
    capsys: pytest.CaptureFixture[str], scenario: Scenario, cli_env: object, bad: str
) -> None:
    run = check(capsys, "--json", scenario.match_ref, bad)

    assert run.exit_code == 2
    assert run.stdout == ""  # nothing was checked: the good reference is not reported either
    lines = run.stderr.splitlines()
    assert lines[0].startswith("digest-audit: error: ")
    assert repr(bad) in lines[0]
    assert all(line.startswith("  hint: ") for line in lines[1:])
    assert "Traceback" not in run.stderr


def test_an_invalid_platform_exits_2(capsys: pytest.CaptureFixture[str], scenario: Scenario, cli_env: object) -> None:
    run = check(capsys, "--json", "--platform", "linux", scenario.match_ref)

    assert run.exit_code == 2
    assert run.stdout == ""
    assert run.stderr.splitlines()[0] == "digest-audit: error: invalid --platform 'linux'"


# --- platforms of an index ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def index_image(registry: LocalRegistry) -> PushedImage:
    return registry.pusher.push_image(
        f"cli-tests/multi-{secrets.token_hex(3)}", "2.0", "oci-index", ["linux/amd64", "linux/arm64"]
    )


def test_platform_compares_the_child_of_an_index(
    capsys: pytest.CaptureFixture[str], registry: LocalRegistry, index_image: PushedImage, cli_env: object
) -> None:
    arm64 = index_image.platforms["linux/arm64"]
    amd64 = index_image.platforms["linux/amd64"]
    pinned_child = registry.reference(index_image.repository, "2.0", arm64)
    other_child = registry.reference(index_image.repository, "2.0", amd64)
    unpinned = registry.reference(index_image.repository, "2.0")

    run = check(capsys, "--json", "--platform", "linux/arm64", pinned_child, other_child, unpinned)

    assert run.exit_code == 1
    index_short = short(index_image.digest)
    assert [(row["status"], row["live_digest"], row["reason"]) for row in run.rows] == [
        ("match", arm64, f"linux/arm64 child of index {index_short}"),
        ("drift", arm64, f"the linux/arm64 child is {short(arm64)}, pinned {short(amd64)} (index {index_short})"),
        ("resolved", arm64, f"linux/arm64 child of index {index_short}"),
    ]
    assert all(row["platforms"] == index_image.platforms for row in run.rows)


def test_platform_absent_from_the_index_is_a_usage_problem_listing_what_is_there(
    capsys: pytest.CaptureFixture[str], registry: LocalRegistry, index_image: PushedImage, cli_env: object
) -> None:
    reference = registry.reference(index_image.repository, "2.0", index_image.digest)

    run = check(capsys, "--json", "--platform", "linux/s390x", reference)

    assert run.exit_code == 2  # the tag exists: never "missing"
    [row] = run.rows
    assert (row["status"], row["live_digest"], row["reason"]) == (
        "unverifiable",
        None,
        "platform linux/s390x is not in the index (it has linux/amd64, linux/arm64)",
    )
    assert f"digest-audit: error: platform linux/s390x is not in the index of {reference}" in run.stderr


@pytest.mark.parametrize(("spelled", "asked"), [("linux/arm64/v8", "linux/arm64"), ("linux/arm64", "linux/arm64/v8")])
def test_platform_spellings_match_as_docker_pull_matches_them(
    capsys: pytest.CaptureFixture[str], registry: LocalRegistry, cli_env: object, spelled: str, asked: str
) -> None:
    # Docker Hub's official images spell arm64 with variant v8, buildx without: both are what a pull takes.
    image = registry.pusher.push_image(
        f"cli-tests/spelling-{secrets.token_hex(3)}", "1.0", "docker-list", ["linux/amd64", spelled]
    )
    child = image.platforms[spelled]

    run = check(capsys, "--json", "--platform", asked, registry.reference(image.repository, "1.0", child))

    assert run.exit_code == 0
    [row] = run.rows
    assert (row["status"], row["live_digest"]) == ("match", child)
    assert row["reason"] == f"{spelled} child of index {short(image.digest)}"


def test_a_child_pinned_without_platform_is_drift_with_a_hint(
    capsys: pytest.CaptureFixture[str], registry: LocalRegistry, index_image: PushedImage, cli_env: object
) -> None:
    arm64 = index_image.platforms["linux/arm64"]
    reference = registry.reference(index_image.repository, "2.0", arm64)

    run = check(capsys, "--json", "--platforms", reference)

    assert run.exit_code == 1
    [row] = run.rows
    assert row["status"] == "drift"
    assert row["live_digest"] == index_image.digest
    assert row["reason"] == (
        f"the pinned digest is the linux/arm64 child of the live index {short(index_image.digest)}; "
        "add --platform linux/arm64 to compare that child"
    )


# --- auth and TLS through the flags -------------------------------------------------------------------------


def test_token_registry_over_tls_with_ca_file_and_docker_config(
    capsys: pytest.CaptureFixture[str],
    token_registry: LocalRegistry,
    repository: str,
    cli_env: object,
    tmp_path: Path,
) -> None:
    assert token_registry.credentials is not None and token_registry.ca_file is not None
    image = token_registry.pusher.push_image(repository, "v1", "docker-list")
    config_dir = write_docker_config(tmp_path / "docker", {token_registry.host: token_registry.credentials})
    reference = token_registry.reference(repository, "v1", image.digest)
    common = ["--json", "--ca-file", str(token_registry.ca_file)]

    without_login = check(capsys, *common, reference)
    with_login = check(capsys, *common, "--docker-config", str(config_dir), reference)

    assert without_login.exit_code == 3
    assert [(row["status"], row["reason"]) for row in without_login.rows] == [("unverifiable", "auth failed")]
    assert with_login.exit_code == 0
    assert [(row["status"], row["live_digest"]) for row in with_login.rows] == [("match", image.digest)]
    assert token_registry.credentials.password not in with_login.stdout + with_login.stderr


def test_tls_registry_without_ca_file_is_unverifiable(
    capsys: pytest.CaptureFixture[str], basic_registry: LocalRegistry, repository: str, cli_env: object
) -> None:
    image = basic_registry.pusher.push_image(repository, "v1", "oci")

    run = check(capsys, "--json", basic_registry.reference(repository, "v1", image.digest))

    assert run.exit_code == 3
    assert [(row["status"], row["reason"]) for row in run.rows] == [("unverifiable", "tls: certificate verify failed")]


# --- a real process -----------------------------------------------------------------------------------------


@pytest.fixture
def subprocess_env(cli_env: dict[str, str], tmp_path: Path) -> dict[str, str]:
    """A minimal environment: nothing from the developer's shell reaches the child but PATH."""
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path),
        "PYTHONPATH": "src",
        **cli_env,
    }


def test_python_dash_m_audit_check(scenario: Scenario, subprocess_env: dict[str, str]) -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "audit", "check", "--json", scenario.match_ref, scenario.drift_ref],
        cwd=PROJECT_ROOT,
        env=subprocess_env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert completed.returncode == 1, completed.stderr
    rows = json.loads(completed.stdout)
    assert [(row["reference"], row["status"], row["live_digest"]) for row in rows] == [
        (scenario.match_ref, "match", scenario.pinned.digest),
        (scenario.drift_ref, "drift", scenario.tampered.digest),
    ]
    assert completed.stderr == "checked 2 reference(s): 1 drift, 1 match\n"
