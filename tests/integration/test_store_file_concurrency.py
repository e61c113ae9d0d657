"""Store files shared by several processes: concurrent `record`s and state saves lose nothing, links stay links.

Real processes (the `digest-audit` CLI and plain Python) write one file at the same time, as CI jobs of one
pipeline or two operators would; only the lock and the atomic rename keep every record.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from audit.adapters.file_store import FileStateStore, FileTrustStore

pytestmark = pytest.mark.integration

WRITERS = 6
RECORDS_PER_WRITER = 25
REPO_ROOT = Path(__file__).resolve().parents[2]


def _digest(writer: int, number: int) -> str:
    return "sha256:" + f"{writer:02x}{number:02x}".ljust(64, "0")


def _start(script: str, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT / "src"), str(REPO_ROOT)])}
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script), *args],
        env=env,
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_all(processes: list[subprocess.Popen[str]]) -> None:
    for process in processes:
        out, err = process.communicate(timeout=100)
        assert process.returncode == 0, f"writer failed: {out}\n{err}"


RECORDER = """
    import sys
    from audit.cli import main

    trust_file, writer, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    for number in range(count):
        digest = "sha256:" + f"{writer:02x}{number:02x}".ljust(64, "0")
        reference = f"ghcr.io/org/app:w{writer}-{number}@{digest}"
        code = main(["record", reference, "--source", f"ci run {writer}", "--offline", "--trust-file", trust_file])
        if code != 0:
            sys.exit(code)
"""


def test_concurrent_record_processes_lose_no_record(tmp_path: Path) -> None:
    trust_file = tmp_path / "trusted.json"
    writers = [_start(RECORDER, str(trust_file), str(w), str(RECORDS_PER_WRITER)) for w in range(WRITERS)]
    _wait_all(writers)

    recorded = {(record.tag, str(record.digest)) for record in FileTrustStore(trust_file).load_all()}
    expected = {(f"w{w}-{n}", _digest(w, n)) for w in range(WRITERS) for n in range(RECORDS_PER_WRITER)}
    assert recorded == expected
    assert sorted(path.name for path in tmp_path.iterdir()) == [".trusted.json.lock", "trusted.json"]


STATE_SAVER = """
    import sys
    from audit.adapters.file_store import FileStateStore
    from tests.support.store_builders import state

    state_file, writer, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    store = FileStateStore(__import__("pathlib").Path(state_file))
    for number in range(count):
        store.save([state(f"w{writer}-{number}")])
"""


def test_concurrent_state_saves_lose_no_state(tmp_path: Path) -> None:
    state_file = tmp_path / "state.json"
    savers = [_start(STATE_SAVER, str(state_file), str(w), str(RECORDS_PER_WRITER)) for w in range(WRITERS)]
    _wait_all(savers)

    tags = {tag for _, tag in FileStateStore(state_file).load_all()}
    assert tags == {f"w{w}-{n}" for w in range(WRITERS) for n in range(RECORDS_PER_WRITER)}


def test_a_symlinked_trust_file_is_followed_and_stays_a_link(tmp_path: Path) -> None:
    """The link (e.g. into a checked-out repository) is kept; the file it points to gets the records."""
    target_dir = tmp_path / "repo"
    target_dir.mkdir()
    target = target_dir / "trusted.json"
    link = tmp_path / "trusted.json"
    link.symlink_to(target)
    writers = [_start(RECORDER, str(link), str(w), "3") for w in range(2)]
    _wait_all(writers)

    assert link.is_symlink()
    assert link.resolve() == target
    document = json.loads(target.read_text(encoding="utf-8"))
    assert len(document["trusted"]) == 6
    assert (target_dir / ".trusted.json.lock").exists()  # the lock sits next to the real file
    assert sorted(path.name for path in tmp_path.iterdir()) == ["repo", "trusted.json"]
