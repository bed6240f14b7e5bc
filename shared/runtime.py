"""The process-wide objects the functions share, built on first use (never at import) and then reused.

The worker's modules (client, MSAL tokens, telemetry) are imported when the worker is first built, so an instance
that only serves HTTP never loads them and a cold start compiles less.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from shared.queues import CommandQueue
from shared.replays import RecentDeliveries
from shared.retry import RetryPolicy
from shared.rules import Rule, load_rules
from shared.settings import Settings

if TYPE_CHECKING:
    from shared.ledger import Ledger
    from shared.pacing import Pacer
    from shared.schedule import SharedPacer
    from shared.worker import Worker

T = TypeVar("T")
_lock = threading.RLock()

# Each invocation stays short: a wait longer than this budget goes back to the queue as a visibility delay.
WORKER_POLICY = RetryPolicy(max_attempts=3, budget=1.0)


def _once(build: Callable[[], T]) -> Callable[[], T]:
    """Build on the first call, under a lock, so concurrent invocations share one instance."""
    built: list[T] = []

    def get() -> T:
        if not built:
            with _lock:
                if not built:
                    built.append(build())
        return built[0]

    get.reset = built.clear  # type: ignore[attr-defined]
    return get


@_once
def settings() -> Settings:
    return Settings.from_env()


@_once
def command_queue() -> CommandQueue:
    return CommandQueue.from_environment(os.environ)


@_once
def event_rules() -> tuple[Rule, ...]:
    return load_rules(os.environ.get("ITWIN_EVENT_RULES") or None)


@_once
def recent_deliveries() -> RecentDeliveries:
    return RecentDeliveries()


HOST_JSON = Path(__file__).resolve().parent.parent / "host.json"


@_once
def max_dequeue_count() -> int:
    """Deliveries of a queue message before the host moves it to the poison queue: the app setting that overrides
    host.json, else host.json's ``extensions.queues.maxDequeueCount``, else the host's default, 5."""
    text = os.environ.get("AzureFunctionsJobHost__extensions__queues__maxDequeueCount", "").strip()  # noqa: SIM112
    if not text:
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            text = str(json.loads(HOST_JSON.read_text(encoding="utf-8"))["extensions"]["queues"]["maxDequeueCount"])
    return int(text) if text.isdigit() and int(text) > 0 else 5


@_once
def ledger() -> Ledger:
    from shared.ledger import Ledger

    return Ledger.from_environment(os.environ)


@_once
def worker() -> Worker:
    from shared.client import ITwinClient
    from shared.resources import ITwinApi
    from shared.telemetry import default_telemetry
    from shared.worker import Worker

    client = ITwinClient(settings(), policy=WORKER_POLICY, pacer=pacer())
    return Worker(
        ITwinApi(client),
        command_queue(),
        default_telemetry(),
        max_attempts=settings().max_attempts,
        max_age=settings().max_command_age,
        ledger=ledger(),
    )


@_once
def pacer() -> Pacer | SharedPacer:
    """The process's pacer: the shared schedule in the ledger's table, with its own table client (short timeouts,
    no retries: see `shared.schedule`), when ``ITWIN_SHARED_PACING`` is on; else the process's own."""
    from shared.pacing import Pacer

    if not settings().shared_pacing:
        return Pacer(settings().rate_limits)
    from shared.ledger import Ledger
    from shared.schedule import SharedPacer, table_client_options
    from shared.telemetry import default_telemetry

    table = Ledger.from_environment(os.environ, **table_client_options()).table
    return SharedPacer(table, settings().rate_limits, settings().tier_limits, telemetry=default_telemetry())


def reset() -> None:
    """Forget every built object (tests and the local host call this after changing the environment)."""
    for get in (settings, command_queue, event_rules, recent_deliveries, max_dequeue_count, ledger, pacer, worker):
        get.reset()  # type: ignore[attr-defined]
