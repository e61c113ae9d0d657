"""The benchmark script still runs and its correctness columns hold (speed is measured there, never asserted here)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(shutil.which("skopeo") is None, reason="the naive baseline needs skopeo (apt-get install skopeo)")
def test_quick_benchmark_runs_and_every_verdict_is_right(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{ROOT}"}
    completed = subprocess.run(
        [sys.executable, "-m", "bench.run", "--quick", "--out", str(out), "--markdown", ""],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    results = json.loads(out.read_text())
    assert results["errors"] == []
    targets = {target["target"]: target for target in results["targets"]}
    # Request economy and correctness do not depend on the machine's speed; throughput targets do, and are
    # only reported by the benchmark.
    assert targets["every verdict right"]["met"] is True
    assert targets["HEAD per tag (check)"]["value"] == 1.0
    assert targets["GETs for tags that match (check)"]["value"] == 0.0
    assert targets["token requests per repository"]["value"] <= 1.0
    # CPU accounting is read from /proc around each client's run: present, and the registry did the work
    cpu = results["loopback"]["cpu"]
    assert cpu["cores"] == os.cpu_count()
    assert cpu["ceiling"]["registry_cpu_s"] > 0
    assert cpu["check"]["registry_cpu_s"] > 0
    assert cpu["check"]["client_cpu_s"] > 0
    assert cpu["check"]["machine_busy_cpu_s"] >= cpu["check"]["client_cpu_s"]
    apart = results["loopback"]["apart"]  # registry and client on separate cores, where there are two
    assert "skipped" in apart if len(os.sched_getaffinity(0)) < 2 else apart["ratio_to_ceiling"]["median"] > 0


@pytest.mark.skipif(shutil.which("uv") is None, reason="the runtime install is made with uv")
def test_the_measured_digest_audit_is_a_runtime_only_install(tmp_path: Path) -> None:
    """`make bench` measures digest-audit as a user installs it: without the development tools next to it."""
    from bench.environment import install_runtime  # noqa: PLC0415 - bench is importable from the repository root

    auditor = install_runtime(tmp_path / "runtime", ROOT)
    assert auditor is not None
    python = auditor.parent / "python"
    probe = "import importlib.util as u, audit.cli; print(u.find_spec('click') is None, u.find_spec('pytest') is None)"
    done = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, timeout=60, check=False)
    assert done.stdout.split() == ["True", "True"], done.stderr[-2000:]
    usage = subprocess.run([str(auditor), "check"], capture_output=True, text=True, timeout=60, check=False)
    assert usage.returncode == 2
    assert "Traceback" not in usage.stderr
