"""What a long `make bench` says while it runs: one line on standard error as each benchmark starts, and the
total at the end, so that minutes without output never look like a hang."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from typing import TextIO


def _clock_text(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    return f"{minutes}:{seconds:02}"


class Progress:
    """``progress("tokens")`` prints ``bench [2/8] tokens (0:12 so far)``; ``progress.done()`` the total time."""

    def __init__(
        self,
        sections: Sequence[str],
        stream: TextIO | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.sections = tuple(sections)
        self.stream = stream
        self.clock = clock
        self.started = clock()
        self.count = 0

    def _say(self, text: str) -> None:
        print(text, file=self.stream or sys.stderr, flush=True)

    def __call__(self, section: str) -> None:
        self.count += 1
        elapsed = _clock_text(self.clock() - self.started)
        self._say(f"bench [{self.count}/{len(self.sections)}] {section} ({elapsed} so far)")

    def done(self) -> None:
        self._say(f"bench: {self.count} benchmark(s) in {_clock_text(self.clock() - self.started)}")
