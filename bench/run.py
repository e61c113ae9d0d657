"""`make bench`: seed a real registry, then measure digest-audit against a ceiling and the naive script.

    uv run python -m bench.run                       # 50 repositories x 40 tags = 2,000 (a few minutes)
    uv run python -m bench.run --repos 250 --tags 40 # 10,000 tags
    uv run python -m bench.run --quick               # smoke run with tiny sizes

Everything runs on loopback in one invocation: a docker-registry (plain http, and a token-auth one), a
latency proxy, moto for DynamoDB/SNS. Results go to docs/benchmarks.md (the part above the notes marker is
regenerated, the notes below it are kept) and to bench/results.json.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import importlib.util
import json
import os
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from audit.adapters.dynamodb_store import DynamoStateStore, create_tables
from audit.adapters.file_store import FileStateStore
from audit.config import ENV_STATE_TABLE, ENV_TRUST_TABLE
from audit.models import Verdict
from audit.records import TagState
from bench.ceiling import build_compiled, compiled_seconds
from bench.environment import (
    STATE_TABLE,
    TRUST_TABLE,
    Moto,
    install_runtime,
    machine_facts,
    moto_server,
    process_environment,
)
from bench.measure import (
    AccessLog,
    CpuMeter,
    CpuSpan,
    ProcessRun,
    Spread,
    children_cpu_seconds,
    manifest_target,
    method_totals,
    process_pinned,
    rates,
    run_process,
    summarise,
)
from bench.proxy import LatencyProxy, LoggedRequest, RequestLog
from bench.report import write_markdown
from bench.seed import (
    BenchImage,
    Workload,
    seed_dynamodb,
    seed_registry,
    trusted_records,
    write_references,
    write_trust_file,
)
from tests.support.cfn_template import function_properties, load_template
from tests.support.local_registry import LocalRegistry, local_registry

PROJECT = Path(__file__).resolve().parent.parent
AUDITOR = Path(sys.executable).parent / "digest-audit"
RESULTS = PROJECT / "bench" / "results.json"
REPORT = PROJECT / "docs" / "benchmarks.md"
AGENT = "digest-audit/"
OK_EXIT_CODES = frozenset({0, 1, 3})  # fine / drift or missing / unverifiable: all are answers, not crashes
type Json = dict[str, object]


@dataclass(frozen=True)
class Options:
    repositories: int
    tags: int
    rounds: int
    comparison_rounds: int  # interleaved rounds of ceiling / asyncio loop / skopeo / check (targets 1 and 2)
    latency_ms: float
    naive_sample: int
    concurrency_levels: tuple[int, ...]
    latency_levels: tuple[int, ...]
    token_repositories: int
    tamper: int
    delete: int
    out: Path
    markdown: Path | None
    keep: bool
    experiments: bool
    command: str
    memory_tags: int  # 0: no 10,000-tag memory phase
    runtime_install: bool = True  # measure digest-audit installed with its runtime dependencies only
    startup_rounds: int = 5  # processes timed for each start-up figure (a smoke run: 2)

    @property
    def latency(self) -> float:
        return self.latency_ms / 1000


@dataclass
class Bench:
    """What every phase shares: options, scratch space, the environment for subprocesses, the workload."""

    options: Options
    workdir: Path
    env: dict[str, str]
    workload: Workload
    registry: LocalRegistry
    access: AccessLog
    ceiling_binary: Path
    auditor: Path = AUDITOR  # the `digest-audit` measured: a runtime-only install unless --quick
    errors: list[str] = field(default_factory=list)

    def path(self, name: str) -> Path:
        return self.workdir / name

    @property
    def cpu(self) -> CpuMeter:
        """CPU accounting around a client's run, with the loopback registry as the server."""
        return CpuMeter(self.registry.process.pid)

    def note_failure(self, what: str, run: ProcessRun) -> None:
        tail = run.stderr.strip().splitlines()[-5:]
        self.errors.append(f"{what}: exit {run.returncode}: {' | '.join(tail)}")


# --- verdict checks ----------------------------------------------------------------------------------------


def verify_check_output(run: ProcessRun, workload: Workload) -> tuple[bool, dict[str, int]]:
    """Every row of `check --json` has the expected verdict (and every seeded tag has a row)."""
    try:
        rows = json.loads(run.stdout)
    except json.JSONDecodeError:
        return False, {}
    expected = workload.expected_verdicts()
    seen = {(row["repository"], row["tag"]): row["status"] for row in rows}
    counts = dict(Counter(seen.values()))
    right = len(seen) == len(expected) and all(seen.get(key) == verdict.value for key, verdict in expected.items())
    return right, counts


def verify_states(
    states: dict[tuple[str, str], TagState], host: str, workload: Workload
) -> tuple[bool, dict[str, int]]:
    """After a run, the saved state of every tag holds the expected verdict."""
    expected = workload.expected_verdicts()
    counts = dict(Counter(state.last_verdict.value for state in states.values()))
    right = len(states) == len(expected) and all(
        (state := states.get((f"{host}/{repository}", tag))) is not None and state.last_verdict is verdict
        for (repository, tag), verdict in expected.items()
    )
    return right, counts


# --- counting --------------------------------------------------------------------------------------------


class RequestSource(Protocol):
    """Where requests are counted independently of the client: the registry's access log or a proxy."""

    def mark(self) -> None: ...

    def since_mark(self) -> list[LoggedRequest]: ...


class ProxySource:
    def __init__(self, log: RequestLog) -> None:
        self._log = log

    def mark(self) -> None:
        self._log.clear()

    def since_mark(self) -> list[LoggedRequest]:
        return self._log.entries()


