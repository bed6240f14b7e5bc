"""The seven benchmarks of `make bench`, each adding its rows to one `Table`.

1. Overhead: single deletes through `Worker.handle` (OpenTelemetry SDK as in production) against the same
   DELETEs from a bare `requests.Session` with a fixed token; the simulator runs in a child process.
2. Tokens: many threads, one worker, token requests counted at the simulator.
3. Calls per command, by command kind.
4. Rate limit: delete-by-iModel fanned out on an in-memory queue against a rate-limited Export API.
5. Cold start: ``python -X importtime -c "import function_app"`` against its dependencies alone.
6. Memory: peak RSS of this process right after benchmark 1.
7. The command ledger's cost, on Azurite's tables and queue: see `bench.ledger_cost`.
8. Scale: N worker instances in N processes share one platform limit (`bench.scale`).

Benchmarks 2 to 4 run the simulator in this process (they count, they do not time CPU); it is imported only
after the memory figure is taken, and so are the Storage SDKs benchmark 7 uses. Azurite starts while 2 and 3 run.
"""

from __future__ import annotations

import cProfile
import json
import os
import pstats
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import requests
from opentelemetry.metrics import NoOpMeterProvider
from opentelemetry.trace import NoOpTracerProvider

from bench.harness import REPO, MemoryQueue, Otel, ca_bundle, child_simulator, drain, make_worker, simulator_settings
from bench.progress import Progress
from bench.scale import scale
from bench.table import Table
from bench.workload import IMODEL, KINDS, NEW_IMODEL, bare_path, seed_connections, service_token
from shared.outcomes import Outcome
from shared.telemetry import Telemetry
from shared.worker import Worker

SECTIONS = ("overhead", "tokens", "calls", "ledger", "rate_limit", "cold_start", "memory", "scale")
PROJECT_PACKAGES = ("function_app", "functions", "shared")
BASELINE_IMPORT = "import azure.functions, requests, msal, opentelemetry.metrics"


@dataclass(frozen=True)
class Sizes:
    deletes: int  # per variant in benchmark 1
    blocks: int  # interleaved blocks per variant
    warmup: int
    token_threads: int
    token_commands: int
    per_kind: int  # commands per kind in benchmark 3
    rate_connections: int
    rate: float
    rate_threads: int
    import_runs: int


FULL = Sizes(2000, 20, 100, 16, 2000, 20, 600, 50.0, 4, 7)
SMOKE = Sizes(200, 4, 20, 16, 200, 5, 60, 50.0, 4, 2)

OVERHEAD_TARGET = 1.15
TOKENS_TARGET = 1
RATE_WALL_TARGET = 1.15
RATE_429_TARGET = 0.02
OWN_IMPORT_TARGET_MS = 30.0
RSS_TARGET_MB = 120.0


def run_all(
    smoke: bool,
    *,
    profile: bool = False,
    only: frozenset[str] | None = None,
    progress: Callable[[str], None] | None = None,
) -> Table:
    """Run every benchmark (or those in ``only``, by section name) at smoke or full sizes.

    A cProfile breakdown of the worker path is added to the notes when the overhead target is missed, or always
    with ``profile``. ``progress`` is told each benchmark's name as it starts (default: a line on standard error).
    """
    sizes = SMOKE if smoke else FULL
    table = Table(smoke=smoke)
    started = time.monotonic()
    otel = Otel.production_like()

    chosen = [section for section in SECTIONS if only is None or section in only]
    report = progress or Progress(chosen)

    def wanted(section: str) -> bool:
        if section not in chosen:
            return False
        report(section)
        return True

    try:
        if wanted("overhead"):
            overhead(table, sizes, otel, profile=profile)
        if wanted("memory"):
            memory(table)
        from bench.ledger_cost import azurite_starting, ledger_cost  # the Storage SDKs: after the memory figure too
        from sandbox.itwin_platform import Simulator  # after the memory figure: trustme, cryptography, threads

        with azurite_starting() as azurite:  # while benchmarks 2 and 3, which only count, run
            if wanted("tokens"):
                tokens(table, sizes, otel, Simulator)
            if wanted("calls"):
                calls_per_command(table, sizes, otel, Simulator)
            if wanted("ledger"):
                ledger_cost(table, smoke, otel, Simulator, azurite())
        if wanted("rate_limit"):
            rate_limit(table, sizes, otel, Simulator)
        if wanted("cold_start"):
            cold_start(table, sizes)
        if wanted("scale"):
            table.data["scale"] = scale(table, smoke)
        otel.flush()
        table.counts["otel.spans_exported"] = otel.spans.spans
        table.counts["otel.metric_exports"] = otel.metrics.exports
    finally:
        otel.shutdown()
    table.rows.sort(key=lambda row: SECTIONS.index(row.key.split(".", 1)[0]))
    table.seconds = time.monotonic() - started
    if isinstance(report, Progress):
        report.done()
    return table


