"""What the tool prints: lines, tables that fit the terminal, a progress bar on bulk work, and confirmations.

Results go to standard output; the progress bar and prompts go to standard error, and only when it is a
terminal, so piped output stays clean.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import TextIO

BAR_WIDTH = 28


def when(moment: datetime | None) -> str:
    """A time as ``2026-11-23 08:07:01Z``, or ``-``."""
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ") if moment else "-"


def span(delta: timedelta) -> str:
    """A duration in the two largest units: ``6d 23h``, ``4h 05m``, ``12m 30s``, ``45s``."""
    seconds = max(0, int(delta.total_seconds()))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    if days:
        return f"{days}d {hours:02}h"
    if hours:
        return f"{hours}h {minutes:02}m"
    if minutes:
        return f"{minutes}m {seconds:02}s"
    return f"{seconds}s"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], width: int) -> list[str]:
    """Aligned columns; the last column is cut (with …) to keep each line within ``width``."""
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers[:-1])]
    lead = sum(widths) + 2 * len(widths)
    room = max(20, width - lead)
    lines = []
    for row in [list(headers), *[list(r) for r in rows]]:
        cells = [cell.ljust(w) for cell, w in zip(row[:-1], widths, strict=True)]
        last = row[-1] if len(row[-1]) <= room else row[-1][: room - 1] + "…"
        lines.append("  ".join([*cells, last]).rstrip())
    return lines


class Progress:
    """``replay [########............] 12/40`` on standard error, redrawn in place; silent when not a terminal."""

    def __init__(self, output: Output, total: int, label: str) -> None:
        self.output = output
        self.total = total
        self.label = label
        self.done = 0
        self.shown = output.interactive and total > 1

    def draw(self) -> None:
        if not self.shown:
            return
        filled = BAR_WIDTH * self.done // max(1, self.total)
        bar = "#" * filled + "." * (BAR_WIDTH - filled)
        self.output.err.write(f"\r{self.label} [{bar}] {self.done}/{self.total}")
        self.output.err.flush()

    def clear(self) -> None:
        if self.shown:
            self.output.err.write("\r\x1b[2K")
            self.output.err.flush()

    def advance(self) -> None:
        self.done += 1
        self.draw()

    def close(self) -> None:
        self.clear()
        self.output.progress_bar = None


class Output:
    """Where the tool writes; `interactive` when standard error is a terminal."""

    def __init__(self, out: TextIO | None = None, err: TextIO | None = None, interactive: bool | None = None) -> None:
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self.interactive = self.err.isatty() if interactive is None else interactive
        self.progress_bar: Progress | None = None

    @property
    def width(self) -> int:
        """The terminal's width; piped output is never cut."""
        return shutil.get_terminal_size((120, 24)).columns if self.out.isatty() else 100_000

    def line(self, text: str = "") -> None:
        """Print a result line (above the progress bar, which is redrawn)."""
        bar = self.progress_bar
        if bar:
            bar.clear()
        self.out.write(text + "\n")
        self.out.flush()
        if bar:
            bar.draw()

    def note(self, text: str) -> None:
        """Print a remark on standard error."""
        bar = self.progress_bar
        if bar:
            bar.clear()
        self.err.write(text + "\n")
        self.err.flush()
        if bar:
            bar.draw()

    def progress(self, total: int, label: str) -> Progress:
        self.progress_bar = Progress(self, total, label)
        self.progress_bar.draw()
        return self.progress_bar

    def confirm(self, question: str, answer: str) -> bool:
        """Ask on the terminal; True only when the operator types ``answer``."""
        self.err.write(f"{question} Type {answer} to confirm: ")
        self.err.flush()
        reply = sys.stdin.readline()
        return reply.strip() == answer
