"""The results table: one row per figure, with its target and whether it was met."""

from __future__ import annotations

import json
import os
import platform
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

HOW_TO_READ = """## How to read these figures

- **Overhead** is the wall time of the worker's whole path per delete (validate, span, token, pacing, request,
  telemetry, outcome) over a bare `requests.Session` making the same DELETE with a fixed token, in interleaved blocks
  so that drift hits both. The first measurement missed (1.32): requests re-reads the environment (proxies, CA bundle)
  on every call, about 0.2 ms of CPU here. The client now reads it once when its session is built, which also keeps
  `.netrc` from overriding the Authorization header; the bare baseline still pays it, and the OpenTelemetry SDK's cost
  remains in the worker's figure. On a busy machine the ratio moves by a few hundredths between runs.
- **Cold start** counts the project's own modules, once with bytecode cached and once compiled at start, as on a
  read-only package without `.pyc` files. The first measurement missed (45 ms uncompiled): an HTTP-only instance loaded
  the whole client. The worker's modules (client, MSAL tokens, telemetry) and OpenTelemetry's propagators now load on
  first use.
- **Spread between runs** on this shared 2-core machine, over eight full runs on 2026-11-22: overhead 1.09 to 1.15;
  own modules with bytecode cached 12 to 15 ms; compiled at start 24 to 35 ms, so that row can land either side of
  its 30 ms target. A read-only package deployed without `__pycache__` pays the compiled-at-start figure; one with
  bytecode compiled for Python 3.11 pays the cached one. On 2026-11-23 the overhead row gave 1.21-1.29 on a
  nearly idle machine, the same at the commit before the adaptive pacer (1.21): the bare call took 0.7 ms where
  the run above it once took 1.7 ms, while the worker's own time stayed about 0.15 ms, so the ratio rose; the
  pacer costs under 1 µs per call.
- **Rate limit** is bounded below by the pacer itself, which runs at 95% of the configured rate
  (`ITWIN_RATE_LIMITS=export=50`), so 606 calls take at least 606 / 47.5 s: 1.06 times the floor, with no 429.
- **Ledger** rows run against Azurite's table and queue services (in memory, on this machine) and count the HTTP
  requests the ledger's table client sends, through azure-core's request and response hooks on the client that
  `Ledger.from_environment` builds (a retry would count as another request). Accepting a batch of up to 100 commands
  is two transactions (`$batch`) in the day's partition: the rows, inserted unsent, and once the messages are on the
  queue the one marking them sent; a command with an idempotency key adds one insert of its key's index row (a point
  write, and a point read when the key is taken), whatever the table's size. In the worker a create takes three round
  trips (the read, the lease, the result) and every other kind two (a read and its result), with the same API calls
  as without the ledger except a run create, which first lists the matching runs; a second delivery of a command
  already done takes one (the read), with no API call. A delete by iModel takes five: it also records its children's
  rows (one transaction per 100 children, which is their acceptance), marks them sent, and lists the children
  recorded under it; that row is informational.
- **Wall time with the ledger** is dominated by the table round trips: on loopback a bare DELETE to the simulator
  takes about 1 ms, each of the ledger's two table requests about 2 ms, so the worker with the ledger runs at several
  times the bare requests (about 8 here) where the worker without it stays at 1.1 to 1.3. Most of each round trip is
  CPU on the same two cores: Azurite's own (Node.js) and the client's (azure-data-tables, azure-core, requests). In
  Azure a table request is a network round trip to the storage account instead, so the ratio there follows that
  latency, not these figures. Accepting one command costs one transaction more than its one queue message, about 3
  times the time without the ledger; a batch of 100 about 1.1 times, its 200 queue requests (each message sent hidden,
  then shown) dominating.
- **Scale** starts N instances together, each a separate OS process, and counts calls and 429s at the simulator.
  The instances share one queue, as Function App instances share `itwin-commands`: in memory, in a server process
  of its own, because Azurite measured 522 queue operations/s here for about 1.3 of the machine's 2 cores, and
  16 instances give back several thousand commands they cannot send within their 1-s budget (the "reschedules,
  most not sent": queue operations, not API calls), which would leave the simulator and the instances no CPU. A
  queue per instance, each with an equal share of the runs, would measure something production does not have: an
  instance that happened to be refused first, holding a fixed share of the work at a low rate while the others idle.
  (The issue's "before" figures came from equal shares per process; a fixed rate per process makes that difference
  small, since every process then gets through about as much as any other.)
- **The 429 target at 16 processes cannot be met by any limiter that starts every instance at the configured rate
  with no shared store.** An instance learns that the limit is shared only from 429s of its own, and two instances
  that never had one both send at the full rate, so all but at most one of 16 instances started together must be
  refused once: at least 15 429s beside 240 accepted calls, 5.9% of all calls. Today's pacer pays about twice that:
  an instance with no call of its own measured yet takes its first 429 as possibly a platform hiccup and is cut
  only by a second (one 429 on an instance's first call used to hold that API at one call every three minutes for
  about ten). The rest are spread over the run: calls of the instances that got nothing through (at 1/1024 of the
  limit, once every three minutes, more often as they grow in time) landing in a full second, and a winner now and
  then refused where two share a slot, which moves it to another slot or, the second time, cuts it. Over three runs
  of the 16 instances on 2026-11-23, when one 429 was enough: 22-25 429s, 8.4-9.4% of calls, 1.09-1.10 calls per
  run, 1.18-1.23 times the floor, 0 dead letters; the shared schedule (`ITWIN_SHARED_PACING=on`) has none.
- **How the 16 instances use the limit.** After those first 429s, each instance cuts to what got through from it
  in the last second: the 6 that won the first slot to 1/s each (every sixth slot), the 10 others to the floor.
  The sum is the limit from the second second on, and a probe above 1/s comes only after some 54 calls, so the
  instances hold that split for the rest of the run. The 10 at the floor keep taking commands from the shared
  queue: a command an instance cannot send within its 1-s budget goes back visible at once, and the invocation
  stays busy for that second, so the work waits on the queue for an instance that has a slot instead of hiding
  in one that has none. Before this (an earlier pacer, and a give-back hidden for 1 s), the last commands went
  back and forth between such instances, and the 16-instance run took 1.43-1.76 times the floor.
- **Limit drop**: one instance follows its limit down within about 2 s (the cut goes to what got through) and is
  back at the full rate about 22 s after the limit returns: a probe after about 54 calls at 2/s, then faster once
  a probe holds. Its rate moves in whole shares of the slot grid (6, 3, 2/s). With N instances on one limit that
  came back, each makes 1/N of the calls, so the climb takes about N times longer.
"""


