"""Runs the `digest-audit` CLI in-process, as an operator or a CI job would, and captures what it printed.

Also sets the environment of an end-to-end run (tables, topic, the plain-http test registry) and forgets
bootstrap's cached boto3 clients, which otherwise keep the endpoint of an earlier moto session.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from audit import cli
from audit.config import (
    ALL_VARIABLES,
    ENV_INSECURE_REGISTRIES,
    ENV_REVERIFY_DELAY,
    ENV_STATE_TABLE,
    ENV_TOPIC_ARN,
    ENV_TRUST_TABLE,
)

_RUN_ID = re.compile(r"^run ([0-9a-f]{32}): ", re.MULTILINE)


@dataclass(frozen=True)
class CliResult:
    code: int
    out: str
    err: str

    @property
    def run_id(self) -> str:
        """The run id from the summary `digest-audit run` prints on stderr."""
        match = _RUN_ID.search(self.err)
        assert match is not None, f"no run summary on stderr: {self.err!r}"
        return match.group(1)


class CliRunner:
    """Calls `audit.cli.main(argv)` and returns its exit code with the stdout and stderr of that call only."""

    def __init__(self, capsys: pytest.CaptureFixture[str]) -> None:
        self._capsys = capsys

    def __call__(self, *argv: str | Path) -> CliResult:
        self._capsys.readouterr()  # output of earlier steps belongs to them
        try:
            code = cli.main([str(arg) for arg in argv])
        except SystemExit as exc:  # argparse rejects bad usage this way
            code = exc.code if isinstance(exc.code, int) else 2
        out, err = self._capsys.readouterr()
        return CliResult(code, out, err)


def set_audit_environment(
    monkeypatch: pytest.MonkeyPatch,
    *,
    docker_config: Path,
    insecure_registry: str | None = None,
    trust_table: str | None = None,
    state_table: str | None = None,
    topic_arn: str | None = None,
) -> None:
    """Only the given settings (every other digest-audit variable removed); re-verification without delay.

    `docker_config` should be an empty directory, so a developer's ~/.docker/config.json never takes part.
    """
    for name in ALL_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DOCKER_CONFIG", str(docker_config))
    monkeypatch.setenv(ENV_REVERIFY_DELAY, "0")
    for name, value in (
        (ENV_INSECURE_REGISTRIES, insecure_registry),
        (ENV_TRUST_TABLE, trust_table),
        (ENV_STATE_TABLE, state_table),
        (ENV_TOPIC_ARN, topic_arn),
    ):
        if value is not None:
            monkeypatch.setenv(name, value)
