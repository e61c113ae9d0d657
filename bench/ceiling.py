"""The references: a raw asyncio manifest-HEAD loop (keep-alive, no library), and the compiled one (ceiling.c).

Run as a subprocess (`python -m bench.ceiling`) so it has a core to itself like the auditor does. It sends the
same Accept header as digest-audit, reads each response head, and checks the Docker-Content-Digest against
the expected digest, so it does the minimum work a correct checker must do. Prints JSON on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from audit.models import MANIFEST_ACCEPT

_SEPARATOR = b"\r\n\r\n"


def parse_reference_line(line: str) -> tuple[str, str, str]:
    """`host/repository:tag@digest` -> (repository, tag, digest); the host part is dropped."""
    name, _, digest = line.partition("@")
    _, _, path = name.partition("/")
    repository, _, tag = path.rpartition(":")
    return repository, tag, digest


async def _worker(
    host: str,
    port: int,
    queue: list[tuple[str, str, str]],
    outcome: dict[str, int],
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while queue:
            repository, tag, digest = queue.pop()
            request = (
                f"HEAD /v2/{repository}/manifests/{tag} HTTP/1.1\r\nHost: {host}:{port}\r\n"
                f"User-Agent: bench-ceiling\r\nAccept: {MANIFEST_ACCEPT}\r\n\r\n"
            )
            writer.write(request.encode("ascii"))
            head = await reader.readuntil(_SEPARATOR)
            if head[9:12] != b"200":  # a HEAD answer never has a body, whatever its Content-Length says
                outcome["other"] += 1
                continue
            outcome["match" if _header(head, b"docker-content-digest") == digest.encode() else "drift"] += 1
    finally:
        writer.close()


def _header(head: bytes, name: bytes) -> bytes | None:
    lowered = head.lower()
    start = lowered.find(b"\r\n" + name + b":")
    if start < 0:
        return None
    start += len(name) + 3
    end = head.find(b"\r\n", start)
    return head[start:end].strip()


async def head_loop(
    host: str, port: int, references: Sequence[tuple[str, str, str]], concurrency: int
) -> tuple[float, dict[str, int]]:
    """Seconds to HEAD every reference with `concurrency` keep-alive connections, and the outcome counts."""
    queue = list(reversed(references))
    outcome = {"match": 0, "drift": 0, "other": 0}
    started = time.perf_counter()
    await asyncio.gather(*(_worker(host, port, queue, outcome) for _ in range(concurrency)))
    return time.perf_counter() - started, outcome


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ceiling")
    parser.add_argument("--target", required=True, help="HOST:PORT to connect to")
    parser.add_argument("--refs", required=True, type=Path, help="one host/repository:tag@digest per line")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[8, 16, 32])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    host, _, port = args.target.rpartition(":")
    references = [parse_reference_line(line) for line in args.refs.read_text().split()]
    results: dict[str, object] = {}
    for concurrency in args.concurrency:
        seconds: list[float] = []
        outcome: dict[str, int] = {}
        for _ in range(args.rounds):
            elapsed, outcome = asyncio.run(head_loop(host, int(port), references, concurrency))
            seconds.append(elapsed)
        results[str(concurrency)] = {"seconds": seconds, "outcome": outcome}
    json.dump({"tags": len(references), "by_concurrency": results}, sys.stdout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


# --- the compiled ceiling (bench/ceiling.c) ----------------------------------------------------------------

C_SOURCE = Path(__file__).with_name("ceiling.c")


def build_compiled(directory: Path) -> Path:
    """Compile bench/ceiling.c with gcc -O2 into `directory` (at bench run time; nothing is shipped)."""
    binary = directory / "ceiling"
    subprocess.run(["gcc", "-O2", "-Wall", "-o", str(binary), str(C_SOURCE)], check=True, capture_output=True)
    return binary


def compiled_seconds(
    binary: Path, target: str, refs: Path, concurrency: int, rounds: int, *, cores: frozenset[int] | None = None
) -> tuple[list[float], dict[str, int]]:
    """Seconds per round of the compiled loop with `concurrency` connections, and the last round's outcome
    (`cores`: run it on those CPUs only)."""
    host, _, port = target.rpartition(":")
    command = [str(binary), host, port, str(refs), str(concurrency), str(rounds), MANIFEST_ACCEPT]
    pin = None if cores is None else lambda: os.sched_setaffinity(0, cores)
    done = subprocess.run(command, capture_output=True, text=True, check=True, preexec_fn=pin)
    raw = json.loads(done.stdout)
    return [float(s) for s in raw["seconds"]], {key: int(raw[key]) for key in ("match", "drift", "other")}