def gets_on_matching_tags(entries: Sequence[LoggedRequest], workload: Workload) -> int:
    """Manifest GETs of the auditor for tags that still serve their trusted digest: these should be zero."""
    expected = workload.expected_verdicts()
    count = 0
    for entry in entries:
        target = manifest_target(entry.path)
        if entry.method == "GET" and entry.user_agent.startswith(AGENT) and target is not None:
            count += expected.get(target) is Verdict.MATCH
    return count


def per_tag(counts: Counter[str], tags: int) -> dict[str, float]:
    totals = method_totals(counts)
    return {method: round(number / tags, 4) for method, number in sorted(totals.items())}


# --- phases ----------------------------------------------------------------------------------------------


def measure_startup(bench: Bench) -> Json:
    """Cold-start proxies: bare interpreter, `import handler`, and a one-tag `check` process."""
    python = sys.executable
    # `import handler` as Lambda starts it: with the fixed-text variables template.yaml gives the function
    env = {**bench.env, "PYTHONPATH": str(PROJECT / "src"), **function_environment()}
    # Compile .pyc files once, as a deployed package has them: with PYTHONDONTWRITEBYTECODE set (CI shells set it)
    # every measured import would compile each changed module again.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    rounds = bench.options.startup_rounds
    run_process([python, "-c", "import handler"], env=env)
    bare = [run_process([python, "-c", "pass"], env=env).seconds for _ in range(rounds)]
    handler = [run_process([python, "-c", "import handler"], env=env).seconds for _ in range(rounds)]
    importtime = subprocess.run(
        [python, "-X", "importtime", "-c", "import handler"], env=env, capture_output=True, text=True, check=False
    ).stderr
    cumulative: dict[str, int] = {}
    self_time: dict[str, int] = {}
    for line in importtime.splitlines():
        parts = line.removeprefix("import time:").split("|")
        if len(parts) != 3 or not parts[0].strip().isdigit():
            continue
        name = parts[2].strip()
        cumulative.setdefault(name, int(parts[1]))
        self_time.setdefault(name, int(parts[0]))
    interesting = (
        "handler",
        "audit.bootstrap",
        "boto3",
        "botocore.session",
        "aws_lambda_powertools",
        "aws_xray_sdk.core",
        "httpx",
        "httpx._main",
        "pydantic",
        "audit.adapters.registry",
    )
    one = bench.workload.images[0].reference(bench.registry.host)
    check_one = [
        run_process([str(bench.auditor), "check", "--json", one], env=bench.env).seconds for _ in range(rounds)
    ]
    bare_spread, handler_spread = Spread.of(bare), Spread.of(handler)
    return {
        "python_bare_s": bare_spread.as_dict(),
        "import_handler_s": handler_spread.as_dict(),
        "import_handler_added_s": round(handler_spread.median - bare_spread.median, 4),
        "importtime_cumulative_ms": {
            name: round(cumulative[name] / 1000, 1) for name in interesting if name in cumulative
        },
        "importtime_top_self_ms": {
            name: round(micro / 1000, 1) for name, micro in sorted(self_time.items(), key=lambda item: -item[1])[:10]
        },
        "check_one_tag_s": Spread.of(check_one).as_dict(),
    }


def function_environment() -> dict[str, str]:
    """The audit function's environment variables that template.yaml sets to fixed text (not a reference)."""
    variables = function_properties(load_template())["Environment"]["Variables"]
    return {name: value for name, value in variables.items() if isinstance(value, str)}


def ceiling_seconds(target: str, refs: Path, levels: Sequence[int], rounds: int) -> dict[int, list[float]]:
    """Seconds of the raw HEAD loop per concurrency level (run in its own process)."""
    command = [sys.executable, "-m", "bench.ceiling", "--target", target, "--refs", str(refs)]
    command += ["--rounds", str(rounds), "--concurrency", *map(str, levels)]
    done = subprocess.run(command, cwd=PROJECT, capture_output=True, text=True, check=True)
    raw = json.loads(done.stdout)
    return {int(level): list(result["seconds"]) for level, result in raw["by_concurrency"].items()}


def _naive_one(host: str, image: BenchImage, env: dict[str, str]) -> Verdict:
    done = subprocess.run(
        ["skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{image.reference(host, pinned=False)}"],
        env=env,
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        return Verdict.MISSING if b"manifest unknown" in done.stderr.lower() else Verdict.UNVERIFIABLE
    live = "sha256:" + hashlib.sha256(done.stdout).hexdigest()
    return Verdict.MATCH if live == image.trusted_digest else Verdict.DRIFT


@dataclass
class NaiveSeries:
    """What a user scripts today: `skopeo inspect --raw docker://…` | sha256, one tag after another."""

    bench: Bench
    host: str
    sample: list[BenchImage]
    source: RequestSource
    seconds: list[float] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)
    right: bool = True

    def once(self) -> None:
        self.source.mark()
        started = time.perf_counter()
        verdicts = [_naive_one(self.host, image, self.bench.env) for image in self.sample]
        self.seconds.append(time.perf_counter() - started)
        self.counts = summarise(self.source.since_mark(), "skopeo")
        self.right = self.right and all(v is image.expected for v, image in zip(verdicts, self.sample, strict=True))

    def summary(self) -> Json:
        return {
            "sample": len(self.sample),
            "seconds": Spread.of(self.seconds).as_dict(),
            "tags_per_s": rates(len(self.sample), self.seconds).as_dict(),
            "requests": dict(self.counts),
            "requests_per_tag": per_tag(self.counts, len(self.sample)),
            "verdicts_right": self.right,
        }


