"""Peak RSS of `run` on DynamoDB and of `check` at 10,000 tags, repeated: the loop for working on memory.

`make bench` measures the 10,000-tag memory once per bench (one round, among everything else). This seeds a
registry and moto once and then measures whole processes again and again (median of `--rounds`), so each
change to the engine can be measured on its own. With `--serve` it keeps everything up and measures once
per line read from stdin (press Enter after each change); with `--trace FILE` one extra in-process run of
the engine writes tracemalloc's top lines and object counts at the peak to FILE.

    uv run python -m bench.memory --repos 250 --tags 40 --rounds 3 [--serve] [--trace FILE]
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING

from audit.adapters.dynamodb_store import create_tables
from audit.config import ENV_STATE_TABLE, ENV_TRUST_TABLE
from bench.environment import moto_server, process_environment
from bench.measure import run_process
from bench.seed import seed_dynamodb, seed_registry, trusted_records, write_references
from tests.support.local_registry import local_registry

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

PROJECT = Path(__file__).resolve().parent.parent
AUDITOR = Path(sys.executable).parent / "digest-audit"
TRUST_TABLE = "bench-memory-trust"
STATE_TABLE = "bench-memory-state"
_TABLE_NUMBERS = itertools.count()
type Json = dict[str, object]
OK_EXIT_CODES = frozenset({0, 1, 3})


def measure(env: dict[str, str], refs: Path, rounds: int, workdir: Path, dynamodb: DynamoDBClient) -> Json:
    """Median (and all) peak RSS in MiB of `rounds` first and steady `run`s on DynamoDB (each round a fresh
    state table) and of `check --json -f`."""
    peaks: dict[str, list[float]] = {"run_first": [], "run_steady": [], "check": []}
    seconds: dict[str, list[float]] = {label: [] for label in peaks}
    exits: set[int] = set()
    for _ in range(rounds):
        state_table = f"{STATE_TABLE}-{next(_TABLE_NUMBERS)}"
        create_tables(dynamodb, TRUST_TABLE, state_table)
        for label in ("run_first", "run_steady"):
            run = run_process(
                [str(AUDITOR), "run"], env=env | {ENV_STATE_TABLE: state_table}, stdout_path=workdir / "run.txt"
            )
            exits.add(run.returncode)
            if run.returncode not in OK_EXIT_CODES:
                print(run.stderr[-2000:], file=sys.stderr)
            peaks[label].append(round(run.max_rss_mib, 1))
            seconds[label].append(round(run.seconds, 2))
        check = run_process([str(AUDITOR), "check", "--json", "-f", str(refs)], env=env, stdout_path=workdir / "c.json")
        peaks["check"].append(round(check.max_rss_mib, 1))
        seconds["check"].append(round(check.seconds, 2))
    return {f"{label}_mib": statistics.median(values) for label, values in peaks.items()} | {
        "all": peaks,
        "seconds": seconds,  # wall time: noise on a shared machine, for orientation only
        "run_exit_codes": sorted(exits),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.memory")
    parser.add_argument("--repos", type=int, default=250)
    parser.add_argument("--tags", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--serve", action="store_true", help="measure again after each line on stdin")
    parser.add_argument("--trace", type=Path, help="also trace one in-process run; top allocations to this file")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as scratch, ExitStack() as stack:
        workdir = Path(scratch)
        registry = stack.enter_context(local_registry(workdir / "registry"))
        workload = seed_registry(registry, args.repos, args.tags, tamper=6, delete=2)
        refs = write_references(workdir / "refs.txt", workload, registry.host)
        moto = stack.enter_context(moto_server())
        dynamodb = moto.dynamodb()
        create_tables(dynamodb, TRUST_TABLE, STATE_TABLE)
        seed_dynamodb(dynamodb, TRUST_TABLE, trusted_records(workload, registry.host))
        env = (
            process_environment(workdir)
            | moto.client_environment()
            | {ENV_TRUST_TABLE: TRUST_TABLE, ENV_STATE_TABLE: STATE_TABLE}
        )
        print(json.dumps({"tags": workload.size}), flush=True)
        while True:
            print(json.dumps(measure(env, refs, args.rounds, workdir, dynamodb)), flush=True)
            if args.trace is not None:
                state_table = f"{STATE_TABLE}-{next(_TABLE_NUMBERS)}"  # a first run: every state is new
                create_tables(dynamodb, TRUST_TABLE, state_table)
                traced = subprocess.run(
                    [sys.executable, "-m", "bench.memtrace", str(args.trace)],
                    cwd=PROJECT,
                    env=env | {"PYTHONPATH": str(PROJECT), ENV_STATE_TABLE: state_table},
                    capture_output=True,
                    text=True,
                    check=False,
                )
                print(traced.stdout.strip() or traced.stderr.strip()[-2000:], flush=True)
            if not args.serve or not sys.stdin.readline():
                return 0


if __name__ == "__main__":
    raise SystemExit(main())
