"""Fixtures of the CLI tests that several files need the same: an empty Docker config, the alert topic and its
subscribed queue, a unique repository name, and the CLI configured for an end-to-end run, for local files only,
or for local files and loopback registries and indexes.

A test file that needs a variant overrides a fixture of the same name (it may request the shared one).
"""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest

from tests.support.aws_fixtures import AwsClients, TableNames
from tests.support.cli_runner import CliRunner, set_audit_environment
from tests.support.local_registry import LocalRegistry
from tests.support.sns_capture import AlertQueue, create_topic

TOPIC_NAME = "digest-audit-alerts"


@pytest.fixture
def docker_config(tmp_path: Path) -> Path:
    """An empty Docker config directory, so a developer's ~/.docker/config.json never takes part."""
    empty = tmp_path / "docker-config"
    empty.mkdir()
    return empty


@pytest.fixture
def repo() -> str:
    """Short and unique, so that alert subjects stay whole (a long name would be shortened with `...`)."""
    return f"r/r{secrets.token_hex(4)}"


@pytest.fixture
def topic_arn(aws: AwsClients) -> str:
    return create_topic(aws, TOPIC_NAME)


@pytest.fixture
def inbox(aws: AwsClients, topic_arn: str) -> AlertQueue:
    """An SQS queue subscribed to the alert topic: what a machine subscriber receives."""
    return AlertQueue(aws, topic_arn)


@pytest.fixture
def cli(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    docker_config: Path,
    registry: LocalRegistry,
    tables: TableNames,
    topic_arn: str,
) -> CliRunner:
    """The CLI with DynamoDB tables, a topic and the plain-http registry configured."""
    set_audit_environment(
        monkeypatch,
        docker_config=docker_config,
        insecure_registry=registry.host,
        trust_table=tables.trust,
        state_table=tables.state,
        topic_arn=topic_arn,
    )
    return CliRunner(capsys)


@pytest.fixture
def files_cli(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, docker_config: Path) -> CliRunner:
    """The CLI with no table, topic or registry configured: only local files."""
    set_audit_environment(monkeypatch, docker_config=docker_config)
    return CliRunner(capsys)


@pytest.fixture
def loopback_cli(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> CliRunner:
    """The CLI with only local files and any registry or index on 127.0.0.1 allowed over plain http; HOME is an
    empty directory, so a developer's netrc and Docker config take no part."""
    home = tmp_path / "home"
    (home / "docker").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    set_audit_environment(monkeypatch, docker_config=home / "docker", insecure_registry="127.0.0.1")
    return CliRunner(capsys)