@dataclass
class CheckSeries:
    """`digest-audit check --json -f FILE` over every tag, default options, as a whole process."""

    bench: Bench
    refs: Path
    what: str
    source: RequestSource
    seconds: list[float] = field(default_factory=list)
    rss: list[float] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)
    verdicts: dict[str, int] = field(default_factory=dict)
    needless_gets: int = 0
    right: bool = True
    cpu: list[tuple[CpuSpan, float]] = field(default_factory=list)  # per round: machine and server, client CPU

    def once(self) -> None:
        bench = self.bench
        self.source.mark()
        with bench.cpu.span() as span:
            run = run_process(
                [str(bench.auditor), "check", "--json", "-f", str(self.refs)],
                env=bench.env,
                stdout_path=bench.path(f"check-{self.what}-{len(self.seconds)}.json"),
            )
        self.cpu.append((span, run.cpu_seconds))
        entries = self.source.since_mark()
        self.counts = summarise(entries, AGENT)
        self.needless_gets = max(self.needless_gets, gets_on_matching_tags(entries, bench.workload))
        if run.returncode not in OK_EXIT_CODES:
            bench.note_failure(f"check ({self.what})", run)
        ok, self.verdicts = verify_check_output(run, bench.workload)
        self.right = self.right and ok
        self.seconds.append(run.seconds)
        self.rss.append(run.max_rss_mib)

    def summary(self) -> Json:
        tags = self.bench.workload.size
        return {
            "tags": tags,
            "seconds": Spread.of(self.seconds).as_dict(),
            "tags_per_s": rates(tags, self.seconds).as_dict(),
            "max_rss_mib": Spread.of(self.rss).as_dict(),
            "requests": dict(self.counts),
            "requests_per_tag": per_tag(self.counts, tags),
            "gets_on_matching_tags": self.needless_gets,
            "verdicts": self.verdicts,
            "verdicts_right": self.right,
        }


