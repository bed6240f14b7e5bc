"""What Flex Consumption charges for a run, from the invocations' measured start and end times.

The rule (Microsoft Learn, "Azure Functions Flex Consumption plan hosting", Billing, ms.date 2025-05-12): on-demand
instances are billed for their instance memory while they are actively executing at least one function, in
GB-seconds; the minimum billable execution period is 1,000 ms, and past that it is rounded up to the nearest
100 ms; plus a charge per execution. Concurrent executions on one instance share its activity period.

The prices are the on-demand rates Microsoft's own worked example uses ("Estimating consumption-based costs",
Flex Consumption tab, ms.date 2025-02-10: $0.000026 per GB-s and $0.40 per million executions, without free grants;
the same rates appear on modal.com's Azure Functions pricing guide of 2025-05-22). The live price list is the Azure
Functions pricing page, which renders its prices in the browser; check it for your region and currency.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

PRICE_PER_GB_SECOND = 0.000026  # USD, on-demand execution time
PRICE_PER_MILLION_EXECUTIONS = 0.40  # USD, on-demand executions
INSTANCE_MEMORY_MB = (512, 2048, 4096)  # the Flex Consumption instance sizes
MINIMUM_PERIOD = 1.0  # seconds
ROUNDING = 0.1  # seconds


@dataclass(frozen=True)
class Interval:
    """One invocation: start and end, in seconds on any common clock."""

    start: float
    end: float


def billable(seconds: float) -> float:
    """One activity period as billed: at least 1 s, then rounded up to the next 100 ms."""
    return max(MINIMUM_PERIOD, math.ceil(round(seconds / ROUNDING, 6)) * ROUNDING)


def activity_periods(invocations: Iterable[Interval]) -> list[float]:
    """Lengths of the periods in which at least one invocation ran (overlapping invocations merged)."""
    periods: list[float] = []
    start = end = None
    for interval in sorted(invocations, key=lambda i: i.start):
        if end is None or interval.start > end:
            if end is not None:
                periods.append(end - start)
            start, end = interval.start, interval.end
        else:
            end = max(end, interval.end)
    if end is not None:
        periods.append(end - start)
    return periods


@dataclass(frozen=True)
class Cost:
    """USD per million commands at one instance size, for invocations that overlapped as measured, and for the
    same invocations arriving one at a time (each its own activity period)."""

    instance_memory_mb: int
    as_measured: float
    one_at_a_time: float


def cost_per_million_commands(invocations: list[Interval], commands: int, instance_memory_mb: int) -> Cost:
    """The on-demand cost of ``invocations`` (one instance) spread over ``commands``, per million commands."""
    gigabytes = instance_memory_mb / 1024
    executions = len(invocations) * PRICE_PER_MILLION_EXECUTIONS / 1e6

    def per_million(billed_seconds: float) -> float:
        return (billed_seconds * gigabytes * PRICE_PER_GB_SECOND + executions) / commands * 1e6

    as_measured = sum(billable(p) for p in activity_periods(invocations))
    one_at_a_time = sum(billable(i.end - i.start) for i in invocations)
    return Cost(instance_memory_mb, per_million(as_measured), per_million(one_at_a_time))
