"""Benchmark 7: N worker instances, each in its own OS process with its own client, pacer and worker, share one
platform limit (the simulator, in its own process, at ``clashdetection=6``) and one command queue.

Each run enqueues Clash Detection run creates on a shared in-memory queue server (`bench.instances.QueueServer`:
it hands a message out again only after its visibility delay, as a storage queue does), starts N instances on
them at once, and waits until the queue is drained. The simulator counts every call and every 429. A second
scenario lowers the platform's limit from 6/s to 2/s mid-run and restores it, while one instance samples the rate
its pacer allows itself.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from bench.harness import simulator_settings
from bench.instances import (
    API,
    SPAWN,
    InstanceResult,
    InstanceSpec,
    Platform,
    create_run,
    platform,
    queue_server,
    run_instance,
)
from bench.table import Table

LIMIT = 6.0  # calls/s, the simulator's Clash Detection limit and the configured ceiling
THREADS = 4  # concurrent invocations per instance; the limit, not concurrency, bounds the work
START_TIMEOUT = 180.0

# The figures with a fixed 6/s per process (before this pacer): processes -> (calls/run, 429 share, dead
# letters, wall/floor).
BEFORE = {1: (1.00, 0.00, 0, 1.06), 4: (1.60, 0.38, 0, 1.19), 8: (2.29, 0.56, 0, 1.13), 16: (3.34, 0.72, 15, 1.03)}

# Targets from the issue: at 16 processes, and at 1 process (the single-process targets of `make bench`).
TARGETS = {
    16: {"calls": 1.10, "share": 0.05, "wall": 1.20},
    1: {"share": 0.02, "wall": 1.15},
}


@dataclass(frozen=True)
class Drop:
    """The limit-drop scenario: ``before`` s at the full limit, ``low`` s at ``low_rate``, then the full limit."""

    processes: int
    runs: int
    before: float
    low: float
    low_rate: float


@dataclass(frozen=True)
class ScaleSizes:
    runs: tuple[tuple[int, int], ...]  # (processes, runs created in all)
    drop: Drop | None


FULL_SCALE = ScaleSizes(((1, 60), (4, 60), (8, 240), (16, 240)), Drop(1, 320, 10.0, 20.0, 2.0))
SMOKE_SCALE = ScaleSizes(((1, 6), (2, 12)), None)


@dataclass
class RunResult:
    processes: int
    runs: int
    wall: float
    calls: list[tuple[float, int | None]]
    created: int
    instances: list[InstanceResult]
    started: float
    limits: list[tuple[float, float]] = field(default_factory=list)  # (wall-clock time, platform limit) changes

    @property
    def refused(self) -> int:
        return sum(status == 429 for _, status in self.calls)

    @property
    def floor(self) -> float:
        return self.runs / LIMIT

    @property
    def dead_lettered(self) -> int:
        return sum(instance.dead_lettered for instance in self.instances)

    def outcome(self, name: str) -> int:
        return sum(instance.outcomes.get(name, 0) for instance in self.instances)


def run_instances(
    sim: Platform, processes: int, runs: int, schedule: tuple[tuple[float, float], ...] = ()
) -> RunResult:
    """``runs`` run creates, ``processes`` instances started together; ``schedule`` changes the platform's limit
    (seconds after the start, new rate)."""
    with queue_server() as shared:
        queue = shared.connect()
        for index in range(runs):
            queue.send_message(create_run(index))
        env = simulator_settings(sim, ITWIN_RATE_LIMITS=f"{API}={LIMIT:g}")
        ready, start, results = SPAWN.Barrier(processes + 1), SPAWN.Event(), SPAWN.Queue()
        pool = [
            SPAWN.Process(
                target=run_instance,
                args=(InstanceSpec(i, env, sim.ca_path, shared, THREADS), ready, start, results),
                name=f"instance-{i}",
            )
            for i in range(processes)
        ]
        for process in pool:
            process.start()
        try:
            ready.wait(START_TIMEOUT)
            before = sim.clear()
            started = time.time()
            start.set()
            limits = [(started, LIMIT)]
            changer = threading.Thread(target=_change_limits, args=(sim, started, schedule, limits))
            changer.start()
            instances = [results.get(timeout=START_TIMEOUT + 10 * runs) for _ in pool]
            changer.join()
        finally:
            for process in pool:
                process.join(timeout=30)
                if process.is_alive():
                    process.terminate()
        calls, after = sim.calls(API)
    wall = max(instance.finished for instance in instances) - started
    instances.sort(key=lambda instance: instance.index)
    return RunResult(processes, runs, wall, calls, after - before, instances, started, limits)


def _change_limits(sim: Platform, started: float, schedule: tuple[tuple[float, float], ...], log: list) -> None:
    for at, rate in schedule:
        time.sleep(max(0.0, started + at - time.time()))
        sim.set_limit(API, rate)
        log.append((time.time(), rate))


def scale(table: Table, smoke: bool) -> dict[str, Any]:
    """Benchmark 7: the runs at 1 to 16 processes and the limit drop; rows into ``table``, data for the charts."""
    sizes = SMOKE_SCALE if smoke else FULL_SCALE
    data: dict[str, Any] = {"runs": [], "drop": None}
    with platform({API: LIMIT}) as sim:
        for processes, runs in sizes.runs:
            result = run_instances(sim, processes, runs)
            _rows(table, result)
            data["runs"].append(_summary(result))
        if sizes.drop is not None:
            drop = sizes.drop
            schedule = ((drop.before, drop.low_rate), (drop.before + drop.low, LIMIT))
            result = run_instances(sim, drop.processes, drop.runs, schedule)
            data["drop"] = _drop_rows(table, result, drop)
    return data


def _summary(result: RunResult) -> dict[str, Any]:
    calls = len(result.calls)
    return {
        "processes": result.processes,
        "runs": result.runs,
        "calls": calls,
        "refused": result.refused,
        "created": result.created,
        "dead_lettered": result.dead_lettered,
        "wall": result.wall,
        "floor": result.floor,
        "created_by_instance": [instance.outcomes.get("succeeded", 0) for instance in result.instances],
        "rescheduled": result.outcome("rescheduled"),
    }


def _rows(table: Table, result: RunResult) -> None:
    n, runs, calls = result.processes, result.runs, len(result.calls)
    per_run = calls / runs
    share = result.refused / calls if calls else 0.0
    ratio = result.wall / result.floor
    target = TARGETS.get(n, {})
    label = f"Scale: {n} process{'es' if n > 1 else ''}, {runs} run creates at {LIMIT:g}/s"
    made = [instance.outcomes.get("succeeded", 0) for instance in result.instances]
    spread = f"; created per process {min(made)}-{max(made)}" if n > 1 else ""
    table.add(
        f"scale.{n}.calls",
        f"{label}: API calls per run",
        per_run,
        f"{per_run:.2f} ({calls} calls, {result.created} runs created{spread})",
        f"≤ {target['calls']:.2f}" if "calls" in target else "—",
        per_run <= target["calls"] if "calls" in target else None,
    )
    table.add(
        f"scale.{n}.429_share",
        f"{label}: 429s / calls",
        share,
        f"{share:.1%} ({result.refused} of {calls}; {result.outcome('rescheduled')} reschedules, most not sent)",
        f"≤ {target['share']:.0%}" if "share" in target else "—",
        share <= target["share"] if "share" in target else None,
    )
    table.add(
        f"scale.{n}.dead_lettered",
        f"{label}: dead-lettered runs",
        result.dead_lettered,
        f"{result.dead_lettered}",
        "= 0",
        result.dead_lettered == 0 and result.created == runs,
    )
    table.add(
        f"scale.{n}.wall",
        f"{label}: wall time / floor ({result.floor:g} s)",
        ratio,
        f"{ratio:.3f} ({result.wall:.1f} s)",
        f"≤ {target['wall']:.2f}" if "wall" in target else "—",
        ratio <= target["wall"] if "wall" in target else None,
    )
    table.counts.update(
        {
            f"scale.{n}.runs": runs,
            f"scale.{n}.created": result.created,
            f"scale.{n}.calls": calls,
            f"scale.{n}.refused": result.refused,
            f"scale.{n}.dead_lettered": result.dead_lettered,
            f"scale.{n}.succeeded": result.outcome("succeeded"),
        }
    )


DOWN_TARGET = 5.0  # seconds after the drop until the instance allows itself no more than the new limit
UP_TARGET = 30.0  # seconds after the limit is back until it allows itself the full limit again


def _drop_rows(table: Table, result: RunResult, drop: Drop) -> dict[str, Any]:
    samples = result.instances[0].samples
    dropped, restored = result.limits[1][0], result.limits[2][0]
    down = next((t - dropped for t, rate in samples if t >= dropped and rate <= drop.low_rate), math.inf)
    up = next((t - restored for t, rate in samples if t >= restored and rate >= LIMIT), math.inf)
    low_calls = [status for t, status in result.calls if dropped <= t < restored]
    refused_low = sum(status == 429 for status in low_calls)
    table.add(
        "scale.drop.down",
        f"Limit drop: {LIMIT:g}/s to {drop.low_rate:g}/s for {drop.low:g} s, one process: seconds until it allows "
        f"itself ≤ {drop.low_rate:g}/s",
        down,
        f"{down:.1f} s ({refused_low} 429s of {len(low_calls)} calls while the limit was low)",
        f"≤ {DOWN_TARGET:g} s",
        down <= DOWN_TARGET,
    )
    table.add(
        "scale.drop.up",
        f"Limit drop: seconds after the limit is back until it allows itself {LIMIT:g}/s again",
        up,
        f"{up:.1f} s ({result.refused} 429s and {len(result.calls)} calls in the whole run, "
        f"{result.created} of {drop.runs} runs created, {result.dead_lettered} dead-lettered)",
        f"≤ {UP_TARGET:g} s",
        up <= UP_TARGET and result.dead_lettered == 0,
    )
    table.counts.update({"scale.drop.created": result.created, "scale.drop.refused": result.refused})
    return {
        "started": result.started,
        "limits": result.limits,
        "end": result.started + result.wall,
        "samples": [instance.samples for instance in result.instances],
        "calls": result.calls,
    }


def scale_section(data: dict[str, Any], charts: dict[str, str]) -> str:
    """The issue's table, before (the issue's figures) and after (this run), and the charts."""
    lines = [
        "## Many instances, one platform limit",
        "",
        f"N worker instances, each a separate OS process with its own client, pacer and worker (the production "
        f"`WORKER_POLICY`, the real `Worker.handle`, {THREADS} invocations at a time), create Clash Detection runs "
        f"against one simulator limited to {LIMIT:g} calls/s, through one shared queue that hands a rescheduled "
        "command out again after its visibility delay. Before: the issue's figures, a fixed 6/s per process. "
        "After: this run.",
        "",
        "| processes | calls / run | 429s of all calls | dead-lettered runs | wall / floor (runs / 6 s) |",
        "|---|---|---|---|---|",
    ]
    for run in data["runs"]:
        n = run["processes"]
        calls, share = run["calls"] / run["runs"], run["refused"] / run["calls"]
        wall = run["wall"] / run["floor"]
        before = BEFORE.get(n)
        if before is None:
            cells = (f"{calls:.2f}", f"{share:.1%}", f"{run['dead_lettered']}", f"{wall:.2f}")
        else:
            cells = (
                f"{before[0]:.2f} → **{calls:.2f}**",
                f"{before[1]:.0%} → **{share:.1%}**",
                f"{before[2]} → **{run['dead_lettered']}**",
                f"{before[3]:.2f} → **{wall:.2f}**",
            )
        lines.append(f"| {n} ({run['runs']} runs) | " + " | ".join(cells) + " |")
    for key, alt in (("scale", "429 share and wall / floor against the number of processes"), ("drop", "limit drop")):
        if key in charts:
            lines += ["", f"![{alt}]({charts[key]})"]
    return "\n".join(lines) + "\n"