@dataclass(frozen=True)
class Row:
    """One figure. ``value`` is the number the target applies to; ``shown`` is how the table prints it.

    Informational rows (``target`` is ``"—"``) always pass: they explain another row.
    """

    key: str
    figure: str
    value: float
    shown: str
    target: str
    passed: bool
    informational: bool = False

    @property
    def result(self) -> str:
        if self.informational:
            return "info"
        return "pass" if self.passed else "MISS"


@dataclass
class Table:
    """The rows in the order they were measured, the counts behind them, and the run's circumstances."""

    smoke: bool
    rows: list[Row] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    data: dict[str, Any] = field(default_factory=dict)  # what charts are drawn from
    sections: list[str] = field(default_factory=list)  # Markdown after the table, before "How to read"

    def add(
        self,
        key: str,
        figure: str,
        value: float,
        shown: str,
        target: str = "—",
        passed: bool | None = None,
    ) -> Row:
        row = Row(key, figure, float(value), shown, target, True if passed is None else passed, passed is None)
        self.rows.append(row)
        return row

    def row(self, key: str) -> Row:
        return next(row for row in self.rows if row.key == key)

    def _cells(self) -> list[tuple[str, str, str, str]]:
        return [(row.figure, row.shown, row.target, row.result) for row in self.rows]

    def _circumstances(self) -> str:
        sizes = "smoke sizes (targets apply at full sizes only)" if self.smoke else "full sizes"
        return (
            f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, Python {platform.python_version()}, "
            f"{os.cpu_count()} CPUs, {sizes}, {self.seconds:.0f} s"
        )

    def render_text(self) -> str:
        header = ("Figure", "Value", "Target", "Result")
        cells = self._cells()
        widths = [max(len(texts[i]) for texts in [header, *cells]) for i in range(4)]

        def line(texts: tuple[str, ...]) -> str:
            return "  ".join(text.ljust(width) for text, width in zip(texts, widths, strict=True)).rstrip()

        lines = [line(header), line(tuple("-" * width for width in widths)), *(line(cells_) for cells_ in cells)]
        lines.append("")
        lines.append(self._circumstances())
        lines.extend(self.notes)
        return "\n".join(lines)

    def render_markdown(self, smoke: bool | None = None) -> str:
        smoke = self.smoke if smoke is None else smoke
        title = "# Benchmarks" + (" (smoke run)" if smoke else "")
        lines = [
            title,
            "",
            "Written by `make bench-docs` (`python -m bench --markdown BENCHMARKS.md`): the queue worker against the",
            "iTwin Platform simulator on loopback, and the command ledger on Azurite's table and queue services, in",
            "one run. Ratios and counts only: the machine is shared.",
            "",
            "| Figure | Value | Target | Result |",
            "| --- | --- | --- | --- |",
        ]
        for figure, shown, target, result in self._cells():
            lines.append(f"| {figure} | {shown} | {target} | {result} |".replace("||", "| |"))
        lines += ["", self._circumstances() + ".", ""]
        lines += [f"- {note}" for note in self.notes]
        for section in self.sections:
            lines += ["", section.rstrip()]
        lines += ["", HOW_TO_READ]
        return "\n".join(lines).rstrip() + "\n"

    def to_json(self) -> str:
        payload: dict[str, Any] = {
            "smoke": self.smoke,
            "seconds": self.seconds,
            "rows": [{**asdict(row), "result": row.result} for row in self.rows],
            "counts": self.counts,
            "notes": self.notes,
            "data": self.data,
        }
        return json.dumps(payload, indent=2, ensure_ascii=False)
