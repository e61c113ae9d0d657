"""The CI examples and sample events stay usable: they parse, and each `digest-audit record` in them is a
valid command line for the real CLI."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from audit.cli import build_parser
from audit.models import ImageRef

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
EVENTS = ROOT / "events"
GITHUB_WORKFLOW = EXAMPLES / "github-actions-record.yml"
GITLAB_CI = EXAMPLES / "gitlab-ci-record.yml"
CRANE_SCRIPT = EXAMPLES / "record-with-crane.sh"

SAMPLE_DIGEST = "sha256:" + "ab" * 32
EVENT_KEYS = frozenset({"repositories", "dry_run"})

# Stand-ins for what CI substitutes, so the commands can be parsed like a shell would.
SAMPLE_VARIABLES = {
    "IMAGE": "ghcr.io/example-org/example-app",
    "TAG": "v1.4.2",
    "DIGEST": SAMPLE_DIGEST,
    "GITHUB_SERVER_URL": "https://github.com",
    "GITHUB_REPOSITORY": "example-org/example-app",
    "GITHUB_RUN_ID": "123456",
    "GITHUB_SHA": "0123456789abcdef0123456789abcdef01234567",
    "RUNNER_TEMP": "/runner/tmp",
    "CI_JOB_URL": "https://gitlab.example.com/example-group/example-app/-/jobs/42",
    "CI_COMMIT_SHA": "89abcdef0123456789abcdef0123456789abcdef",
    "CI_COMMIT_TAG": "v1.4.2",
}
_VARIABLE = re.compile(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?")


def load_yaml(path: Path) -> dict[Any, Any]:
    loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(loaded, dict)
    return loaded


def record_commands(script: str) -> list[str]:
    """The `digest-audit record ...` command lines of a shell script, continuation lines joined."""
    joined = script.replace("\\\n", " ")
    return [line.strip() for line in joined.splitlines() if line.strip().startswith("digest-audit record")]


def parse_record(command: str) -> Any:
    """Expand the sample variables, then parse with the real `digest-audit` parser (exits on misuse)."""
    expanded = _VARIABLE.sub(lambda match: SAMPLE_VARIABLES[match.group(1)], command)
    argv = shlex.split(expanded)
    assert argv[:2] == ["digest-audit", "record"]
    args = build_parser().parse_args(argv[1:])
    assert args.command == "record"
    return args


def github_steps() -> list[dict[str, Any]]:
    workflow = load_yaml(GITHUB_WORKFLOW)
    (job,) = workflow["jobs"].values()
    steps = job["steps"]
    assert isinstance(steps, list)
    return steps


# --- GitHub Actions -----------------------------------------------------------------------------------------


def test_github_workflow_uses_oidc_and_build_push_outputs() -> None:
    workflow = load_yaml(GITHUB_WORKFLOW)
    assert workflow["permissions"]["id-token"] == "write"
    triggers = workflow.get("on", workflow.get(True))  # YAML 1.1 reads a bare `on` key as True
    assert triggers
    steps = github_steps()
    (build,) = [step for step in steps if str(step.get("uses", "")).startswith("docker/build-push-action@")]
    assert build["id"] == "build"
    assert build["with"]["push"] is True
    (aws,) = [step for step in steps if str(step.get("uses", "")).startswith("aws-actions/configure-aws-credentials@")]
    assert aws["with"]["role-to-assume"]
    assert "aws-access-key-id" not in aws["with"]  # no stored keys


def test_github_records_the_pushed_digest() -> None:
    recorded = [step for step in github_steps() if "digest-audit record" in step.get("run", "")]
    explicit = [step for step in recorded if "--from-buildx-metadata" not in step["run"]]
    assert explicit
    for step in explicit:
        assert step["env"]["DIGEST"] == "${{ steps.build.outputs.digest }}"
        (command,) = record_commands(step["run"])
        args = parse_record(command)
        reference = ImageRef.parse(args.reference)
        assert (reference.tag, str(reference.digest)) == ("v1.4.2", SAMPLE_DIGEST)
        assert args.source == "https://github.com/example-org/example-app/actions/runs/123456"
        assert args.commit == SAMPLE_VARIABLES["GITHUB_SHA"]


def test_github_records_from_buildx_metadata() -> None:
    steps = [step for step in github_steps() if "--from-buildx-metadata" in step.get("run", "")]
    assert len(steps) == 1
    step = steps[0]
    assert step["env"]["BUILD_METADATA"] == "${{ steps.build.outputs.metadata }}"
    (command,) = record_commands(step["run"])
    args = parse_record(command)
    metadata_file = str(args.from_buildx_metadata)
    assert metadata_file in step["run"].replace("$RUNNER_TEMP", SAMPLE_VARIABLES["RUNNER_TEMP"])
    assert args.source.endswith("/actions/runs/123456")


def test_github_run_scripts_do_not_splice_expressions() -> None:
    """`${{ }}` inside `run:` is pasted into the script before the shell runs; values go through env."""
    for step in github_steps():
        assert "${{" not in step.get("run", ""), step.get("name")


# --- GitLab CI ----------------------------------------------------------------------------------------------


def test_gitlab_job_builds_with_a_metadata_file_and_records_it() -> None:
    jobs = {name: job for name, job in load_yaml(GITLAB_CI).items() if isinstance(job, dict) and "script" in job}
    (job,) = jobs.values()
    assert job["id_tokens"]["AWS_ID_TOKEN"]["aud"] == "sts.amazonaws.com"
    script = "\n".join(job["script"])
    (build,) = [line for line in job["script"] if line.startswith("docker buildx build")]
    build_argv = shlex.split(build)
    metadata_file = build_argv[build_argv.index("--metadata-file") + 1]
    assert "--push" in build_argv
    (command,) = record_commands(script)
    args = parse_record(command)
    assert str(args.from_buildx_metadata) == metadata_file
    assert args.source == SAMPLE_VARIABLES["CI_JOB_URL"]
    assert args.commit == SAMPLE_VARIABLES["CI_COMMIT_SHA"]


# --- shell fallback -----------------------------------------------------------------------------------------


def test_crane_script_is_valid_bash() -> None:
    assert os.access(CRANE_SCRIPT, os.X_OK)
    subprocess.run([_bash(), "-n", str(CRANE_SCRIPT)], check=True)


def _fake_tools(tmp_path: Path, *, with_crane: bool) -> tuple[dict[str, str], Path]:
    """A PATH where `digest-audit` saves its argv and crane/docker answer with a digest: no registry."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    argv_file = tmp_path / "argv"
    tools = {"digest-audit": f"#!/bin/sh\nprintf '%s\\0' \"$@\" > '{argv_file}'\n"}
    if with_crane:
        tools["crane"] = f"#!/bin/sh\necho {SAMPLE_DIGEST}\n"
    else:
        descriptor = json.dumps({"mediaType": "application/vnd.oci.image.index.v1+json", "digest": SAMPLE_DIGEST})
        tools["docker"] = f"#!/bin/sh\necho '{descriptor}'\n"
    for name, body in tools.items():
        tool = bin_dir / name
        tool.write_text(body)
        tool.chmod(0o755)
    # python3 for the imagetools branch: the interpreter running the tests.
    (bin_dir / "python3").symlink_to(sys.executable)
    # Only the fakes on PATH: a real crane or docker on this machine must not be reached.
    env = {"PATH": str(bin_dir), "HOME": str(tmp_path)}
    return env, argv_file


