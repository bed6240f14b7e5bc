"""Timer triggers for the local host (`sandbox.host`): NCRONTAB schedules, run as the Functions host runs them.

A schedule has six fields, ``{second} {minute} {hour} {day} {month} {day-of-week}``, each ``*``, a number, a range
``a-b``, a list ``a,b``, or a step ``*/n`` / ``a-b/n``; day-of-week 0-6 from Sunday. Times are UTC (Azure's default,
``WEBSITE_TIME_ZONE`` unset). ``runOnStartup`` runs the function once when the host starts. One invocation of a
timer function at a time; a tick that comes while it runs is skipped, as the Functions host's singleton lock does.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

log = logging.getLogger(__name__)

_RANGES = ((0, 59), (0, 59), (0, 23), (1, 31), (1, 12), (0, 6))
_NAMES = ("second", "minute", "hour", "day", "month", "day-of-week")


def _field(text: str, low: int, high: int, name: str) -> frozenset[int]:
    values: set[int] = set()
    for part in text.split(","):
        span, _, step_text = part.partition("/")
        step = int(step_text) if step_text else 1
        if span == "*":
            first, last = low, high
        elif "-" in span:
            first_text, last_text = span.split("-", 1)
            first, last = int(first_text), int(last_text)
        else:
            first = last = int(span)
        if not (low <= first <= last <= high and step >= 1):
            raise ValueError(f"the {name} field {text!r} is outside {low}-{high}")
        values.update(range(first, last + 1, step))
    return frozenset(values)


@dataclass(frozen=True)
class Schedule:
    """A parsed six-field NCRONTAB expression."""

    fields: tuple[frozenset[int], ...]

    @classmethod
    def parse(cls, expression: str) -> Schedule:
        parts = expression.split()
        if len(parts) != 6:
            raise ValueError(f"an NCRONTAB schedule has six fields (second first); got {expression!r}")
        try:
            return cls(tuple(_field(p, lo, hi, n) for p, (lo, hi), n in zip(parts, _RANGES, _NAMES, strict=True)))
        except ValueError as error:
            raise ValueError(f"schedule {expression!r}: {error}") from None

    def matches(self, when: datetime) -> bool:
        """True when ``when`` (to the second, UTC) is one of the schedule's instants."""
        when = when.astimezone(UTC)
        values = (when.second, when.minute, when.hour, when.day, when.month, (when.weekday() + 1) % 7)
        return all(value in allowed for value, allowed in zip(values, self.fields, strict=True))


class TimerRunner:
    """Calls ``invoke`` at every instant of ``schedule`` (and once at start with ``run_on_startup``) until stopped."""

    def __init__(
        self,
        name: str,
        schedule: Schedule,
        invoke: Callable[[bool], None],
        *,
        run_on_startup: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.name = name
        self.schedule = schedule
        self._invoke = invoke
        self._run_on_startup = run_on_startup
        self._clock = clock
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"timer-{name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _loop(self) -> None:
        if self._run_on_startup:
            self._invoke(False)
        last = int(self._clock())
        while not self._stop.wait(max(0.0, last + 1 - self._clock())):
            now = int(self._clock())
            for second in range(last + 1, now + 1):  # a slow tick catches up on the seconds it passed
                if self.schedule.matches(datetime.fromtimestamp(second, UTC)):
                    self._invoke(now - second > 1)
            last = now
