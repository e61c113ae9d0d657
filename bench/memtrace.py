"""Where `run`'s memory goes: one `digest-audit run` in this process under tracemalloc.

A sampling thread takes a snapshot whenever traced memory grew past the last snapshot, so the snapshot kept is
(close to) the peak; it is written as the top lines, the top files and live objects by type. Stdout gets the
traced peak and the memory after imports, in MiB.

    python -m bench.memtrace OUT.txt     # with the environment of `run` (tables, endpoint, registry)
"""

from __future__ import annotations

import contextlib
import gc
import io
import json
import sys
import threading
import tracemalloc
from collections import Counter
from pathlib import Path

SAMPLE_SECONDS = 0.5


def main() -> int:
    out = Path(sys.argv[1])
    tracemalloc.start(1)
    import audit.adapters.registry.wire  # noqa: F401, PLC0415 - the transport, imported by the first request
    from audit.cli import main as cli_main  # noqa: PLC0415 - imported under tracemalloc on purpose

    after_imports = tracemalloc.get_traced_memory()[0]
    best: dict[str, object] = {"size": 0}
    done = threading.Event()

    def sample() -> None:
        while not done.wait(SAMPLE_SECONDS):
            current = tracemalloc.get_traced_memory()[0]
            if current > int(str(best["size"])) * 1.02:
                best["size"] = current
                best["snapshot"] = tracemalloc.take_snapshot()
                best["types"] = Counter(type(o).__name__ for o in gc.get_objects())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # the run's own output is not this tool's
            code = cli_main(["run"])
    finally:
        done.set()
        sampler.join()
    peak = tracemalloc.get_traced_memory()[1]
    snapshot = best.get("snapshot")
    lines: list[str] = [f"traced peak {peak / 2**20:.1f} MiB; after imports {after_imports / 2**20:.1f} MiB"]
    if isinstance(snapshot, tracemalloc.Snapshot):
        lines.append(f"snapshot at {int(str(best['size'])) / 2**20:.1f} MiB; top lines:")
        lines += [str(stat) for stat in snapshot.statistics("lineno")[:40]]
        lines.append("top files:")
        lines += [str(stat) for stat in snapshot.statistics("filename")[:25]]
        types = best["types"]
        assert isinstance(types, Counter)
        lines.append("objects by type (gc-tracked):")
        lines += [f"{count:>9} {name}" for name, count in types.most_common(30)]
    out.write_text("\n".join(lines) + "\n")
    json.dump(
        {"exit": code, "traced_peak_mib": round(peak / 2**20, 1), "after_imports_mib": round(after_imports / 2**20, 1)},
        sys.stdout,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