def _bash() -> str:
    bash = shutil.which("bash")
    assert bash is not None
    return bash


@pytest.mark.parametrize("with_crane", [True, False], ids=["crane", "imagetools"])
def test_crane_script_records_the_looked_up_digest(tmp_path: Path, with_crane: bool) -> None:
    env, argv_file = _fake_tools(tmp_path, with_crane=with_crane)
    subprocess.run(
        [
            _bash(),
            str(CRANE_SCRIPT),
            "ghcr.io/example-org/example-app:1.4.2",
            "https://ci.example/job/7",
            "abc123",
        ],
        env=env,
        check=True,
    )
    argv = argv_file.read_text().split("\0")[:-1]
    args = build_parser().parse_args(argv)
    assert args.reference == f"ghcr.io/example-org/example-app:1.4.2@{SAMPLE_DIGEST}"
    assert (args.source, args.commit) == ("https://ci.example/job/7", "abc123")


def test_crane_script_refuses_a_reference_with_a_digest(tmp_path: Path) -> None:
    env, argv_file = _fake_tools(tmp_path, with_crane=True)
    result = subprocess.run(
        [_bash(), str(CRANE_SCRIPT), f"ghcr.io/example-org/example-app:1.4.2@{SAMPLE_DIGEST}", "src"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert not argv_file.exists()


# --- sample events ------------------------------------------------------------------------------------------


def load_event(name: str) -> dict[str, Any]:
    loaded = json.loads((EVENTS / name).read_text(encoding="utf-8"))
    assert isinstance(loaded, dict)
    return loaded


@pytest.mark.parametrize("name", ["scheduled.json", "subset.json", "dry-run.json"])
def test_valid_events_follow_the_event_contract(name: str) -> None:
    event = load_event(name)
    assert set(event) <= EVENT_KEYS
    assert isinstance(event.get("dry_run", False), bool)


def test_scheduled_event_runs_a_full_real_audit() -> None:
    event = load_event("scheduled.json")
    assert "repositories" not in event
    assert event.get("dry_run", False) is False


def test_dry_run_event() -> None:
    assert load_event("dry-run.json")["dry_run"] is True


def test_subset_event_names_two_canonical_repositories() -> None:
    repositories = load_event("subset.json")["repositories"]
    assert len(repositories) == 2
    for name in repositories:
        # Stored image names are `registry/repository`, exactly as ImageRef normalises them.
        assert ImageRef.parse(name).image == name


def test_invalid_event_is_well_formed_json_outside_the_contract() -> None:
    event = load_event("invalid.json")
    unknown_keys = set(event) - EVENT_KEYS
    wrong_type = "dry_run" in event and not isinstance(event["dry_run"], bool)
    assert unknown_keys and wrong_type
