"""Keep a seeded registry (and optionally a latency proxy) running, for profiling experiments by hand.

    uv run python -m bench.serve --repos 50 --tags 40 --latency-ms 50
    # then, in another shell, with the printed paths:
    uv run python -m bench.inproc --refs REFS --profile /tmp/profile.txt

Stops on Ctrl-C (or SIGTERM); everything lives in a scratch directory that is removed afterwards.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
import tempfile
import threading
from collections.abc import Sequence
from contextlib import ExitStack, suppress
from pathlib import Path

from bench.proxy import LatencyProxy
from bench.seed import seed_registry, write_references
from tests.support.local_registry import local_registry


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.serve")
    parser.add_argument("--repos", type=int, default=50)
    parser.add_argument("--tags", type=int, default=40)
    parser.add_argument("--latency-ms", type=float, default=0.0, help="also start a proxy with this delay")
    args = parser.parse_args(argv)
    scratch = Path(tempfile.mkdtemp(prefix="digest-audit-serve-"))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        with ExitStack() as stack:
            registry = stack.enter_context(local_registry(scratch / "registry"))
            workload = seed_registry(registry, args.repos, args.tags, tamper=6, delete=2)
            refs = write_references(scratch / "refs.txt", workload, registry.host)
            print(f"registry {registry.host}: {workload.size} tags; references in {refs}", flush=True)
            if args.latency_ms > 0:
                proxy = stack.enter_context(
                    LatencyProxy("127.0.0.1", registry.process.port, latency=args.latency_ms / 1000)
                )
                proxied = write_references(scratch / "refs-proxy.txt", workload, proxy.host)
                print(f"proxy {proxy.host} (+{args.latency_ms:g} ms): references in {proxied}", flush=True)
            print(f"registry log: {registry.log_path}", file=sys.stderr, flush=True)
            with suppress(KeyboardInterrupt):
                stop.wait()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
