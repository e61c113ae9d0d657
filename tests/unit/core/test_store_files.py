"""Local store files: an auditor never mistakes a missing trust file for an empty, clean one."""

from __future__ import annotations

from pathlib import Path

import pytest

from audit import bootstrap
from audit.config import Settings
from audit.errors import ConfigError


def test_a_missing_trust_file_is_an_error_for_readers(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        bootstrap.trust_store(tmp_path / "trusted.json", Settings())
    assert "does not exist" in info.value.message
    assert info.value.exit_code == 2


def test_recorders_may_create_the_trust_file(tmp_path: Path) -> None:
    store = bootstrap.trust_store(tmp_path / "trusted.json", Settings(), create=True)
    assert store.load_all() == []


def test_a_missing_directory_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="directory"):
        bootstrap.trust_store(tmp_path / "nope" / "trusted.json", Settings(), create=True)


def test_a_directory_is_not_a_store(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is not a file"):
        bootstrap.state_store(tmp_path, Settings())


def test_no_table_and_no_file_names_the_variable() -> None:
    with pytest.raises(ConfigError) as info:
        bootstrap.trust_store(None, Settings())
    assert "TRUSTED_DIGESTS_TABLE" in info.value.hint
