"""`trust import` at scale: wall time and peak memory of a 100k-row back-fill and of a huge CSV with a bad last row.

    uv run python -m bench.trust_import                 # 100k valid rows, then ~200 MB with a bad last row
    uv run python -m bench.trust_import --rows 20000 --huge-mb 20 --timeout 60

Each case is one `python -m audit trust import FILE --trust-file T` process; its own peak RSS comes from wait4.
The interpreter's import path is the caller's, so PYTHONPATH=<another checkout>/src measures another version.
Run it by hand when the import path changes; it is not part of `make test` (no timing belongs in a test).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

HEADER = "registry,repository,tag,digest,platforms,media_type,source,commit,recorded_at,recorded_by,reason\n"


@dataclass(frozen=True)
class Outcome:
    case: str
    seconds: float
    cpu_seconds: float
    peak_rss_mb: float
    exit_code: int | None  # None: killed at the timeout
    records_written: int
    last_line: str


def _row(number: int, *, padding: str = "") -> str:
    digest = "sha256:" + f"{number:064x}"
    source = f"https://ci.example.com/org/app/actions/runs/{number}{padding}"
    return f"ghcr.io,org/app,v{number},{digest},,,{source},{number:040x},2024-05-01T12:00:00Z,ci,\n"


def write_valid(path: Path, rows: int) -> None:
    with path.open("w", encoding="utf-8") as handle:
        handle.write(HEADER)
        handle.writelines(_row(number) for number in range(rows))


def write_huge_with_bad_last_row(path: Path, megabytes: int) -> int:
    """Valid rows up to the size, then one row whose digest is malformed; returns the number of rows."""
    target = megabytes * 1024 * 1024
    rows = 0
    with path.open("w", encoding="utf-8") as handle:
        handle.write(HEADER)
        written = len(HEADER)
        while written < target:
            line = _row(rows, padding="?" + "x" * 40)
            handle.write(line)
            written += len(line)
            rows += 1
        handle.write("ghcr.io,org/app,bad,sha256:not-a-digest,,,ci,,2024-05-01T12:00:00Z,,\n")
    return rows + 1


def run_import(case: str, source: Path, trust_file: Path, timeout: float, extra: list[str]) -> Outcome:
    command = [sys.executable, "-m", "audit", "trust", "import", str(source), "--trust-file", str(trust_file), *extra]
    output = trust_file.with_suffix(".out")
    started = time.perf_counter()
    with output.open("w", encoding="utf-8") as sink:
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT)
        timer = threading.Timer(timeout, process.kill)
        timer.start()
        _, status, usage = os.wait4(process.pid, 0)  # this child's own peak RSS, not the largest child's
        timer.cancel()
    seconds = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    exit_code = None if process.returncode == -signal.SIGKILL else process.returncode
    written = 0
    if trust_file.exists():
        written = len(json.loads(trust_file.read_text(encoding="utf-8")).get("trusted", []))
    lines = [line for line in output.read_text(encoding="utf-8").splitlines() if line.strip()]
    cpu = usage.ru_utime + usage.ru_stime
    return Outcome(case, seconds, cpu, usage.ru_maxrss / 1024, exit_code, written, lines[0][:150] if lines else "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000, help="rows of the valid import")
    parser.add_argument("--huge-mb", type=int, default=200, help="size of the CSV with a bad last row")
    parser.add_argument("--timeout", type=float, default=300, help="seconds before a case is killed")
    parser.add_argument("--extra", default="", help="extra arguments for the huge case, e.g. '--max-rows 2000000'")
    args = parser.parse_args(argv)
    results: list[Outcome] = []
    with tempfile.TemporaryDirectory(prefix="trust-import-bench.") as scratch:
        directory = Path(scratch)
        valid = directory / "valid.csv"
        write_valid(valid, args.rows)
        results.append(run_import(f"{args.rows} valid rows", valid, directory / "t1.json", args.timeout, []))
        huge = directory / "huge.csv"
        rows = write_huge_with_bad_last_row(huge, args.huge_mb)
        size = huge.stat().st_size / 1024 / 1024
        results.append(
            run_import(
                f"{size:.0f} MB, {rows} rows, bad last row {args.extra}".strip(),
                huge,
                directory / "t2.json",
                args.timeout,
                args.extra.split(),
            )
        )
    print(f"python {sys.version.split()[0]}, PYTHONPATH={os.environ.get('PYTHONPATH', '')!r}")
    print("| case | wall s | CPU s | peak RSS (MB) | exit | records written | first output line |")
    print("|---|---|---|---|---|---|---|")
    for result in results:
        code = "killed" if result.exit_code is None else str(result.exit_code)
        print(
            f"| {result.case} | {result.seconds:.1f} | {result.cpu_seconds:.1f} | {result.peak_rss_mb:.0f} | {code} | "
            f"{result.records_written} | {result.last_line} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
