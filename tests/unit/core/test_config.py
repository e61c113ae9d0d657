"""Configuration is validated once, and every error names the variable or flag and the fix."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from audit.config import Environment, audit_config, parse_insecure_registries, registry_options
from audit.errors import ConfigError


def test_defaults() -> None:
    env = Environment({})
    config = audit_config(env, registry_options(env))
    assert config.reverify_delay == 5.0
    assert config.reminder_interval == timedelta(hours=24)
    assert config.unverifiable_after == 3
    assert config.registry.timeout == 10.0
    assert config.registry.concurrency == 64
    assert config.registry.insecure_registries == frozenset()
    assert config.trust_table is None


def test_environment_values_are_read() -> None:
    env = Environment(
        {
            "TRUSTED_DIGESTS_TABLE": "trust",
            "AUDIT_STATE_TABLE": "state",
            "ALERT_TOPIC_ARN": "arn:aws:sns:eu-west-1:123456789012:alerts",
            "DIGEST_AUDIT_REVERIFY_DELAY": "0",
            "DIGEST_AUDIT_REMINDER_INTERVAL": "3600",
            "DIGEST_AUDIT_UNVERIFIABLE_AFTER": "5",
            "DIGEST_AUDIT_INSECURE_REGISTRIES": "127.0.0.1:5000, registry.local",
            "DIGEST_AUDIT_ENABLE_ECR": "false",
        }
    )
    config = audit_config(env, registry_options(env, insecure=["other:80"]))
    assert (config.trust_table, config.state_table) == ("trust", "state")
    assert config.reverify_delay == 0
    assert config.reminder_interval == timedelta(hours=1)
    assert config.unverifiable_after == 5
    assert config.registry.insecure_registries == {"127.0.0.1:5000", "registry.local", "other:80"}
    assert config.registry.enable_ecr is False


@pytest.mark.parametrize(
    ("variable", "value", "fragment"),
    [
        ("DIGEST_AUDIT_REVERIFY_DELAY", "soon", "is not a number"),
        ("DIGEST_AUDIT_REVERIFY_DELAY", "-1", "at least 0"),
        ("DIGEST_AUDIT_UNVERIFIABLE_AFTER", "2.5", "whole number"),
        ("DIGEST_AUDIT_UNVERIFIABLE_AFTER", "0", "at least 1"),
        ("DIGEST_AUDIT_ENABLE_ECR", "maybe", "true or false"),
        ("DIGEST_AUDIT_INSECURE_REGISTRIES", "http://127.0.0.1:5000", "HOST or HOST:PORT"),
        ("DIGEST_AUDIT_INSECURE_REGISTRIES", "127.0.0.1:99999", "invalid port"),
    ],
)
def test_malformed_values_name_the_variable(variable: str, value: str, fragment: str) -> None:
    env = Environment({variable: value})
    with pytest.raises(ConfigError) as info:
        audit_config(env, registry_options(env))
    assert variable in info.value.message
    assert fragment in info.value.diagnostics()


def test_insecure_registry_entries() -> None:
    assert parse_insecure_registries(["Host.Example:5000", " ", "plain"], origin="x") == {
        "host.example:5000",
        "plain",
    }


def test_missing_ca_file_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        registry_options(Environment({}), ca_file=tmp_path / "nope.pem")
    assert "--ca-file" in info.value.message
    assert info.value.exit_code == 2


def test_the_tag_cap_per_repository_is_configurable_and_positive() -> None:
    def config(env: dict[str, str]) -> int:
        environment = Environment(env)
        return audit_config(environment, registry_options(environment)).max_tags_per_repository

    assert config({}) == 10_000
    assert config({"DIGEST_AUDIT_MAX_TAGS_PER_REPOSITORY": "250"}) == 250
    with pytest.raises(ConfigError, match="DIGEST_AUDIT_MAX_TAGS_PER_REPOSITORY='0' must be at least 1"):
        config({"DIGEST_AUDIT_MAX_TAGS_PER_REPOSITORY": "0"})
