"""Alerts built from hostile names: no command for a name outside the grammar, every command quoted so pasting it
runs nothing else, and control characters escaped in the e-mail, the chat notification and the subject."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from audit import alerts
from audit.alerts import confirm_commands, render
from audit.models import Notice, Verdict
from tests.unit.test_alerts import finding

INJECTING_TAGS = ["v4';id;echo'", "v5;id", "v6$(id)", "v7`id`", "v8|id", "v9&&id"]
FAKE_TOOLS = ("crane", "docker", "skopeo", "digest-audit")


@pytest.fixture
def fake_path(tmp_path: Path) -> Path:
    """A PATH where the tools print their arguments, one per line, and `id` confesses it was run."""
    for name in FAKE_TOOLS:
        tool = tmp_path / name
        tool.write_text(f'#!/bin/sh\nfor arg in "$@"; do printf \'{name} arg: %s\\n\' "$arg"; done\ncat >/dev/null\n')
        tool.chmod(tool.stat().st_mode | stat.S_IXUSR)
    passthrough = tmp_path / "sha256sum"  # the end of the skopeo pipe: show what arrived
    passthrough.write_text("#!/bin/sh\ncat\n")
    passthrough.chmod(passthrough.stat().st_mode | stat.S_IXUSR)
    confess = tmp_path / "id"
    confess.write_text("#!/bin/sh\necho INJECTED\n")
    confess.chmod(confess.stat().st_mode | stat.S_IXUSR)
    return tmp_path


def paste(command: str, path: Path) -> str:
    """What a responder's shell does with a pasted command line (with harmless stand-ins for the tools)."""
    env = {**os.environ, "PATH": f"{path}{os.pathsep}{os.environ.get('PATH', '')}"}
    done = subprocess.run(  # the point of the test: sh runs what the alert says
        ["/bin/sh", "-c", command],
        env=env,
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    return done.stdout + done.stderr


def command_lines(email: str) -> list[str]:
    """The command lines under "Confirm by hand:" and "Then, depending on what you find:" (labels removed)."""
    commands: list[str] = []
    listing = False
    for line in email.splitlines():
        if line.strip() in ("Confirm by hand:", "Then, depending on what you find:"):
            listing = True
        elif listing and line.startswith("    "):
            label, sep, rest = line.strip().partition(":  ")
            commands.append(
                rest.strip() if sep and label in ("restore", "accept", "record", "ignore") else line.strip()
            )
        else:
            listing = False
    return commands


@pytest.mark.parametrize("tag", INJECTING_TAGS)
@pytest.mark.parametrize("status", [Verdict.DRIFT, Verdict.MISSING, Verdict.UNTRACKED, Verdict.UNVERIFIABLE])
def test_a_name_outside_the_grammar_gets_no_command(tag: str, status: Verdict) -> None:
    item = finding(tag, status=status, registry="ghcr.io", repository="org/app")
    assert confirm_commands(item) == []
    email = render("run-1", [item], total_tags=3)[0].protocol("email")
    assert command_lines(email) == []
    assert "No commands: the name is outside the image name grammar" in email


@pytest.mark.parametrize("tag", INJECTING_TAGS)
def test_every_command_is_quoted_so_pasting_it_runs_nothing_else(
    tag: str, fake_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Even if a name got past the grammar check, quoting alone keeps the shell from running anything in it."""
    monkeypatch.setattr(alerts, "_commands_allowed", lambda _finding: True)
    drift = finding(tag, status=Verdict.DRIFT, registry="ghcr.io", repository="org/app")
    untracked = finding(tag, status=Verdict.UNTRACKED, registry="ghcr.io", repository="org/app")
    email = "\n".join(message.protocol("email") for message in render("run-1", [drift, untracked], total_tags=3))
    commands = command_lines(email)
    assert len(commands) >= 8  # confirm (3 each), restore, accept, record, ignore

    for command in commands:
        output = paste(command, fake_path)
        assert "INJECTED" not in output, command
        args = [line.split(" arg: ", 1)[1] for line in output.splitlines() if " arg: " in line]
        assert any(tag in arg for arg in args), (command, output)  # the name arrives as one argument


def test_valid_names_still_give_plain_commands(fake_path: Path) -> None:
    item = finding("1.4.0", status=Verdict.DRIFT, registry="ghcr.io", repository="org/app")
    commands = confirm_commands(item)
    assert commands[0] == "crane digest ghcr.io/org/app:1.4.0"
    assert paste(commands[0], fake_path).splitlines() == ["crane arg: digest", "crane arg: ghcr.io/org/app:1.4.0"]


def test_control_characters_are_escaped_in_email_chat_and_subject() -> None:
    hostile = "\x1b[2J\x1b]8;;https://evil.example\x07click\x1b]8;;\x07\u0085\u009b31m\u202e"
    item = finding(
        "1.4.0",
        status=Verdict.UNTRACKED,
        notice=Notice.NEW,
        registry="ghcr.io",
        repository="org/app",
        reason=f"the registry lists a tag name outside the tag grammar (not queried): {hostile}",
    ).model_copy(update={"reference": f"ghcr.io/org/app:{hostile}", "source": f"https://ci/{hostile}"})
    message = render("run-1", [item], total_tags=3)[0]
    texts = {
        "email": message.protocol("email"),
        "chat": message.protocol("https"),
        "default": message.protocol("default"),
        "subject": message.subject,
    }
    for name, text in texts.items():
        raw = [char for char in ("\x1b", "\x07", "\u0085", "\u009b", "\u202e") if char in text]
        assert raw == [], name
    assert "\\x1b[2J" in texts["email"] and "\\x85\\x9b31m" in texts["email"] and "\\u202e" in texts["email"]
    assert "\\x1b[2J" in texts["subject"]
    assert "\\\\x1b[2J" in texts["chat"]  # escaped, then JSON-encoded
