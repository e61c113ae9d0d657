"""Turns bench results into docs/benchmarks.md: generated tables above a marker, hand-written notes below it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

NOTES_MARKER = "<!-- notes: everything below this line is kept when `make bench` rewrites this file -->"
type Json = Mapping[str, object]


def _node(data: object, *path: str) -> object:
    for key in path:
        if not isinstance(data, Mapping):
            return None
        data = data.get(key)
    return data


def _map(data: object, *path: str) -> Json:
    node = _node(data, *path)
    return node if isinstance(node, Mapping) else {}


def _num(data: object, *path: str) -> float | None:
    node = _node(data, *path)
    return float(node) if isinstance(node, int | float) and not isinstance(node, bool) else None


def _fmt(value: float | None, digits: int = 0) -> str:
    if value is None or value != value:
        return "-"
    return f"{value:,.{digits}f}"


def _spread(data: object, *path: str, digits: int = 0) -> str:
    spread = _map(data, *path)
    if not spread:
        return "-"
    low, median, high = (_num(spread, key) for key in ("min", "median", "max"))
    return f"**{_fmt(median, digits)}** ({_fmt(low, digits)}-{_fmt(high, digits)})"


def _ratio(value: float | None, base: float | None, digits: int = 2) -> str:
    if value is None or not base:
        return "-"
    return f"{value / base:,.{digits}f}x"


def _per_tag(data: object, method: str) -> str:
    return _fmt(_num(data, "requests_per_tag", method), 3) if _map(data, "requests_per_tag") else "-"


def _right(data: object) -> str:
    node = _node(data, "verdicts_right")
    return "yes" if node is True else "**NO**" if node is False else "-"


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def _throughput_rows(section: Json, ceiling_rate: float | None, naive_rate: float | None) -> list[list[str]]:
    ceiling = _map(section, "ceiling")
    scan = ", ".join(f"{level}: {_fmt(_num(rate))}" for level, rate in _map(ceiling, "scan_tags_per_s").items())
    rows = [
        [
            f"ceiling: compiled C HEAD loop (bench/ceiling.c, epoll), {_fmt(_num(ceiling, 'best_concurrency'))} "
            f"connections (scan by connections: {scan})",
            _spread(ceiling, "tags_per_s"),
            "1.00x",
            _ratio(ceiling_rate, naive_rate, 0),
            "1",
            "0",
            "-",
            "-",
        ]
    ]
    reference = _map(section, "asyncio_loop")
    if reference:
        rows.append(
            [
                "reference: raw asyncio HEAD loop (bench/ceiling.py), "
                f"{_fmt(_num(reference, 'concurrency'))} connections",
                _spread(reference, "tags_per_s"),
                f"{_fmt(_num(reference, 'ratio_to_ceiling', 'median'), 2)}x",
                _ratio(_num(reference, "tags_per_s", "median"), naive_rate, 0),
                "1",
                "0",
                "-",
                "-",
            ]
        )
    naive = _map(section, "naive")
    rows.append(
        [
            f"naive: `skopeo inspect --raw` + sha256, sequential ({_fmt(_num(naive, 'sample'))}-tag sample)",
            _spread(naive, "tags_per_s", digits=1),
            _ratio(_num(naive, "tags_per_s", "median"), ceiling_rate, 3),
            "1x",
            _per_tag(naive, "HEAD"),
            _per_tag(naive, "GET"),
            "-",
            _right(naive),
        ]
    )
    for key, label in (
        ("check", "**digest-audit `check --json -f`** (whole process)"),
        ("client_loop", "client loop in-process (no start-up; `RegistryClient.stats`; an extra round profiled)"),
        ("run_file", "`digest-audit run`, file stores (steady state)"),
        ("run_dynamodb", "`digest-audit run`, DynamoDB + SNS on moto (steady state)"),
    ):
        data = _map(section, key)
        if not data:
            continue
        rate = _num(data, "tags_per_s", "median")
        to_ceiling = _ratio(rate, ceiling_rate)
        over_naive = _ratio(rate, naive_rate, 0)
        if key == "check":  # measured interleaved with the ceiling and the baseline: ratio per round
            to_ceiling = f"**{_fmt(_num(data, 'ratio_to_ceiling', 'median'), 2)}x**"
            over_naive = f"**{_fmt(_num(data, 'speedup_over_naive', 'median'), 0)}x**"
        if key == "client_loop":
            heads = _fmt(_num(data, "stats_per_tag", "heads"), 3)
            gets = _fmt(_num(data, "stats_per_tag", "gets") or 0.0, 3)
        else:
            heads, gets = _per_tag(data, "HEAD"), _per_tag(data, "GET")
        rss = _num(data, "max_rss_mib", "max")
        rows.append(
            [
                label,
                _spread(data, "tags_per_s"),
                to_ceiling,
                over_naive,
                heads,
                gets,
                _fmt(rss, 0) if rss is not None else "-",
                _right(data) if key != "client_loop" else "-",
            ]
        )
    return rows


def _experiment_lines(section: Json) -> list[str]:
    experiments = _map(section, "experiments")
    if not experiments:
        return []
    rows = [
        [str(name), _spread(data, "tags_per_s"), _fmt(_num(data, "ratio_to_ceiling", "median"), 2) + "x"]
        for name, data in experiments.items()
        if isinstance(data, Mapping) and not name.startswith("ceiling")
    ]
    ceiling = _spread(experiments, "ceiling_tags_per_s")
    return [
        "",
        f"Experiments: the client loop in-process (`bench/inproc.py`, no start-up), interleaved with the ceiling "
        f"({_fmt(_num(experiments, 'ceiling_concurrency'))} connections: {ceiling} tags/s):",
        "",
        *_table(["variant", "tags/s median (min-max)", "x ceiling (per round)"], rows),
    ]


def _cpu_lines(section: Json) -> list[str]:
    """Where the CPU went while the ceiling and `check` ran (medians of the interleaved rounds)."""
    cpu = _map(section, "cpu")
    if not cpu:
        return []
    rows = [
        [
            name,
            _fmt(_num(cpu, name, "client_cpu_s"), 2),
            f"{_fmt(_num(cpu, name, 'registry_cpu_s'), 2)} ({_fmt(_num(cpu, name, 'registry_cpu_ms_per_tag'), 2)})",
            _fmt(_num(cpu, name, "machine_busy_cpu_s"), 2),
            _fmt(_num(cpu, name, "machine_idle_cpu_s"), 2),
        ]
        for name in ("ceiling", "check")
    ]
    return [
        "",
        f"CPU-seconds while each client ran, whole processes, medians ({_fmt(_num(cpu, 'cores'))} cores; the registry "
        "shares them with the client, so every CPU-second of the client is one the registry cannot use):",
        "",
        *_table(["client", "client CPU s", "registry CPU s (ms per tag)", "machine busy s", "machine idle s"], rows),
    ]


def _apart_lines(apart: Json) -> list[str]:
    if not apart or "skipped" in apart:
        return []
    return [
        "",
        f"Not a target figure: with the registry pinned to core {apart.get('registry_cores')} and each client to core "
        f"{apart.get('client_cores')}, so that the client takes no CPU from the registry (as with a registry on its "
        f"own machine), the ceiling reaches {_spread(apart, 'ceiling_tags_per_s')} tags/s and `check` "
        f"{_spread(apart, 'check_tags_per_s')}: **{_fmt(_num(apart, 'ratio_to_ceiling', 'median'), 2)}x** "
        f"({_fmt(_num(apart, 'ratio_to_ceiling', 'min'), 2)}-{_fmt(_num(apart, 'ratio_to_ceiling', 'max'), 2)}).",
    ]


_HEADERS = (
    "",
    "tags/s median (min-max)",
    "x ceiling",
    "x naive",
    "HEAD/tag",
    "GET/tag",
    "peak RSS MiB",
    "verdicts right",
)


def render(results: Json) -> str:
    meta, machine, workload = _map(results, "meta"), _map(results, "meta", "machine"), _map(results, "workload")
    lines = [
        "# Benchmarks",
        "",
        "Generated by `make bench` (bench/run.py); raw numbers in bench/results.json. Medians of the rounds,",
        "with min-max; ceiling, asyncio loop, skopeo and `check` run interleaved for "
        f"{_map(results, 'meta', 'options').get('comparison_rounds', '?')} rounds, and each target ratio is the "
        "median of the per-round ratios.",
        "Throughput of `check` is tags / wall time of one whole `digest-audit check --json -f FILE`",
        "process with default options (start-up and output included). Registry, proxy, moto and client share",
        "the machine.",
        "",
        f"- date: {meta.get('date')}; command: `{meta.get('command')}`; "
        f"bench took {_fmt(_num(results, 'bench_seconds'))} s",
        f"- machine: {machine.get('cpu')}, {machine.get('cores')} cores, {machine.get('memory_gib')} GiB, "
        f"Linux {machine.get('kernel')}; load average (1, 5, 15 min) {meta.get('load_average_at_start')} at "
        f"start, {meta.get('load_average_at_end')} at end (other work on the machine shows up as noise)",
        f"- versions: Python {machine.get('python')}, httpx {machine.get('httpx')}, "
        f"pydantic {machine.get('pydantic')}, "
        f"boto3 {machine.get('boto3')}, docker-registry {machine.get('docker_registry')}, skopeo "
        f"{machine.get('skopeo')}; revision {machine.get('git_revision')}",
        f"- workload: {_fmt(_num(workload, 'repositories'))} repositories x "
        f"{_fmt(_num(workload, 'tags_per_repository'))} "
        f"tags = {_fmt(_num(workload, 'tags'))} tags ({workload.get('kinds')}); expected verdicts "
        f"{dict(_map(workload, 'expected'))}; seeding took {_fmt(_num(workload, 'seed_registry_s'), 1)} s (registry) + "
        f"{_fmt(_num(workload, 'seed_dynamodb_s'), 1)} s (DynamoDB), not measured",
        f"- digest-audit measured: {results.get('auditor', 'development environment')}",
        "",
        "## Targets",
        "",
    ]
    target_rows = []
    targets = results.get("targets")
    for row in targets if isinstance(targets, list) else []:
        if isinstance(row, Mapping):
            target_rows.append(
                [
                    str(row.get("target")),
                    str(row.get("goal")),
                    str(row.get("value")),
                    "met" if row.get("met") else "**missed**",
                ]
            )
    lines += _table(["target", "goal", "measured", ""], target_rows)

    loopback = _map(results, "loopback")
    ceiling_rate = _num(loopback, "ceiling", "tags_per_s", "median")
    naive_rate = _num(loopback, "naive", "tags_per_s", "median")
    lines += ["", "## Loopback (registry on 127.0.0.1, plain http)", ""]
    lines += _table(_HEADERS, _throughput_rows(loopback, ceiling_rate, naive_rate))
    lines += _cpu_lines(loopback)
    lines += _apart_lines(_map(loopback, "apart"))
    lines += _experiment_lines(loopback)

    latency = _map(results, "latency")
    lat_ceiling = _num(latency, "ceiling", "tags_per_s", "median")
    lat_naive = _num(latency, "naive", "tags_per_s", "median")
    lines += [
        "",
        f"## Through a {_fmt(_num(latency, 'latency_ms'))} ms-per-request proxy",
        "",
        f"The ceiling here is the compiled loop with {_fmt(_num(latency, 'ceiling', 'best_concurrency'))} "
        "connections (target 2); `check` runs with default settings (requests in flight adapt, at most 64).",
        "",
    ]
    lines += _table(_HEADERS, _throughput_rows(latency, lat_ceiling, lat_naive))
    lines += _cpu_lines(latency)
    lines += _experiment_lines(latency)

    token = _map(results, "token")
    lines += [
        "",
        "## Token auth, DynamoDB, start-up",
        "",
        f"- token-auth registry ({_fmt(_num(token, 'repositories'))} repositories, {_fmt(_num(token, 'tags'))} tags): "
        f"{_fmt(_num(token, 'token_requests_per_repository'), 2)} token requests per repository per run; registry saw "
        f"{dict(_map(token, 'requests'))} per run; check {_spread(token, 'tags_per_s')} tags/s; "
        f"verdicts right: {_right(token)}",
    ]
    dynamo = _map(loopback, "run_dynamodb")
    lines += [
        f"- AWS calls of `run` (DynamoDB + SNS, counted by a proxy in front of moto): first run "
        f"{dict(_map(dynamo, 'aws_calls_first_run'))}; steady run {dict(_map(dynamo, 'aws_calls_steady_run'))}",
        f"- `run` first run (no state yet): {_fmt(_num(dynamo, 'first_run_s'), 2)} s (DynamoDB), "
        f"{_fmt(_num(loopback, 'run_file', 'first_run_s'), 2)} s (files)",
    ]
    startup = _map(results, "startup")
    lines += [
        f"- `python -c pass`: {_spread(startup, 'python_bare_s', digits=3)} s; `python -c 'import handler'`: "
        f"{_spread(startup, 'import_handler_s', digits=3)} s, i.e. "
        f"**{_fmt(_num(startup, 'import_handler_added_s'), 3)} s** "
        f"added; `digest-audit check` of one tag: {_spread(startup, 'check_one_tag_s', digits=3)} s",
        f"- `-X importtime` cumulative ms: {dict(_map(startup, 'importtime_cumulative_ms'))}",
        f"- largest self import times ms: {dict(_map(startup, 'importtime_top_self_ms'))}",
    ]
    transport = _map(results, "transport_cost")
    if transport:
        lines += [
            f"- the registry client with its wire transport (imported at the first request, never by "
            f"`import handler`): +{_fmt(_num(transport, 'import_s_added'), 3)} s import over httpx alone; installed "
            f"{_fmt(_num(transport, 'installed_kib_total'))} KiB ({dict(_map(transport, 'installed_kib'))})",
        ]
    memory = _map(results, "memory")
    if memory:
        run = _map(memory, "run_dynamodb")
        phases = _map(memory, "run_phases")
        lines += [
            "",
            f"## {_fmt(_num(memory, 'tags'))} tags: memory and `run` on DynamoDB by phase (one round)",
            "",
            f"- `check --json -f`: {_fmt(_num(memory, 'check', 'seconds'), 2)} s "
            f"({_fmt(_num(memory, 'check', 'tags_per_s'))} tags/s), peak RSS "
            f"**{_fmt(_num(memory, 'check', 'max_rss_mib'), 1)} MiB**; verdicts right: {_right(_map(memory, 'check'))}",
            f"- `run` on DynamoDB (moto) first run: {_fmt(_num(run, 'first', 'seconds'), 2)} s, peak RSS "
            f"**{_fmt(_num(run, 'first', 'max_rss_mib'), 1)} MiB**, calls {dict(_map(run, 'first', 'aws_calls'))}",
            f"- `run` on DynamoDB steady run: {_fmt(_num(run, 'steady', 'seconds'), 2)} s, peak RSS "
            f"**{_fmt(_num(run, 'steady', 'max_rss_mib'), 1)} MiB**, calls {dict(_map(run, 'steady', 'aws_calls'))}; "
            f"verdicts right: {_right(run)}",
            f"- phases of one `run` (dry run, in one process, {_fmt(_num(phases, 'segments'))} parallel Scan "
            f"segments): {_fmt(_num(phases, 'scan_pages'))} Scan pages, the first at "
            f"{_fmt(_num(phases, 'first_page_s'), 2)} s, the last at {_fmt(_num(phases, 'scan_done_s'), 2)} s; "
            f"checks from {_fmt(_num(phases, 'first_check_s'), 2)} s to {_fmt(_num(phases, 'checks_done_s'), 2)} s "
            f"(overlapping the Scan for {_fmt(_num(phases, 'overlap_s'), 2)} s); total "
            f"{_fmt(_num(phases, 'total_s'), 2)} s; calls {dict(_map(phases, 'aws_calls'))}",
        ]
    http2 = _map(results, "http2")
    if http2:
        rows = []
        for name, data in _map(http2, "by_variant").items():
            runs = _node(data, "runs")
            cpu = (
                [float(str(run.get("cpu_s"))) for run in runs if isinstance(run, Mapping)]
                if isinstance(runs, list)
                else []
            )
            versions = (
                [run.get("http_versions") for run in runs if isinstance(run, Mapping)] if isinstance(runs, list) else []
            )
            rows.append(
                [
                    str(name),
                    _fmt(_num(data, "tags_per_s")),
                    _fmt(min(cpu), 2) if cpu else "-",
                    str(versions[-1] if versions and versions[-1] else "HTTP/1.1"),
                ]
            )
        lines += [
            "",
            f"## HTTP/2 or HTTP/1.1, TLS, {_fmt(_num(http2, 'latency_ms'))} ms away ({_fmt(_num(http2, 'tags'))} tags)",
            "",
            f"docker-registry over TLS negotiates `{http2.get('alpn_direct')}` by ALPN (through the proxy: "
            f"`{http2.get('alpn_through_proxy')}`). Best of the rounds, `RegistryClient.observe` in one process:",
            "",
            *_table(["transport", "tags/s", "client CPU s", "responses by version"], rows),
        ]
    profile = _node(loopback, "client_loop", "profile_top_tottime")
    if isinstance(profile, list) and profile:
        lines += ["", "cProfile of one warm client-loop round (loopback; tottime, cumtime, function):", "", "```"]
        lines += [str(row) for row in profile]
        lines += ["```"]
    errors = results.get("errors")
    if isinstance(errors, list) and errors:
        lines += ["", "Errors during the run:", ""] + [f"- {error}" for error in errors]
    return "\n".join(lines) + "\n"


def write_markdown(path: Path, results: Json) -> None:
    """Rewrite the generated part of `path`; keep everything from the notes marker on."""
    notes = f"{NOTES_MARKER}\n"
    if path.exists():
        text = path.read_text(encoding="utf-8")
        if NOTES_MARKER in text:
            notes = text[text.index(NOTES_MARKER) :]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render(results) + "\n" + notes, encoding="utf-8")
