"""Draws each panel of the operators' workbook as a PNG, from telemetry an operations run exported.

    python -m observability.pictures <export folder> <output folder>

The export folder is what tests/reliability/test_reliability_operations.py writes with ``TELEMETRY_EXPORT``:
the items the app sent to the Application Insights stand-in, and the run's phases and figures. Each panel
is the Python equivalent of its workbook query (observability.panels) over those items, drawn with matplotlib:
the same data, rendered locally, not by Azure. `make workbook-pictures` runs both steps.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from observability import panels
from observability.tables import custom_metrics, dependencies

GRAIN = timedelta(seconds=5)
COLOURS = {
    "succeeded": "#2e7d32",
    "already_done": "#81c784",
    "fanned_out": "#1565c0",
    "rescheduled": "#f9a825",
    "dead_lettered": "#c62828",
    "accepted": "#2e7d32",
    "duplicate": "#90a4ae",
}
PHASE_LABELS = {
    "steady": "ordinary",
    "faults": "20% faults + webhooks",
    "ims-outage": "IMS down",
    "access-lost": "401/403",
}


class Export:
    """One operations run's export."""

    def __init__(self, folder: Path) -> None:
        self.items = [json.loads(line) for line in (folder / "items.jsonl").read_text(encoding="utf-8").splitlines()]
        self.run = json.loads((folder / "run.json").read_text(encoding="utf-8"))
        self.metrics = custom_metrics(self.items)
        self.dependencies = dependencies(self.items)
        self.phases = [
            (
                p["name"],
                datetime.fromisoformat(p["started"]).astimezone(),
                datetime.fromisoformat(p["ended"]).astimezone(),
            )
            for p in self.run["phases"]
        ]
        self.origin = self.phases[0][1]
        self.size = "make soak size" if self.run["soak"] else "make test size"
        self.date = self.origin.strftime("%Y-%m-%d")

    def seconds(self, moment: datetime) -> float:
        return (moment - self.origin).total_seconds()


def _figure(title: str, export: Export, note: str = "") -> tuple[Figure, Axes]:
    figure, axes = plt.subplots(figsize=(9, 4.2), dpi=110)
    axes.set_title(title, loc="left", fontsize=12, fontweight="bold", pad=16)
    axes.spines[["top", "right"]].set_visible(False)
    footer = (
        f"Rendered locally with matplotlib from the telemetry the app exported in an operations run ({export.size}, "
        f"{export.date}),\nby the Python equivalent of the workbook query: the same data, not Azure's renderer."
    )
    figure.text(0.01, 0.01, footer + (f"\n{note}" if note else ""), fontsize=7, color="#555555", va="bottom")
    figure.subplots_adjust(bottom=0.26 if note else 0.22, top=0.9, left=0.08, right=0.98)
    return figure, axes


def _phases(axes: Axes, export: Export) -> None:
    """Shades each phase of the run and names it along the top."""
    for n, (name, started, ended) in enumerate(export.phases):
        left, right = export.seconds(started), export.seconds(ended)
        if n % 2:
            axes.axvspan(left, right, color="#eeeeee", zorder=0)
        axes.annotate(
            PHASE_LABELS.get(name, name),
            ((left + right) / 2, 1.0),
            xycoords=("data", "axes fraction"),
            ha="center",
            va="bottom",
            fontsize=7,
            color="#666666",
        )
    axes.set_xlim(0, export.seconds(export.phases[-1][2]) + GRAIN.total_seconds())


def _timechart(export: Export, series: panels.Series, axes: Axes, stacked: bool) -> None:
    bins = sorted({moment for points in series.values() for moment in points})
    xs = [export.seconds(moment) for moment in bins]
    width = GRAIN.total_seconds() * 0.8
    bottom = [0.0] * len(bins)
    for name in sorted(series, key=lambda n: -sum(series[n].values())):
        values = [series[name].get(moment, 0.0) for moment in bins]
        if stacked:
            axes.bar(xs, values, width, bottom=bottom, label=name, color=COLOURS.get(name), align="edge")
            bottom = [b + v for b, v in zip(bottom, values, strict=True)]
        else:
            axes.plot(xs, values, marker="o", markersize=3, label=name, color=COLOURS.get(name))
    axes.set_xlabel(f"seconds into the run ({GRAIN.total_seconds():.0f} s bins)")
    axes.legend(fontsize=8, frameon=False, ncols=3)
    _phases(axes, export)


