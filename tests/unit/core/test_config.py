"""Configuration is validated once, and every error names the variable or flag and the fix."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from audit.config import Environment, Settings, parse_insecure_registries, registry_options
from audit.errors import ConfigError


def test_defaults() -> None:
    config = Settings.from_environment(Environment({}))
    assert config.audit.reverify_delay == 5.0
    assert config.alerts.reminder_interval == timedelta(hours=24)
    assert config.alerts.unverifiable_after == 3
    assert config.registry.timeout == 10.0
    assert config.registry.concurrency == 64
    assert config.registry.insecure_registries == frozenset()
    assert config.stores.trust_table is None
    # The defaults are those of the settings objects themselves: written once.
    assert config == Settings()


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
    config = Settings.from_environment(env, insecure=["other:80"])
    assert (config.stores.trust_table, config.stores.state_table) == ("trust", "state")
    assert config.alerts.topic_arn == "arn:aws:sns:eu-west-1:123456789012:alerts"
    assert config.audit.reverify_delay == 0
    assert config.alerts.reminder_interval == timedelta(hours=1)
    assert config.alerts.unverifiable_after == 5
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
    with pytest.raises(ConfigError) as info:
        Settings.from_environment(Environment({variable: value}))
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
        return Settings.from_environment(Environment(env)).audit.max_tags_per_repository

    assert config({}) == 10_000
    assert config({"DIGEST_AUDIT_MAX_TAGS_PER_REPOSITORY": "250"}) == 250
    with pytest.raises(ConfigError, match="DIGEST_AUDIT_MAX_TAGS_PER_REPOSITORY='0' must be at least 1"):
        config({"DIGEST_AUDIT_MAX_TAGS_PER_REPOSITORY": "0"})


def test_flags_win_over_the_environment_which_fills_in_the_rest(tmp_path: Path) -> None:
    env = {
        "DIGEST_AUDIT_TIMEOUT": "3",
        "DIGEST_AUDIT_CONCURRENCY": "8",
        "DIGEST_AUDIT_REVERIFY_DELAY": "7",
        "DIGEST_AUDIT_REMINDER_INTERVAL": "60",
        "DIGEST_AUDIT_UNVERIFIABLE_AFTER": "4",
    }
    from_env = Settings.from_environment(env)
    assert (from_env.registry.timeout, from_env.registry.concurrency) == (3.0, 8)
    assert from_env.audit.reverify_delay == 7.0
    assert (from_env.alerts.reminder_interval, from_env.alerts.unverifiable_after) == (timedelta(minutes=1), 4)

    flagged = Settings.from_environment(
        env,
        timeout=1.5,
        concurrency=2,
        reverify_delay=0.0,
        reminder_interval=30.0,
        unverifiable_after=9,
        trust_file=tmp_path / "trust.json",
        state_file=tmp_path / "state.json",
        print_alerts=True,
    )
    assert (flagged.registry.timeout, flagged.registry.concurrency) == (1.5, 2)
    assert flagged.registry.check_workers == 4
    assert flagged.audit.reverify_delay == 0.0
    assert (flagged.alerts.reminder_interval, flagged.alerts.unverifiable_after) == (timedelta(seconds=30), 9)
    assert flagged.stores.local and flagged.alerts.print_alerts
    assert flagged.time_margin_seconds == 0.0 + 2 * 1.5 + 10


def test_a_flag_does_not_hide_a_malformed_variable_of_another_setting() -> None:
    with pytest.raises(ConfigError, match="DIGEST_AUDIT_REVERIFY_DELAY"):
        Settings.from_environment({"DIGEST_AUDIT_REVERIFY_DELAY": "soon"}, timeout=1.0)
