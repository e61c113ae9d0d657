"""Runs `digest-audit listen` as a real process (as an operator would), with its output collected line by line."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Sequence
from pathlib import Path

import audit

_SRC = Path(audit.__file__).resolve().parents[1]


def _terminate(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        process.kill()
        process.wait(timeout=10)


class ListenProcess:
    """`python -m audit listen ...` with a bare environment plus `env`; stdout and stderr read by threads."""

    def __init__(self, args: Sequence[str | Path], *, env: dict[str, str], cwd: Path) -> None:
        self.args = [sys.executable, "-m", "audit", "listen", *(str(a) for a in args)]
        self.env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(_SRC), **env}
        self.cwd = cwd
        self.out: list[str] = []
        self.err: list[str] = []
        self._lock = threading.Lock()
        self._process: subprocess.Popen[str] | None = None
        self._readers: list[threading.Thread] = []

    def start(self, *, ready_within: float = 30.0) -> ListenProcess:
        process = subprocess.Popen(
            self.args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            errors="surrogateescape",
            env=self.env,
            cwd=self.cwd,
        )
        self._process = process
        weakref.finalize(self, _terminate, process)
        for stream, sink in ((process.stdout, self.out), (process.stderr, self.err)):
            reader = threading.Thread(target=self._collect, args=(stream, sink), daemon=True)
            reader.start()
            self._readers.append(reader)
        self.wait_for_err(r"^listening on ", within=ready_within)
        return self

    def _collect(self, stream: object, sink: list[str]) -> None:
        assert hasattr(stream, "readline")
        for line in iter(stream.readline, ""):
            with self._lock:
                sink.append(line)

    def stderr_text(self) -> str:
        with self._lock:
            return "".join(self.err)

    def stdout_text(self) -> str:
        with self._lock:
            return "".join(self.out)

    def wait_for_err(self, pattern: str, *, count: int = 1, within: float = 60.0) -> list[str]:
        """Wait until `count` stderr lines match; a bounded wait for a condition, not a timing assertion."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + within
        while True:
            with self._lock:
                matches = [line for line in self.err if regex.search(line)]
            if len(matches) >= count:
                return matches
            assert self._process is not None
            if self._process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(
                    f"no {count} stderr line(s) matching {pattern!r} (exit {self._process.poll()}):\n"
                    + self.stderr_text()
                )
            time.sleep(0.05)

    def stop(self, signum: int = signal.SIGTERM) -> int:
        assert self._process is not None
        self._process.send_signal(signum)
        code = self._process.wait(timeout=30)
        for reader in self._readers:  # every line written before the exit
            reader.join(timeout=10)
        return code
