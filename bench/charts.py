"""Charts of benchmark 7, drawn with matplotlib from the data of the run that wrote BENCHMARKS.md."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.scale import BEFORE, LIMIT, SHARED_TARGETS


def scale_chart(runs: list[dict[str, Any]], path: Path) -> None:
    """429 share and wall / floor against the number of processes, before (the issue's figures) and after."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    before = sorted(BEFORE)
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(before, [100 * BEFORE[n][1] for n in before], "o--", color="grey", label="before (fixed 6/s each)")
    right.plot(before, [BEFORE[n][3] for n in before], "o--", color="grey", label="before (fixed 6/s each)")
    processes: list[int] = []
    wall: list[float] = []
    styles = {"local": ("o-", "adaptive pacer (local)"), "shared": ("s-", "shared schedule")}
    for mode, (style, name) in styles.items():
        chosen = [r for r in runs if r.get("mode", "local") == mode and r.get("start", "together") == "together"]
        if not chosen:
            continue
        n = [r["processes"] for r in chosen]
        processes += n
        wall += [r["wall"] / r["floor"] for r in chosen]
        left.plot(n, [100 * r["refused"] / r["calls"] for r in chosen], style, label=name)
        right.plot(n, [r["wall"] / r["floor"] for r in chosen], style, label=name)
    left.axhline(100 * SHARED_TARGETS["share"], color="tab:red", linestyle=":", linewidth=1, label="target at 16")
    left.set(xlabel="processes", ylabel="429s, % of all calls", title="429s of all calls (started together)")
    left.set_yscale("symlog", linthresh=1)
    right.axhline(SHARED_TARGETS["wall"], color="tab:blue", linestyle=":", linewidth=1, label="target at 16")
    right.set(xlabel="processes", ylabel="wall time / floor (runs / 6 s)", title="Wall time / floor")
    right.set_ylim(0.9, max(2.0, max(wall) + 0.1))
    for axes in (left, right):
        axes.set_xticks(sorted(set(processes) | set(before)))
        axes.grid(alpha=0.3)
        axes.legend(fontsize=8)
    fig.suptitle(f"N processes share one simulated limit of {LIMIT:g} calls/s (make bench, one run)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def drop_chart(drop: dict[str, Any], path: Path) -> None:
    """The platform's limit, the rate the instance allowed itself, and what the platform accepted, per second."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    start, end = drop["started"], drop["end"]
    limits = [(t - start, rate) for t, rate in drop["limits"]] + [(end - start, drop["limits"][-1][1])]
    fig, axes = plt.subplots(figsize=(10, 4))
    axes.step([t for t, _ in limits], [rate for _, rate in limits], where="post", color="black", label="platform limit")
    for index, samples in enumerate(drop["samples"]):
        axes.plot(
            [t - start for t, _ in samples],
            [rate for _, rate in samples],
            color="tab:blue",
            label="rate the instance allows itself" if index == 0 else None,
        )
    seconds = int(end - start) + 1
    accepted, refused = [0] * seconds, [0] * seconds
    for t, status in drop["calls"]:
        second = int(t - start)
        if 0 <= second < seconds:
            if status == 429:
                refused[second] += 1
            else:
                accepted[second] += 1
    axes.bar([s + 0.5 for s in range(seconds)], accepted, width=0.9, color="tab:green", alpha=0.35, label="accepted")
    marks = [s + 0.5 for s in range(seconds) if refused[s]]
    axes.scatter(marks, [refused[int(s)] for s in marks], color="tab:red", marker="x", zorder=3, label="429s")
    axes.set(xlabel="seconds since the start", ylabel="calls per second", ylim=(0, LIMIT + 1))
    axes.set_title(
        f"The limit drops from 6/s to 2/s and comes back: one instance follows it ({drop.get('name', 'local')} "
        "pacer, make bench, one run)"
    )
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def draw_charts(data: dict[str, Any], root: Path) -> dict[str, str]:
    """The PNGs of this run under ``root``/docs; their paths relative to ``root``, for BENCHMARKS.md."""
    (root / "docs").mkdir(exist_ok=True)
    charts = {}
    if data["runs"]:
        scale_chart(data["runs"], root / SCALE_CHART)
        charts["scale"] = SCALE_CHART
    if data["drop"] is not None:
        drop_chart(data["drop"], root / DROP_CHART)
        charts["drop"] = DROP_CHART
    if data.get("drops", {}).get("shared") is not None:
        drop_chart(data["drops"]["shared"], root / DROP_CHART_SHARED)
        charts["drop_shared"] = DROP_CHART_SHARED
    return charts


SCALE_CHART = "docs/bench-scale.png"
DROP_CHART = "docs/bench-limit-drop.png"
DROP_CHART_SHARED = "docs/bench-limit-drop-shared.png"