# -- 1. overhead ------------------------------------------------------------------------------------------------


def _worker_path(worker: Worker, ids: list[str]) -> Callable[[], int]:
    """Deletes through `Worker.handle`, as the queue trigger calls it with the message body (bytes)."""
    messages = [json.dumps({"action": "delete", "resource": "connection", "id": i}).encode() for i in ids]

    def run() -> int:
        succeeded = 0
        for message in messages:
            succeeded += worker.handle(message) is Outcome.SUCCEEDED
        return succeeded

    return run


def overhead(table: Table, sizes: Sizes, otel: Otel, *, profile: bool = False) -> None:
    """Benchmark 1: interleaved blocks (ABC, CBA, ...) of the worker, the bare session and the worker without SDK."""
    block = sizes.deletes // sizes.blocks
    per_variant = sizes.warmup + block * sizes.blocks
    with child_simulator() as sim, ca_bundle(sim.ca_path), requests.Session() as session:
        token = service_token(session, sim)
        names = ("worker", "bare", "no-sdk")
        profiled = min(500, sizes.deletes // 4)  # seeded in case the target is missed and the path is profiled
        ids = seed_connections(sim.url, token, per_variant * len(names) + profiled)
        queue = MemoryQueue()
        workers = {
            "worker": make_worker(sim.settings(), otel.telemetry, queue),
            "no-sdk": make_worker(sim.settings(), Telemetry(NoOpMeterProvider(), NoOpTracerProvider()), queue),
        }

        def path(name: str, chunk: list[str]) -> Callable[[], int]:
            if name == "bare":
                return bare_path(session, sim.url, token, chunk)
            return _worker_path(workers[name], chunk)

        chunks = {name: ids[i * per_variant : (i + 1) * per_variant] for i, name in enumerate(names)}
        done = dict.fromkeys(names, 0)
        for name in names:  # warm-up: first token, TLS connections, code paths
            done[name] += path(name, chunks[name][: sizes.warmup])()
        seconds = dict.fromkeys(names, 0.0)
        cpu = dict.fromkeys(names, 0.0)  # this process's CPU time (all threads): robust to noisy neighbours
        blocks: dict[str, list[float]] = {name: [] for name in names}
        for index in range(sizes.blocks):
            order = names if index % 2 == 0 else names[::-1]
            for name in order:
                start = sizes.warmup + index * block
                run = path(name, chunks[name][start : start + block])
                began, began_cpu = time.perf_counter(), time.process_time()
                done[name] += run()
                elapsed = time.perf_counter() - began
                cpu[name] += time.process_time() - began_cpu
                seconds[name] += elapsed
                blocks[name].append(elapsed)
        ratio = seconds["worker"] / seconds["bare"]
        explain = profile or ratio > OVERHEAD_TARGET
        profile_note = _profile(workers["worker"], ids[len(names) * per_variant :]) if explain else None
    otel.flush()
    no_sdk = seconds["no-sdk"] / seconds["bare"]
    per_block = sorted(w / b for w, b in zip(blocks["worker"], blocks["bare"], strict=True))
    median = statistics.median(per_block)
    measured = block * sizes.blocks
    per_call = seconds["bare"] / measured * 1e6
    extra = (seconds["worker"] - seconds["bare"]) / measured * 1e6
    cpu_us = {name: cpu[name] / measured * 1e6 for name in names}
    table.add(
        "overhead.ratio",
        f"Overhead: {measured:,} deletes via Worker.handle (OTel SDK) / bare requests.Session, wall time",
        ratio,
        f"{ratio:.3f} ({seconds['worker']:.2f} s / {seconds['bare']:.2f} s; "
        f"{sizes.blocks} interleaved blocks of {block}, median block {median:.2f})",
        f"≤ {OVERHEAD_TARGET}",
        ratio <= OVERHEAD_TARGET,
    )
    table.add(
        "overhead.per_call",
        "Overhead: per delete, the bare call and what the worker adds (wall; CPU of this process)",
        extra,
        f"wall: bare {per_call:.0f} µs, worker +{extra:.0f} µs; CPU: bare {cpu_us['bare']:.0f} µs, "
        f"worker +{cpu_us['worker'] - cpu_us['bare']:.0f} µs, of which OTel SDK "
        f"{cpu_us['worker'] - cpu_us['no-sdk']:.0f} µs",
    )
    table.add(
        "overhead.no_sdk",
        "Overhead: the same worker with no-op OTel providers / bare, same run",
        no_sdk,
        f"{no_sdk:.3f} ({seconds['no-sdk']:.2f} s)",
    )
    table.counts.update(
        {
            "overhead.worker_deletes": measured,
            "overhead.bare_deletes": measured,
            "overhead.no_sdk_deletes": measured,
            "overhead.succeeded": sum(done.values()),
            "overhead.expected": per_variant * len(names),
        }
    )
    if profile_note:
        table.notes.append(profile_note)


def _profile(worker: Worker, ids: list[str]) -> str:
    """cProfile one block of the worker path and split `Worker.handle`'s time by where it went."""
    run = _worker_path(worker, ids)
    profiler = cProfile.Profile()
    profiler.enable()
    run()
    profiler.disable()
    entries = pstats.Stats(profiler).stats  # type: ignore[attr-defined]

    def cumulative(path_part: str, function: str) -> float:
        return sum(e[3] for (path, _, name), e in entries.items() if path_part in path and name == function)

    def io(function: str) -> float:
        builtin = f"<method '{function}' of '_ssl._SSLSocket' objects>"
        return sum(e[2] for (_, _, name), e in entries.items() if name == builtin)

    total = cumulative("shared/worker.py", "handle")
    http = cumulative("requests/sessions.py", "request")
    environment = cumulative("requests/sessions.py", "merge_environment_settings")
    sockets = io("read") + io("write")
    otel = 0.0  # OpenTelemetry called from the project's code, with everything it calls
    for (path, _, _), entry in entries.items():
        if "opentelemetry" in path:
            otel += sum(c[3] for (caller, _, _), c in entry[4].items() if "/shared/" in caller)
    rest = total - http - otel

    def share(seconds: float) -> str:
        return f"{seconds / total:.0%}"

    return (
        f"cProfile of {len(ids)} more worker deletes: requests {share(http)} of Worker.handle (of which TLS socket "
        f"reads/writes {share(sockets)}, per-request environment lookups (proxies, CA bundle) "
        f"{share(environment)}), OpenTelemetry {share(otel)}, the project's own code {share(rest)}."
    )


# -- 6. memory --------------------------------------------------------------------------------------------------
def memory(table: Table) -> None:
    """Benchmark 6: the peak RSS of this process so far (Linux reports ru_maxrss in KiB)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    megabytes = peak / 1024 if sys.platform != "darwin" else peak / (1024 * 1024)
    table.add(
        "memory.peak_rss",
        "Memory: peak RSS of the worker process after benchmark 1",
        megabytes,
        f"{megabytes:.1f} MB",
        f"≤ {RSS_TARGET_MB:.0f} MB",
        megabytes <= RSS_TARGET_MB,
    )


# -- 2. tokens --------------------------------------------------------------------------------------------------
def tokens(table: Table, sizes: Sizes, otel: Otel, simulator: type) -> None:
    """Benchmark 2: a fresh worker, many threads at once; token requests as the simulator counted them."""
    with simulator(rate_limits={}) as sim, ca_bundle(sim.ca_path):
        queue = MemoryQueue()
        for i in range(sizes.token_commands):
            connection = sim.add_connection(IMODEL, f"token-{i}")
            queue.send_message(json.dumps({"action": "delete", "resource": "connection", "id": connection["id"]}))
        worker = make_worker(simulator_settings(sim), otel.telemetry, queue)
        outcomes = drain(queue, worker, sizes.token_threads)
        made = sim.token_requests
        calls = len(sim.api_calls())
    table.add(
        "tokens.requests",
        f"Tokens: token requests for {sizes.token_commands:,} commands on {sizes.token_threads} threads",
        made,
        f"{made} ({outcomes.get('succeeded', 0):,} succeeded, {calls:,} API calls)",
        f"= {TOKENS_TARGET}",
        made == TOKENS_TARGET,
    )
    table.counts.update(
        {
            "tokens.commands": sizes.token_commands,
            "tokens.succeeded": outcomes.get("succeeded", 0),
            "tokens.token_requests": made,
            "tokens.api_calls": calls,
        }
    )


# -- 3. calls per command ---------------------------------------------------------------------------------------


def calls_per_command(table: Table, sizes: Sizes, otel: Otel, simulator: type) -> None:
    """Benchmark 3: API calls per command, by kind (no rate limits, so pacing does not slow the count)."""
    with simulator(rate_limits={}) as sim, ca_bundle(sim.ca_path):
        sim.add_imodel(NEW_IMODEL)
        sim.add_connection(NEW_IMODEL, "someone else's")
        settings = simulator_settings(sim, ITWIN_RATE_LIMITS="clashdetection=10000")
        worker = make_worker(settings, otel.telemetry, MemoryQueue())
        worker.api.client.tokens.token()
        for kind in KINDS:
            messages = [json.dumps(kind.prepare(sim, i)) for i in range(sizes.per_kind)]
            sim.clear_requests()
            outcomes = [worker.handle(message) for message in messages]
            calls = len(sim.api_calls())
            expected = sum(outcome is kind.outcome for outcome in outcomes)
            per = calls / sizes.per_kind
            passed = (per == kind.limit if kind.exact else per <= kind.limit) and expected == sizes.per_kind
            target = f"= {kind.limit:.1f}" if kind.exact else f"≤ {kind.limit:.0f}"
            table.add(
                f"calls.{kind.key}",
                f"Calls per command: {kind.label}",
                per,
                f"{per:.2f} ({calls} calls / {sizes.per_kind}; {expected} {kind.outcome.value})",
                target,
                passed,
            )
            table.counts[f"calls.{kind.key}.commands"] = sizes.per_kind
            table.counts[f"calls.{kind.key}.api_calls"] = calls
            table.counts[f"calls.{kind.key}.{kind.outcome.value}"] = expected


# -- 4. rate limit ----------------------------------------------------------------------------------------------
def rate_limit(table: Table, sizes: Sizes, otel: Otel, simulator: type) -> None:
    """Benchmark 4: delete-by-iModel fanned out through the queue against Export limited to ``rate`` calls/s."""
    n, rate = sizes.rate_connections, sizes.rate
    with simulator(rate_limits={"export": rate}) as sim, ca_bundle(sim.ca_path):
        for i in range(n):
            sim.add_connection(IMODEL, f"limited-{i}")
        queue, poison = MemoryQueue(), MemoryQueue()
        settings = simulator_settings(sim, ITWIN_RATE_LIMITS=f"export={rate:g}")
        worker = make_worker(settings, otel.telemetry, queue, poison)
        worker.api.client.tokens.token()  # a worker that has run before holds a token
        sim.clear_requests()
        queue.send_message(json.dumps({"action": "delete", "resource": "connection", "iModelId": IMODEL}))
        began = time.monotonic()
        outcomes = drain(queue, worker, sizes.rate_threads)
        wall = time.monotonic() - began
        calls = sim.api_calls("export")
        refused = sum(call.status == 429 for call in calls)
        remaining = sum(c["iModelId"] == IMODEL for c in sim.connections.values())
        pages = sum(call.method == "GET" for call in calls)
    floor = n / rate
    ratio = wall / floor
    share = refused / len(calls) if calls else 0.0
    table.add(
        "rate_limit.wall",
        f"Rate limit: delete-by-iModel of {n} connections at {rate:g}/s, wall time / floor ({floor:g} s)",
        ratio,
        f"{ratio:.3f} ({wall:.2f} s; {len(calls)} calls incl. {pages} list pages)",
        f"≤ {RATE_WALL_TARGET}",
        ratio <= RATE_WALL_TARGET,
    )
    table.add(
        "rate_limit.429_share",
        "Rate limit: 429s received / calls",
        share,
        f"{share:.2%} ({refused} of {len(calls)}; {outcomes.get('rescheduled', 0)} rescheduled)",
        f"≤ {RATE_429_TARGET:.0%}",
        share <= RATE_429_TARGET,
    )
    table.counts.update(
        {
            "rate_limit.connections": n,
            "rate_limit.deleted": n - remaining,
            "rate_limit.remaining": remaining,
            "rate_limit.calls": len(calls),
            "rate_limit.429s": refused,
            "rate_limit.fanned_out": outcomes.get("fanned_out", 0),
            "rate_limit.succeeded": outcomes.get("succeeded", 0),
            "rate_limit.rescheduled": outcomes.get("rescheduled", 0),
            "rate_limit.dead_lettered": poison.sent,
        }
    )


# -- 5. cold start ----------------------------------------------------------------------------------------------
def import_times(code: str, env: dict[str, str]) -> dict[str, int]:
    """Self time in µs of each module ``python -X importtime -c code`` imported, in a fresh process."""
    done = subprocess.run(  # noqa: S603 - our own interpreter
        [sys.executable, "-X", "importtime", "-c", code], cwd=REPO, env=env, capture_output=True, text=True, check=True
    )
    times: dict[str, int] = {}
    for line in done.stderr.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        self_us, _, name = line.split(":", 1)[1].split("|")
        times[name.strip()] = int(self_us)
    return times


def _own(module: str) -> bool:
    return module.split(".", 1)[0] in PROJECT_PACKAGES


def _pycache_envs(tmp: Path) -> tuple[dict[str, str], dict[str, str]]:
    """Two environments with their own bytecode caches (PYTHONPYCACHEPREFIX), so the repository is not written to.

    ``cached``: every module's bytecode is there (after one priming run). ``source``: the same cache without the
    project's own modules, which therefore compile from source at every start, as from a read-only package
    deployed without ``__pycache__`` (and as on machines that set PYTHONDONTWRITEBYTECODE).
    """
    base = {k: v for k, v in os.environ.items() if k not in ("PYTHONDONTWRITEBYTECODE", "PYTHONPYCACHEPREFIX")}
    cached = {**base, "PYTHONPYCACHEPREFIX": str(tmp / "cached")}
    for code in ("import function_app", BASELINE_IMPORT):  # prime: compile everything once
        import_times(code, cached)
    shutil.copytree(tmp / "cached", tmp / "source")
    mirror = tmp / "source" / str(REPO).lstrip("/")
    for package in PROJECT_PACKAGES:
        shutil.rmtree(mirror / package, ignore_errors=True)
        for compiled in mirror.glob(f"{package}.*.pyc"):
            compiled.unlink()
    source = {**base, "PYTHONPYCACHEPREFIX": str(tmp / "source"), "PYTHONDONTWRITEBYTECODE": "1"}
    return cached, source


def cold_start(table: Table, sizes: Sizes) -> None:
    """Benchmark 5: minimum over fresh processes, alternating the app (two bytecode conditions) and its dependencies.

    Own modules: the sum of the self times of function_app, functions.* and shared.* in one run, minimum over runs.
    """
    with tempfile.TemporaryDirectory(prefix="itwin-bench-pycache-") as tmp:
        cached, source = _pycache_envs(Path(tmp))
        runs: dict[str, list[dict[str, int]]] = {"cached": [], "source": [], "base": []}
        for _ in range(sizes.import_runs):
            runs["cached"].append(import_times("import function_app", cached))
            runs["source"].append(import_times("import function_app", source))
            runs["base"].append(import_times(BASELINE_IMPORT, cached))

    def least(name: str, own_only: bool = False) -> float:
        return min(sum(us for m, us in run.items() if _own(m) or not own_only) for run in runs[name]) / 1000

    total, base = least("cached"), least("base")
    own, own_source = least("cached", True), least("source", True)
    modules = sum(_own(module) for module in runs["cached"][0])
    extra = sorted({m for m in runs["cached"][0] if not _own(m)} - set().union(*runs["base"]))
    slowest: dict[str, int] = {}
    for run in runs["cached"]:
        for module, us in run.items():
            if _own(module):
                slowest[module] = min(slowest.get(module, us), us)
    top = ", ".join(f"{m} {us / 1000:.1f}" for m, us in sorted(slowest.items(), key=lambda x: -x[1])[:4])
    table.add(
        "cold_start.total",
        "Cold start: import function_app, bytecode cached (min of fresh processes)",
        total,
        f"{total:.0f} ms; dependencies alone {base:.0f} ms; {len(extra)} more third-party modules",
    )
    table.add(
        "cold_start.own",
        f"Cold start: the project's {modules} own modules, bytecode cached (self time)",
        own,
        f"{own:.1f} ms = {own / base:.0%} of the dependencies' (slowest, ms: {top})",
        f"≤ {OWN_IMPORT_TARGET_MS:.0f} ms",
        own <= OWN_IMPORT_TARGET_MS,
    )
    table.add(
        "cold_start.own_source",
        "Cold start: the project's own modules compiled at start (no .pyc, read-only package)",
        own_source,
        f"{own_source:.1f} ms (compiling: {own_source - own:.1f} ms)",
        f"≤ {OWN_IMPORT_TARGET_MS:.0f} ms",
        own_source <= OWN_IMPORT_TARGET_MS,
    )
    table.counts.update(
        {
            "cold_start.runs": sum(len(r) for r in runs.values()),
            "cold_start.own_modules": modules,
            "cold_start.extra_third_party_modules": len(extra),
        }
    )
