"""Watch settings are validated wherever they are built: the model, `trust import`, and `digest-audit watch`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from audit import cli
from audit.adapters.file_store import FileTrustStore
from audit.app.trust_transfer import import_trust
from audit.models import MovingMode
from audit.records import WatchSettings
from audit.trust_formats import TrustImportError


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({"registry": "Not A Host!"}, "invalid image"),
        ({"registry": "docker.io", "repository": "library/nginx"}, "invalid image"),  # not normalised
        ({"repository": "Org/App"}, "invalid image"),
        ({"repository": "org/../../escape"}, "invalid image"),
        ({"repository": "org/app\x1b[2J"}, "invalid image"),
        ({"moving": {"latest;id": MovingMode.ANY_TRUSTED}}, "invalid moving tag"),
        ({"moving": {"x" * 129: MovingMode.ANY_TRUSTED}}, "invalid moving tag"),
        ({"ignore": ("nightly-\x1b[31m*",)}, "invalid ignore pattern"),
        ({"ignore": ("*" * 257,)}, "invalid ignore pattern"),
        ({"ignore": tuple(f"p{n}" for n in range(101))}, "at most 100 ignore patterns"),
    ],
)
def test_invalid_watch_settings_are_refused_by_the_model(fields: dict[str, object], problem: str) -> None:
    values: dict[str, object] = {"registry": "ghcr.io", "repository": "org/app", **fields}
    with pytest.raises(ValidationError, match=problem) as raised:
        WatchSettings.model_validate(values)
    assert "\x1b" not in str(raised.value)


def test_valid_watch_settings_pass() -> None:
    settings = WatchSettings(
        registry="localhost:5000",
        repository="org/app",
        track_new_tags=True,
        ignore=("sha-*", "*-rc[0-9]"),
        moving={"latest": MovingMode.ANY_TRUSTED},
    )
    assert settings.image == "localhost:5000/org/app"


def test_trust_import_refuses_a_watch_entry_with_a_bad_registry(tmp_path: Path) -> None:
    store = FileTrustStore(tmp_path / "trust.json")
    text = json.dumps(
        {
            "schema_version": 1,
            "trusted": [],
            "watch": [{"registry": "Not A Host!", "repository": "org/app", "track_new_tags": True}],
        }
    )
    with pytest.raises(TrustImportError, match=r"watch entry 1: .*invalid image 'Not A Host!/org/app'"):
        import_trust(store, text, "json")
    assert not (tmp_path / "trust.json").exists() or store.load_watch_settings() == []


def test_the_watch_command_refuses_a_control_character_pattern_cleanly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trust = tmp_path / "trust.json"
    code = cli.main(["watch", "ghcr.io/org/app", "--ignore", "nightly-\x1b[2J*", "--trust-file", str(trust)])
    err = capsys.readouterr().err
    assert code == 2
    assert "invalid watch settings for ghcr.io/org/app: invalid ignore pattern" in err
    assert "\x1b" not in err and "Traceback" not in err
    assert not trust.exists()