def _bars(axes: Axes, labels: Sequence[str], values: Sequence[float], colour: str, unit: str) -> None:
    positions = range(len(labels))
    axes.barh(list(positions), list(values), color=colour)
    axes.set_yticks(list(positions), labels, fontsize=8)
    axes.invert_yaxis()
    axes.set_xlabel(unit)
    for position, value in zip(positions, values, strict=True):
        axes.text(value, position, f" {value:g}", va="center", fontsize=8)


def commands_by_outcome(export: Export) -> Figure:
    figure, axes = _figure("Commands by outcome", export)
    _timechart(export, panels.commands_by_outcome(export.metrics, GRAIN), axes, stacked=True)
    axes.set_ylabel("commands")
    return figure


def client_errors(export: Export) -> Figure:
    rows = panels.client_errors(export.metrics)[:14]
    figure, axes = _figure("iTwin Platform 4xx answers by error.type and operation", export)
    _bars(
        axes,
        [f"{op} · {code} ({status})" for op, code, status, _ in rows],
        [n for *_, n in rows],
        "#ef6c00",
        "responses",
    )
    figure.subplots_adjust(left=0.38)
    return figure


def dead_letters(export: Export) -> Figure:
    rows = panels.dead_letters(export.metrics)
    figure, axes = _figure("Dead letters by error code", export)
    _bars(axes, [f"{code} · {command}" for code, command, _ in rows], [n for *_, n in rows], "#c62828", "dead letters")
    figure.subplots_adjust(left=0.38)
    return figure


def api_latency(export: Export) -> Figure:
    rows = panels.api_latency(export.dependencies)
    figure, axes = _figure("iTwin Platform latency per operation (ms)", export)
    positions = range(len(rows))
    for offset, (label, attribute, colour) in enumerate(
        (("p50", "p50", "#90caf9"), ("p95", "p95", "#1e88e5"), ("p99", "p99", "#0d47a1"))
    ):
        axes.barh(
            [p + (offset - 1) * 0.27 for p in positions],
            [getattr(r, attribute) for r in rows],
            0.27,
            label=label,
            color=colour,
        )
    axes.set_yticks(list(positions), [f"{r.operation} ({r.attempts} attempts)" for r in rows], fontsize=8)
    axes.invert_yaxis()
    axes.set_xscale("log")
    axes.set_xlabel("milliseconds (log scale); simulator on loopback, so API time is small")
    axes.legend(fontsize=8, frameon=False, ncols=3, loc="lower right", bbox_to_anchor=(1.0, 1.0))
    figure.subplots_adjust(left=0.34)
    return figure


def token_failures(export: Export) -> Figure:
    figure, axes = _figure("Token service failures by code", export)
    _timechart(export, panels.token_failures(export.metrics, GRAIN), axes, stacked=True)
    axes.set_ylabel("failed token requests")
    return figure


def webhook_deliveries(export: Export) -> Figure:
    figure, axes = _figure("Webhook deliveries: accepted, duplicate, refused", export)
    _timechart(export, panels.webhook_deliveries(export.metrics, GRAIN), axes, stacked=True)
    axes.set_ylabel("deliveries")
    return figure


# One picture per workbook query item, by its name in infra/workbook.json.
PICTURES: dict[str, Callable[[Export], Figure]] = {
    "commands-by-outcome": commands_by_outcome,
    "client-errors": client_errors,
    "dead-letters": dead_letters,
    "api-latency": api_latency,
    "token-failures": token_failures,
    "webhook-deliveries": webhook_deliveries,
}


def draw(export_folder: Path, output: Path) -> list[Path]:
    """Writes ``<output>/<panel>.png`` for every panel; returns the paths."""
    export = Export(export_folder)
    output.mkdir(parents=True, exist_ok=True)
    written = []
    for name, picture in PICTURES.items():
        figure = picture(export)
        path = output / f"{name}.png"
        figure.savefig(path, metadata={"Software": None})
        plt.close(figure)
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m observability.pictures <export folder> <output folder>", file=sys.stderr)
        return 2
    folder = Path(args[0])
    if not (folder / "run.json").exists():
        print(f"{folder} holds no operations run: run `make workbook-pictures`", file=sys.stderr)
        return 2
    for path in draw(folder, Path(args[1])):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
