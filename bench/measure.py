"""Timing, memory and request counting for one benchmark process: wall time, peak RSS, what the registry saw."""

from __future__ import annotations

import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from bench.proxy import LoggedRequest

_ACCESS_LINE = re.compile(
    r'"(?P<method>[A-Z]+) (?P<path>\S+) HTTP/[0-9.]+" (?P<status>\d{3}) \S+ "[^"]*" "(?P<agent>[^"]*)"'
)


@dataclass(frozen=True)
class ProcessRun:
    """One finished subprocess: exit code, wall seconds, peak RSS (MiB), CPU seconds, and its captured output."""

    returncode: int
    seconds: float
    max_rss_mib: float
    stdout: str
    stderr: str
    cpu_seconds: float = 0.0


LAUNCHER = Path(__file__).with_name("launch.py")


def run_process(
    command: Sequence[str],
    *,
    env: Mapping[str, str],
    cwd: Path | None = None,
    stdout_path: Path | None = None,
    cores: frozenset[int] | None = None,
) -> ProcessRun:
    """Run to completion through bench/launch.py, which times it (spawn to reap) and reads its own peak RSS
    with wait4: forked from this big driver instead, the child would inherit the driver's peak RSS. `cores`
    pins the launcher, and so the command, to those CPUs."""
    out_path = stdout_path or Path(os.devnull)
    with tempfile.TemporaryDirectory(prefix="bench-launch-") as scratch:
        result_path = Path(scratch) / "result.json"
        with out_path.open("wb") as out:
            done = subprocess.run(
                [sys.executable, "-S", str(LAUNCHER), str(result_path), *command],
                env=dict(env),
                cwd=cwd,
                stdout=out,
                stderr=subprocess.PIPE,
                stdin=subprocess.DEVNULL,
                check=False,
                preexec_fn=None if cores is None else lambda: os.sched_setaffinity(0, cores),
            )
        if done.returncode != 0 or not result_path.exists():
            raise RuntimeError(f"launching {command[0]} failed: {done.stderr.decode(errors='replace')[-500:]}")
        result = json.loads(result_path.read_text())
    return ProcessRun(
        returncode=int(result["exit_code"]),
        seconds=float(result["seconds"]),
        max_rss_mib=int(result["max_rss_kib"]) / 1024,  # Linux reports KiB
        stdout=out_path.read_text(encoding="utf-8", errors="replace") if stdout_path is not None else "",
        stderr=done.stderr.decode("utf-8", errors="replace"),
        cpu_seconds=float(result["cpu_seconds"]),
    )


# --- CPU accounting --------------------------------------------------------------------------------------------


def _machine_seconds() -> tuple[float, float] | None:
    """CPU-seconds of all cores since boot, (busy, idle), from /proc/stat; None where there is none."""
    try:
        with Path("/proc/stat").open(encoding="ascii") as stat:
            ticks = [int(value) for value in stat.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    hertz = os.sysconf("SC_CLK_TCK")
    idle = ticks[3] + ticks[4]  # idle and iowait
    return (sum(ticks[:8]) - idle) / hertz, idle / hertz  # guest time is already in user


def _process_seconds(pid: int) -> float | None:
    """User plus system CPU-seconds of a running process, from /proc/PID/stat."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text(encoding="ascii").rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class CpuSpan:
    """Where the CPU went while one client ran: the whole machine (busy, idle) and the server process."""

    machine_busy: float | None = None
    machine_idle: float | None = None
    server: float | None = None


class CpuMeter:
    """Measures `CpuSpan`s around runs: `with meter.span() as span: ...` (Linux /proc; fields stay None
    elsewhere). Idle CPU-seconds while a client runs say how much of the machine neither it nor the server used."""

    def __init__(self, server_pid: int) -> None:
        self.server_pid = server_pid

    @contextmanager
    def span(self) -> Iterator[CpuSpan]:
        span = CpuSpan()
        machine, server = _machine_seconds(), _process_seconds(self.server_pid)
        yield span
        machine_after, server_after = _machine_seconds(), _process_seconds(self.server_pid)
        if machine is not None and machine_after is not None:
            span.machine_busy = machine_after[0] - machine[0]
            span.machine_idle = machine_after[1] - machine[1]
        if server is not None and server_after is not None:
            span.server = server_after - server


@contextmanager
def process_pinned(pid: int, cores: frozenset[int]) -> Iterator[None]:
    """Every thread of a running process on `cores` (threads it starts later inherit it), as before afterwards."""
    threads = [int(task.name) for task in Path(f"/proc/{pid}/task").iterdir()]
    before = {tid: os.sched_getaffinity(tid) for tid in threads}
    for tid in threads:
        os.sched_setaffinity(tid, cores)
    try:
        yield
    finally:
        for task in Path(f"/proc/{pid}/task").iterdir():
            with suppress(OSError):  # a thread that ended meanwhile
                os.sched_setaffinity(int(task.name), before.get(int(task.name), frozenset(range(os.cpu_count() or 1))))


def children_cpu_seconds() -> float:
    """User plus system CPU-seconds of every child this process has waited for (for subprocess.run deltas)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class AccessLog:
    """Requests in the registry's access log written since `mark()` (an independent count from the server)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0

    def mark(self) -> None:
        self._offset = self.path.stat().st_size if self.path.exists() else 0

    def since_mark(self) -> list[LoggedRequest]:
        time.sleep(0.05)  # the registry writes its log line after the response; let the last ones land
        with self.path.open("rb") as log:
            log.seek(self._offset)
            text = log.read().decode("utf-8", errors="replace")
        return [
            LoggedRequest(
                method=match.group("method"),
                path=match.group("path"),
                status=int(match.group("status")),
                operation=None,
                user_agent=match.group("agent"),
            )
            for match in _ACCESS_LINE.finditer(text)
        ]


def _kind(path: str) -> str:
    if "/manifests/" in path:
        return "manifest"
    if "/tags/list" in path:
        return "tags"
    return "ping" if path.rstrip("/") == "/v2" else "other"


def summarise(entries: Iterable[LoggedRequest], agent_prefix: str) -> Counter[str]:
    """Keys like "HEAD manifest 200", "GET tags 200", "GET ping 401", for one user agent."""
    return Counter(
        f"{entry.method} {_kind(entry.path)} {entry.status}"
        for entry in entries
        if entry.user_agent.startswith(agent_prefix)
    )


def manifest_target(path: str) -> tuple[str, str] | None:
    """(repository, tag or digest) of a `/v2/<name>/manifests/<reference>` path."""
    name, found, reference = path.removeprefix("/v2/").partition("/manifests/")
    return (name, reference) if found else None


def method_totals(counts: Counter[str]) -> dict[str, int]:
    totals: Counter[str] = Counter()
    for key, number in counts.items():
        totals[key.split(" ")[0]] += number
    return dict(totals)


@dataclass(frozen=True)
class Spread:
    """min / median / max of a series (seconds, rates, MiB)."""

    low: float
    median: float
    high: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        return cls(min(values), statistics.median(values), max(values))

    def as_dict(self) -> dict[str, float]:
        return {"min": round(self.low, 4), "median": round(self.median, 4), "max": round(self.high, 4)}


def rates(tags: int, seconds: Sequence[float]) -> Spread:
    return Spread.of([tags / value for value in seconds])