def measure_throughput(
    bench: Bench,
    host: str,
    refs: Path,
    source: RequestSource,
    *,
    what: str,
    levels: Sequence[int],
    naive_sample: int,
    fixed_level: int | None = None,
) -> Json:
    """The compiled ceiling, the asyncio loop, the naive baseline and `check`, interleaved round by round so that
    load from other processes on the machine hits all alike; ratios are computed per round, then their median
    is reported. The ceiling runs at its best connection count, or at `fixed_level` when the target names one."""
    tags = bench.workload.size
    scan = {level: compiled_seconds(bench.ceiling_binary, host, refs, level, 1)[0] for level in levels}
    best = fixed_level or min(scan, key=lambda level: scan[level][0])
    images = bench.workload.images
    step = max(1, len(images) // naive_sample)
    naive = NaiveSeries(bench, host, list(images[::step][:naive_sample]), source)
    check = CheckSeries(bench, refs, what, source)
    ceiling: list[float] = []
    asyncio_loop: list[float] = []
    outcome: dict[str, int] = {}
    ceiling_cpu: list[tuple[CpuSpan, float]] = []
    for _ in range(bench.options.comparison_rounds):
        before = children_cpu_seconds()
        with bench.cpu.span() as span:
            seconds, outcome = compiled_seconds(bench.ceiling_binary, host, refs, best, 1)
        ceiling_cpu.append((span, children_cpu_seconds() - before))
        ceiling += seconds
        asyncio_loop += ceiling_seconds(host, refs, [best], 1)[best]
        check.once()
        naive.once()
    check_rates = [tags / value for value in check.seconds]
    ceiling_rates = [tags / value for value in ceiling]
    naive_rates = [len(naive.sample) / value for value in naive.seconds]
    return {
        "ceiling": {
            "what": "compiled C loop (bench/ceiling.c, gcc -O2, epoll, keep-alive, full Accept set)",
            "scan_tags_per_s": {str(level): round(tags / seconds[0], 1) for level, seconds in scan.items()},
            "best_concurrency": best,
            "tags_per_s": rates(tags, ceiling).as_dict(),
            "outcome_last_round": outcome,
        },
        "asyncio_loop": {
            "concurrency": best,
            "tags_per_s": rates(tags, asyncio_loop).as_dict(),
            "ratio_to_ceiling": Spread.of(
                [tags / a / c for a, c in zip(asyncio_loop, ceiling_rates, strict=True)]
            ).as_dict(),
        },
        "naive": naive.summary(),
        "check": check.summary()
        | {
            "ratio_to_ceiling": Spread.of([c / m for c, m in zip(check_rates, ceiling_rates, strict=True)]).as_dict(),
            "speedup_over_naive": Spread.of([c / n for c, n in zip(check_rates, naive_rates, strict=True)]).as_dict(),
        },
        "cpu": {
            "cores": os.cpu_count(),
            "ceiling": cpu_summary(ceiling_cpu, tags),
            "check": cpu_summary(check.cpu, tags),
        },
    }


def measure_apart(bench: Bench, host: str, refs: Path, concurrency: int) -> Json:
    """The ceiling and `check` with the registry on one core and the client on another, interleaved: what the
    ratio is when the client does not take CPU from the registry, as with a registry on its own machine. Not a
    target figure (the targets share the cores); it shows how much of the gap is the shared CPU."""
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        return {"skipped": "fewer than 2 cores"}
    server, client = frozenset(cores[:1]), frozenset(cores[1:2])
    tags = bench.workload.size
    ceiling: list[float] = []
    check: list[float] = []
    with process_pinned(bench.registry.process.pid, server):
        for _ in range(bench.options.comparison_rounds):
            ceiling += compiled_seconds(bench.ceiling_binary, host, refs, concurrency, 1, cores=client)[0]
            run = run_process(
                [str(bench.auditor), "check", "--json", "-f", str(refs)],
                env=bench.env,
                stdout_path=bench.path("check-apart.json"),
                cores=client,
            )
            if run.returncode not in OK_EXIT_CODES:
                bench.note_failure("check (registry and client apart)", run)
            check.append(run.seconds)
    return {
        "registry_cores": sorted(server),
        "client_cores": sorted(client),
        "ceiling_tags_per_s": rates(tags, ceiling).as_dict(),
        "check_tags_per_s": rates(tags, check).as_dict(),
        "ratio_to_ceiling": Spread.of([c / k for c, k in zip(ceiling, check, strict=True)]).as_dict(),
    }


def cpu_summary(rounds: Sequence[tuple[CpuSpan, float]], tags: int) -> Json:
    """Medians over the rounds of where the CPU went while one client ran (whole process, start-up included):
    the client's own, the registry's (per tag), and the machine's idle CPU-seconds (cores neither used)."""

    def median(values: Sequence[float | None]) -> float | None:
        known = [value for value in values if value is not None]
        return round(statistics.median(known), 3) if known else None

    server = median([span.server for span, _ in rounds])
    return {
        "client_cpu_s": median([client for _, client in rounds]),
        "registry_cpu_s": server,
        "registry_cpu_ms_per_tag": round(server * 1000 / tags, 3) if server is not None else None,
        "machine_busy_cpu_s": median([span.machine_busy for span, _ in rounds]),
        "machine_idle_cpu_s": median([span.machine_idle for span, _ in rounds]),
    }


@dataclass(frozen=True)
class RunVariant:
    """How to invoke `digest-audit run` and how to read back what it saved."""

    name: str
    arguments: list[str]
    extra_env: dict[str, str]
    host: str  # the registry host named in the trust records
    load_states: Callable[[], dict[tuple[str, str], TagState]]
    aws_log: RequestLog | None = None


def _one_run(bench: Bench, variant: RunVariant, label: str) -> tuple[ProcessRun, bool, dict[str, int], Json]:
    if variant.aws_log is not None:
        variant.aws_log.clear()
    run = run_process(
        [str(bench.auditor), "run", *variant.arguments],
        env={**bench.env, **variant.extra_env},
        stdout_path=bench.path(f"run-{variant.name}-{label}.txt"),
    )
    if run.returncode not in OK_EXIT_CODES:
        bench.note_failure(f"run ({variant.name}, {label})", run)
    right, verdicts = verify_states(variant.load_states(), variant.host, bench.workload)
    aws: Json = {}
    if variant.aws_log is not None:
        aws = dict(sorted(variant.aws_log.operations().items()))
    return run, right, verdicts, aws


def measure_run(bench: Bench, variant: RunVariant) -> Json:
    """The full engine: the first run (no state yet), then steady-state rounds (state from the run before)."""
    tags = bench.workload.size
    first, first_right, _, first_aws = _one_run(bench, variant, "first")
    seconds: list[float] = []
    rss: list[float] = []
    right = first_right
    verdicts: dict[str, int] = {}
    aws: Json = {}
    for number in range(bench.options.rounds):
        run, ok, verdicts, aws = _one_run(bench, variant, f"steady-{number}")
        right = right and ok
        seconds.append(run.seconds)
        rss.append(run.max_rss_mib)
    result: Json = {
        "tags": tags,
        "first_run_s": round(first.seconds, 4),
        "seconds": Spread.of(seconds).as_dict(),
        "tags_per_s": rates(tags, seconds).as_dict(),
        "max_rss_mib": Spread.of([first.max_rss_mib, *rss]).as_dict(),
        "verdicts": verdicts,
        "verdicts_right": right,
    }
    if variant.aws_log is not None:
        result["aws_calls_first_run"] = first_aws
        result["aws_calls_steady_run"] = aws
    return result


def measure_in_process(bench: Bench, refs: Path, what: str, *, profile: bool) -> Json:
    """The client's loop without process start-up: its own rate and `RegistryClient.stats` per tag."""
    command = [sys.executable, "-m", "bench.inproc", "--refs", str(refs), "--rounds", str(bench.options.rounds)]
    profile_path = bench.path(f"profile-{what}.txt")
    if profile:
        command += ["--profile", str(profile_path)]
    done = subprocess.run(
        command, cwd=PROJECT, env=bench.env | {"PYTHONPATH": str(PROJECT)}, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        bench.errors.append(f"in-process ({what}): {done.stderr.strip().splitlines()[-1:]}")
        return {}
    raw = json.loads(done.stdout)
    tags = int(raw["tags"])
    stats = {name: value for name, value in raw["stats"].items() if value}
    result: Json = {
        "tags_per_s": rates(tags, raw["seconds"]).as_dict(),
        "stats_last_round": stats,
        "stats_per_tag": {name: round(value / tags, 4) for name, value in stats.items()},
        "verdicts": raw["verdicts"],
    }
    if profile and profile_path.exists():
        result["profile_top_tottime"] = _profile_top(profile_path.read_text(), 15)
    return result


_INSTALL_PREFIX = re.compile(r"\S*/(?:site-packages|lib/python3\.\d+)/")


def _machine_free(location: str) -> str:
    """A profile location without this machine's directories (results are committed)."""
    return _INSTALL_PREFIX.sub("", location.replace(f"{PROJECT}/", ""))


def _profile_top(report: str, count: int) -> list[str]:
    """The first `count` rows of a pstats table, squeezed to `tottime cumtime function`."""
    lines = report.splitlines()
    start = next((i for i, line in enumerate(lines) if line.lstrip().startswith("ncalls")), len(lines))
    rows: list[str] = []
    for line in lines[start + 1 : start + 1 + count]:
        parts = line.split(None, 5)
        if len(parts) == 6:
            rows.append(f"{parts[1]:>7} {parts[3]:>7}  {_machine_free(parts[5])}")
    return rows


@dataclass(frozen=True)
class ClientVariant:
    transport: str  # bench.inproc --transport
    concurrency: int
    loop: str = "asyncio"

    @property
    def name(self) -> str:
        return f"{self.transport} transport, {self.concurrency} connections, {self.loop}"


def client_variants(*, latency: bool) -> list[ClientVariant]:
    """The experiments: httpx's pool at several sizes, one single-connection transport per slot, uvloop."""
    levels = (16, 64) if latency else (8, 16, 64)
    variants = [ClientVariant(transport, level) for transport in ("default", "sharded") for level in levels]
    if importlib.util.find_spec("uvloop") is not None:  # `uv run --with uvloop python -m bench.run ...`
        variants += [ClientVariant("default", 16, "uvloop"), ClientVariant("sharded", 16, "uvloop")]
    return variants


def measure_experiments(bench: Bench, host: str, refs: Path, *, latency: bool, ceiling_level: int) -> Json:
    """The client loop in-process under each variant, interleaved with the ceiling, ratio per round."""
    tags = bench.workload.size
    variants = client_variants(latency=latency)
    seconds: dict[ClientVariant, list[float]] = {variant: [] for variant in variants}
    ceiling: list[float] = []
    for _ in range(bench.options.rounds):
        ceiling += ceiling_seconds(host, refs, [ceiling_level], 1)[ceiling_level]
        for variant in variants:
            command = [sys.executable, "-m", "bench.inproc", "--refs", str(refs), "--rounds", "1"]
            command += ["--transport", variant.transport, "--concurrency", str(variant.concurrency)]
            command += ["--loop", variant.loop]
            done = subprocess.run(command, cwd=PROJECT, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                bench.errors.append(f"experiment {variant.name}: {done.stderr.strip().splitlines()[-1:]}")
                continue
            seconds[variant] += json.loads(done.stdout)["seconds"]
    result: Json = {"ceiling_concurrency": ceiling_level, "ceiling_tags_per_s": rates(tags, ceiling).as_dict()}
    for variant, values in seconds.items():
        if len(values) != len(ceiling):
            continue
        result[variant.name] = {
            "tags_per_s": rates(tags, values).as_dict(),
            "ratio_to_ceiling": Spread.of([c / v for v, c in zip(values, ceiling, strict=True)]).as_dict(),
        }
    return result


def measure_token_registry(bench: Bench, stack: ExitStack) -> Json:
    """Token auth: how many token requests per repository per run, and what the first request costs."""
    options = bench.options
    registry = stack.enter_context(local_registry(bench.path("token-registry"), auth="token"))
    workload = seed_registry(registry, options.token_repositories, options.tags, tamper=0, delete=0)
    refs = write_references(bench.path("refs-token.txt"), workload, registry.host)
    assert registry.credentials is not None and registry.token_server is not None
    config_dir = bench.path("docker-config-token")
    config_dir.mkdir(exist_ok=True)
    secret = base64.b64encode(f"{registry.credentials.username}:{registry.credentials.password}".encode()).decode()
    (config_dir / "config.json").write_text(json.dumps({"auths": {registry.host: {"auth": secret}}}))
    access = AccessLog(registry.log_path)
    env = {**bench.env, "DOCKER_CONFIG": str(config_dir)}
    seconds: list[float] = []
    tokens: list[int] = []
    counts: Counter[str] = Counter()
    right = True
    for number in range(options.rounds):
        registry.token_server.reset()
        access.mark()
        run = run_process(
            [str(bench.auditor), "check", "--json", "-f", str(refs)],
            env=env,
            stdout_path=bench.path(f"check-token-{number}.json"),
        )
        counts = summarise(access.since_mark(), AGENT)
        tokens.append(registry.token_server.request_count)
        ok, _ = verify_check_output(run, workload)
        right = right and ok
        seconds.append(run.seconds)
    return {
        "repositories": options.token_repositories,
        "tags": workload.size,
        "seed_s": round(workload.seed_seconds, 2),
        "tags_per_s": rates(workload.size, seconds).as_dict(),
        "token_requests_per_run": Spread.of([float(t) for t in tokens]).as_dict(),
        "token_requests_per_repository": round(max(tokens) / options.token_repositories, 3),
        "requests": dict(counts),
        "requests_per_tag": per_tag(counts, workload.size),
        "verdicts_right": right,
    }


# --- 10,000 tags: memory, and run on DynamoDB phase by phase ------------------------------------------------

TRUST_TABLE_10K = "bench-trusted-digests-10k"
STATE_TABLE_10K = "bench-audit-state-10k"


def measure_memory(bench: Bench, stack: ExitStack, moto: Moto, aws_proxy: LatencyProxy) -> Json:
    """Peak RSS of `check` and of `run` on DynamoDB at `memory_tags` tags (one round: memory, not speed), and
    the phases of `run` (Scan pages, checks) in one process."""
    options = bench.options
    repositories = max(1, options.memory_tags // options.tags)
    registry = stack.enter_context(local_registry(bench.path("registry-memory")))
    workload = seed_registry(registry, repositories, options.tags, tamper=options.tamper, delete=options.delete)
    host = registry.host
    refs = write_references(bench.path("refs-memory.txt"), workload, host)
    check = run_process(
        [str(bench.auditor), "check", "--json", "-f", str(refs)],
        env=bench.env,
        stdout_path=bench.path("check-memory.json"),
    )
    check_right, check_verdicts = verify_check_output(check, workload)
    dynamodb = moto.dynamodb()
    create_tables(dynamodb, TRUST_TABLE_10K, STATE_TABLE_10K)
    seeded = time.perf_counter()
    seed_dynamodb(dynamodb, TRUST_TABLE_10K, trusted_records(workload, host))
    seed_seconds = time.perf_counter() - seeded
    env = (
        bench.env
        | moto.client_environment(aws_proxy.url)
        | {
            ENV_TRUST_TABLE: TRUST_TABLE_10K,
            ENV_STATE_TABLE: STATE_TABLE_10K,
        }
    )
    runs: dict[str, Json] = {}
    right = True
    verdicts: dict[str, int] = {}
    for label in ("first", "steady"):
        aws_proxy.log.clear()
        run = run_process([str(bench.auditor), "run"], env=env, stdout_path=bench.path(f"run-memory-{label}.txt"))
        if run.returncode not in OK_EXIT_CODES:
            bench.note_failure(f"run on DynamoDB ({workload.size} tags, {label})", run)
        ok, verdicts = verify_states(DynamoStateStore(STATE_TABLE_10K, dynamodb).load_all(), host, workload)
        right = right and ok
        runs[label] = {
            "seconds": round(run.seconds, 3),
            "max_rss_mib": round(run.max_rss_mib, 1),
            "aws_calls": dict(sorted(aws_proxy.log.operations().items())),
        }
    aws_proxy.log.clear()
    done = subprocess.run(
        [sys.executable, "-m", "bench.phases", "--trust-table", TRUST_TABLE_10K, "--state-table", STATE_TABLE_10K],
        cwd=PROJECT,
        env=env | {"PYTHONPATH": str(PROJECT)},
        capture_output=True,
        text=True,
        check=False,
    )
    phases: Json = {}
    if done.returncode == 0:
        phases = json.loads(done.stdout) | {"aws_calls": dict(sorted(aws_proxy.log.operations().items()))}
    else:
        bench.errors.append(f"run phases: {done.stderr.strip().splitlines()[-1:]}")
    return {
        "tags": workload.size,
        "seed_registry_s": round(workload.seed_seconds, 2),
        "seed_dynamodb_s": round(seed_seconds, 2),
        "check": {
            "seconds": round(check.seconds, 3),
            "tags_per_s": round(workload.size / check.seconds, 1),
            "max_rss_mib": round(check.max_rss_mib, 1),
            "verdicts": check_verdicts,
            "verdicts_right": check_right,
        },
        "run_dynamodb": runs | {"verdicts": verdicts, "verdicts_right": right},
        "run_phases": phases,
    }


def measure_http2(options: Options) -> Json:
    """h2 against HTTP/1.1 over TLS through the latency proxy (bench/http2.py, its own registry and process)."""
    repositories, tags = (2, 8) if options.repositories * options.tags <= 100 else (25, options.tags)
    command = [sys.executable, "-m", "bench.http2", "--repos", str(repositories), "--tags", str(tags)]
    command += ["--latency-ms", str(options.latency_ms), "--rounds", str(min(options.rounds, 2))]
    done = subprocess.run(command, cwd=PROJECT, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1:]}
    result: Json = json.loads(done.stdout)
    return result


def measure_transport_cost(env: dict[str, str]) -> Json:
    """What the registry client (audit.adapters.registry, its wire transport included) adds to httpx: import
    time (paid at the first request, never by `import handler`) and the transport's installed size. It replaced
    httpx-aiohttp, whose aiohttp alone added 0.158 s and 11 MiB."""
    python = sys.executable
    bare = [run_process([python, "-c", "import httpx"], env=env).seconds for _ in range(5)]
    client = [run_process([python, "-c", "import httpx, audit.adapters.registry"], env=env).seconds for _ in range(5)]
    spec = importlib.util.find_spec("audit.adapters.registry.wire")
    size = Path(spec.origin).stat().st_size / 1024 if spec is not None and spec.origin is not None else 0.0
    return {
        "import_s_added": round(Spread.of(client).median - Spread.of(bare).median, 4),
        "installed_kib": {"audit/adapters/registry/wire.py": round(size, 1)},
        "installed_kib_total": round(size, 1),
    }


# --- targets ---------------------------------------------------------------------------------------------


def _get(data: Json, *path: str) -> object:
    node: object = data
    for key in path:
        if not isinstance(node, dict):
            return None
        node = node.get(key)
    return node


def _number(data: Json, *path: str) -> float:
    value = _get(data, *path)
    return float(value) if isinstance(value, int | float) else float("nan")


def evaluate_targets(results: Json, options: Options) -> list[Json]:
    """The issue's targets, each with the measured value and whether it is met (medians; ratios per round)."""
    to_ceiling = _number(results, "loopback", "check", "ratio_to_ceiling", "median")
    over_naive = _number(results, "loopback", "check", "speedup_over_naive", "median")
    proxied = _number(results, "latency", "check", "ratio_to_ceiling", "median")
    level = int(_number(results, "latency", "ceiling", "best_concurrency"))
    heads = _number(results, "loopback", "check", "requests_per_tag", "HEAD")
    gets = _number(results, "loopback", "check", "gets_on_matching_tags")
    token_per_repo = _number(results, "token", "token_requests_per_repository")
    memory_tags = int(_number(results, "memory", "tags")) if _get(results, "memory") else 0
    check_rss = _number(results, "memory", "check", "max_rss_mib")
    run_rss = max(
        _number(results, "memory", "run_dynamodb", "first", "max_rss_mib"),
        _number(results, "memory", "run_dynamodb", "steady", "max_rss_mib"),
    )
    added = _number(results, "startup", "import_handler_added_s")
    rows: list[tuple[str, str, float, bool]] = [
        ("1. check vs compiled ceiling (loopback)", ">= 0.75 x", to_ceiling, to_ceiling >= 0.75),
        ("1. check vs naive skopeo (loopback)", ">= 25 x", over_naive, over_naive >= 25),
        (
            f"2. check (defaults) vs {level}-connection loop, {options.latency_ms:g} ms away",
            ">= 0.8 x",
            proxied,
            proxied >= 0.8,
        ),
        (f"4. peak RSS of check, {memory_tags} tags (MiB)", "<= 100", check_rss, check_rss <= 100),
        (f"4. peak RSS of run on DynamoDB, {memory_tags} tags (MiB)", "<= 120", run_rss, run_rss <= 120),
        ("5. import handler over bare python (s)", "<= 0.25", added, added <= 0.25),
        ("HEAD per tag (check)", "== 1", heads, abs(heads - 1) < 1e-9),
        ("GETs for tags that match (check)", "0 (GET only when needed)", gets, gets == 0),
        ("token requests per repository", "<= 1", token_per_repo, token_per_repo <= 1),
        (
            "every verdict right",
            "all",
            1.0 if _all_right(results) else 0.0,
            _all_right(results),
        ),
    ]
    return [{"target": name, "goal": goal, "value": round(value, 3), "met": met} for name, goal, value, met in rows]


def _all_right(results: Json) -> bool:
    found: list[bool] = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "verdicts_right" and isinstance(value, bool):
                    found.append(value)
                else:
                    walk(value)

    walk(results)
    return bool(found) and all(found)


# --- main ------------------------------------------------------------------------------------------------


def parse_options(argv: Sequence[str] | None) -> Options:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run", description=__doc__.split("\n\n")[0] if __doc__ else None
    )
    parser.add_argument("--repos", type=int, default=50, help="repositories to seed (default 50)")
    parser.add_argument("--tags", type=int, default=40, help="tags per repository (default 40)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per measurement (default 3)")
    parser.add_argument(
        "--comparison-rounds",
        type=int,
        default=5,
        help="interleaved rounds of ceiling, asyncio loop, skopeo and check, whose per-round ratios give targets "
        "1 and 2 (default 5: on a shared 2-core machine single rounds range 0.6-0.9; 5 keep one disturbed "
        "round from deciding the median)",
    )
    parser.add_argument("--latency-ms", type=float, default=50.0, help="proxy delay per request (default 50)")
    parser.add_argument("--naive-sample", type=int, default=40, help="tags the skopeo baseline checks (default 40)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run in well under a minute")
    parser.add_argument("--out", type=Path, help="results JSON (default bench/results.json; --quick: a temp file)")
    parser.add_argument("--markdown", help="Markdown report, '' for none (default docs/benchmarks.md; --quick: none)")
    parser.add_argument(
        "--experiments",
        action="store_true",
        help="also time the client loop with other transports/connection counts (and uvloop, when importable)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory (outputs, logs)")
    parser.add_argument(
        "--dev-env",
        action="store_true",
        help="measure the development environment's digest-audit instead of a runtime-only install",
    )
    parser.add_argument(
        "--memory-tags", type=int, default=10_000, help="tags of the memory and phases run (default 10000; 0: skip)"
    )
    args = parser.parse_args(argv)
    repos, tags, rounds, sample = args.repos, args.tags, args.rounds, args.naive_sample
    comparison_rounds = args.comparison_rounds
    if args.quick:
        repos, tags, rounds, sample, comparison_rounds = min(repos, 4), min(tags, 8), 1, min(sample, 4), 1
    total = repos * tags
    return Options(
        repositories=repos,
        tags=tags,
        rounds=max(1, rounds),
        comparison_rounds=max(1, comparison_rounds),
        latency_ms=args.latency_ms,
        naive_sample=max(1, min(sample, total)),
        concurrency_levels=(8, 16, 32, 64),
        latency_levels=(16, 64),
        token_repositories=min(repos, 10),
        tamper=max(1, min(6, total // 100)),
        delete=max(1, min(2, total // 500)),
        # A smoke run must not overwrite the committed results with tiny-size numbers.
        out=args.out or (Path(tempfile.gettempdir()) / "digest-audit-bench-quick.json" if args.quick else RESULTS),
        markdown=Path(args.markdown) if args.markdown else (None if args.quick or args.markdown == "" else REPORT),
        keep=args.keep,
        experiments=args.experiments,
        memory_tags=min(args.memory_tags, 16) if args.quick else max(0, args.memory_tags),
        runtime_install=not (args.quick or args.dev_env),  # a smoke run skips it: installing takes seconds
        startup_rounds=2 if args.quick else max(5, rounds),
        command="uv run python -m bench.run " + shlex.join(argv if argv is not None else sys.argv[1:]),
    )


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_options(argv)
    started = time.perf_counter()
    scratch = Path(tempfile.mkdtemp(prefix="digest-audit-bench-"))
    results: Json = {
        "meta": {
            "date": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
            "load_average_at_start": [round(value, 2) for value in os.getloadavg()],
            "command": options.command.strip(),
            "machine": machine_facts(PROJECT),
            "options": {
                "repositories": options.repositories,
                "tags_per_repository": options.tags,
                "rounds": options.rounds,
                "comparison_rounds": options.comparison_rounds,
                "latency_ms": options.latency_ms,
                "naive_sample": options.naive_sample,
                "concurrency_levels": list(options.concurrency_levels),
            },
        }
    }
    with ExitStack() as stack:
        log(f"seeding {options.repositories} x {options.tags} tags")
        registry = stack.enter_context(local_registry(scratch / "registry"))
        workload = seed_registry(
            registry, options.repositories, options.tags, tamper=options.tamper, delete=options.delete
        )
        ceiling_binary = build_compiled(scratch)
        bench = Bench(
            options,
            scratch,
            process_environment(scratch),
            workload,
            registry,
            AccessLog(registry.log_path),
            ceiling_binary,
        )
        if options.runtime_install:
            log("installing digest-audit with its runtime dependencies only (uv sync --no-dev --no-editable)")
            bench.auditor = install_runtime(scratch / "runtime", PROJECT) or AUDITOR
        results["auditor"] = (
            "development environment" if bench.auditor == AUDITOR else "runtime-only install (uv sync --no-dev)"
        )
        host = registry.host
        refs = write_references(scratch / "refs.txt", workload, host)
        trust_file = write_trust_file(scratch / "trust.json", trusted_records(workload, host))
        latency = stack.enter_context(LatencyProxy("127.0.0.1", registry.process.port, latency=options.latency))
        refs_proxy = write_references(scratch / "refs-proxy.txt", workload, latency.host)
        trust_proxy = write_trust_file(scratch / "trust-proxy.json", trusted_records(workload, latency.host))
        moto: Moto = stack.enter_context(moto_server())
        moto_port = int(moto.endpoint_url.rpartition(":")[2])
        aws_proxy = stack.enter_context(LatencyProxy("127.0.0.1", moto_port))
        dynamo_started = time.perf_counter()
        seed_dynamodb(moto.dynamodb(), TRUST_TABLE, trusted_records(workload, host))
        results["workload"] = {
            "repositories": options.repositories,
            "tags_per_repository": options.tags,
            "tags": workload.size,
            "kinds": "docker v2, OCI manifest, OCI index, Docker list (a quarter each)",
            "expected": workload.expected_counts(),
            "seed_registry_s": round(workload.seed_seconds, 2),
            "seed_dynamodb_s": round(time.perf_counter() - dynamo_started, 2),
        }

        direct: RequestSource = bench.access
        through_proxy = ProxySource(latency.log)

        log("start-up and import time")
        results["startup"] = measure_startup(bench)

        log("loopback: ceiling, naive skopeo baseline and digest-audit check, interleaved")
        loopback: Json = measure_throughput(
            bench,
            host,
            refs,
            direct,
            what="loopback",
            levels=options.concurrency_levels,
            naive_sample=options.naive_sample,
        )
        results["loopback"] = loopback
        log("loopback: ceiling and check with the registry and the client on separate cores")
        loopback["apart"] = measure_apart(bench, host, refs, int(_number(loopback, "ceiling", "best_concurrency")))
        log("loopback: client loop in-process (stats, profile)")
        loopback["client_loop"] = measure_in_process(bench, refs, "loopback", profile=True)
        if options.experiments:
            log("loopback: client experiments (transport, connections, event loop)")
            loopback["experiments"] = measure_experiments(
                bench, host, refs, latency=False, ceiling_level=int(_number(loopback, "ceiling", "best_concurrency"))
            )
        log("loopback: digest-audit run (file stores)")
        state_file = scratch / "state.json"
        loopback["run_file"] = measure_run(
            bench,
            RunVariant(
                "file",
                ["--trust-file", str(trust_file), "--state-file", str(state_file)],
                {},
                host,
                lambda: FileStateStore(state_file).load_all(),
            ),
        )
        log("loopback: digest-audit run (DynamoDB + SNS on moto)")
        loopback["run_dynamodb"] = measure_run(
            bench,
            RunVariant(
                "dynamodb",
                [],
                moto.client_environment(aws_proxy.url),
                host,
                lambda: DynamoStateStore(STATE_TABLE, moto.dynamodb()).load_all(),
                aws_proxy.log,
            ),
        )

        log(f"latency {options.latency_ms:g} ms: ceiling, naive baseline and check, interleaved")
        proxied: Json = {"latency_ms": options.latency_ms} | measure_throughput(
            bench,
            latency.host,
            refs_proxy,
            through_proxy,
            what="latency",
            levels=options.latency_levels,
            naive_sample=max(1, options.naive_sample // 2),
            fixed_level=max(options.latency_levels),  # the target compares with the 64-connection loop
        )
        results["latency"] = proxied
        proxied["concurrency_bound_tags_per_s"] = round(16 / options.latency, 1) if options.latency else None
        if options.experiments:
            log(f"latency {options.latency_ms:g} ms: client experiments")
            proxied["experiments"] = measure_experiments(
                bench, latency.host, refs_proxy, latency=True, ceiling_level=max(options.latency_levels)
            )
        log(f"latency {options.latency_ms:g} ms: digest-audit run (file stores)")
        state_proxy = scratch / "state-proxy.json"
        proxied["run_file"] = measure_run(
            bench,
            RunVariant(
                "file-latency",
                ["--trust-file", str(trust_proxy), "--state-file", str(state_proxy)],
                {},
                latency.host,
                lambda: FileStateStore(state_proxy).load_all(),
            ),
        )

        log("token-auth registry")
        results["token"] = measure_token_registry(bench, stack)
        log(f"HTTP/2 against HTTP/1.1 over TLS, {options.latency_ms:g} ms away")
        results["http2"] = measure_http2(options)
        results["transport_cost"] = measure_transport_cost(bench.env)
        if options.memory_tags:
            log(f"{options.memory_tags} tags: peak RSS of check and of run on DynamoDB, run phases")
            results["memory"] = measure_memory(bench, stack, moto, aws_proxy)
        results["errors"] = bench.errors

    meta = results["meta"]
    assert isinstance(meta, dict)
    meta["load_average_at_end"] = [round(value, 2) for value in os.getloadavg()]
    results["targets"] = evaluate_targets(results, options)
    results["bench_seconds"] = round(time.perf_counter() - started, 1)
    options.out.parent.mkdir(parents=True, exist_ok=True)
    options.out.write_text(json.dumps(results, indent=2) + "\n")
    if options.markdown is not None:
        write_markdown(options.markdown, results)
    if not options.keep:
        subprocess.run(["rm", "-rf", str(scratch)], check=False)
    else:
        log(f"scratch kept in {scratch}")
    for row in results["targets"]:  # type: ignore[attr-defined]
        log(f"{'MET ' if row['met'] else 'MISS'} {row['target']}: {row['value']} ({row['goal']})")
    log(f"wrote {options.out}" + (f" and {options.markdown}" if options.markdown else ""))
    return 0


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
