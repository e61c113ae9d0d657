"""A `digest-audit` process imports the module of the one command it runs; help and typos see every command."""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
from pathlib import Path

import pytest

from audit import cli
from audit.cli import build_parser, command_in


@pytest.mark.parametrize(
    ("argv", "command"),
    [
        (["check", "nginx:1.27"], "check"),
        (["-v", "-v", "record", "--source", "x"], "record"),
        (["--verbose", "trust", "export"], "trust"),
        (["--help"], None),
        ([], None),
        (["chek", "nginx"], None),
        (["-v"], None),
    ],
)
def test_the_command_is_the_first_word_that_is_not_an_option(argv: list[str], command: str | None) -> None:
    assert command_in(argv) == command


def test_the_whole_parser_lists_every_command() -> None:
    text = build_parser().format_help()
    for name in ("check", "record", "watch", "trust", "run", "listen", "report", "init"):
        assert name in text


def test_running_check_imports_no_other_command() -> None:
    probe = (
        "import json, sys\n"
        "from audit.cli import main\n"
        "code = main(['check'])\n"  # no references: a usage error (exit 2), after the parser was built
        "print(json.dumps([code, sorted(m for m in sys.modules if m.startswith('audit.cli.'))]))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60)
    code, modules = json.loads(done.stdout.splitlines()[-1])
    assert code == 2
    assert "audit.cli.check" in modules
    assert not {"audit.cli.record", "audit.cli.run", "audit.cli.listen", "audit.cli.backfill"} & set(modules)
    assert "audit.cli.packages" not in modules  # an image check needs no package side


def test_an_image_check_never_imports_pydantic_the_run_decisions_or_the_package_side() -> None:
    """pydantic costs about 0.1 s of every process; `check` needs none of the records built with it, nor the run's
    decisions (`drift`: its verdict rules are `verdicts`) nor the package side (issue 11: start-up)."""
    probe = (
        "import contextlib, io, json, sys\n"
        "from audit.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        # a closed port: the whole path runs (client, observation, verdict, output), the tag is unverifiable
        "    code = main(['check', '--json', '--timeout', '2', '--insecure-registry', '127.0.0.1',\n"
        "                 '127.0.0.1:9/team/app:1.0@sha256:' + 'a' * 64])\n"
        "unwanted = ('pydantic', 'audit.records', 'audit.drift', 'audit.packages')\n"
        "print(json.dumps([code, sorted(m for m in sys.modules if m.startswith(unwanted))]))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60)
    code, modules = json.loads(done.stdout.splitlines()[-1])
    assert code == 3  # unverifiable: the check ran to the end
    assert modules == []


def test_collection_is_paused_only_while_the_command_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[bool] = []

    def spy(command: str | None = None) -> argparse.ArgumentParser:
        seen.append(gc.isenabled())
        return real_build_parser(command)

    real_build_parser = cli.build_parser
    monkeypatch.setattr(cli, "build_parser", spy)
    assert gc.isenabled()
    assert cli.main(["check"]) == 2  # a usage error after the parser was built: collection is on again
    assert seen == [False]
    assert gc.isenabled()


def test_a_failing_load_turns_collection_back_on_and_an_off_collector_stays_off() -> None:
    with pytest.raises(RuntimeError), cli.collection_paused():
        assert not gc.isenabled()
        raise RuntimeError("import failed")
    assert gc.isenabled()
    gc.disable()
    try:
        with cli.collection_paused():
            pass
        assert not gc.isenabled()  # whoever turned it off decides when it comes back
    finally:
        gc.enable()


def test_the_console_command_freezes_the_heap_only_after_main_returned(monkeypatch: pytest.MonkeyPatch) -> None:
    events: list[str] = []

    def main() -> int:
        events.append("main")
        return 7

    monkeypatch.setattr(cli, "main", main)
    monkeypatch.setattr(gc, "freeze", lambda: events.append("freeze"))
    assert cli.console() == 7
    assert events == ["main", "freeze"]


def test_a_console_process_still_flushes_its_output_and_runs_its_exit_handlers(tmp_path: Path) -> None:
    """`python -m audit` ends through `console`: the JSON on stdout is whole and atexit handlers still run."""
    marker = tmp_path / "atexit-ran"
    probe = (
        "import atexit, pathlib, runpy, sys\n"
        f"atexit.register(pathlib.Path({str(marker)!r}).write_text, 'yes')\n"
        "sys.argv = ['digest-audit', 'check', '--json', '--timeout', '2', '--insecure-registry', '127.0.0.1',\n"
        "            '127.0.0.1:9/team/app:1.0@sha256:' + 'a' * 64]\n"
        "runpy.run_module('audit', run_name='__main__')\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 3, done.stderr  # unverifiable: a closed port
    assert [row["status"] for row in json.loads(done.stdout)] == ["unverifiable"]
    assert marker.read_text() == "yes"
