"""Helpers the reliability tests share: sizes, polling, the app's environment, recording queues, the worker."""

from __future__ import annotations

import json
import os
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from app_settings import settings_for
from azure.storage.queue import QueueClient

from sandbox.itwin_platform import Simulator
from shared import runtime
from shared.client import ITwinClient
from shared.queues import CommandQueue
from shared.resources import ITwinApi
from shared.retry import RedeliveryBackoff
from shared.settings import STORAGE_CONNECTION
from shared.telemetry import Telemetry
from shared.worker import Worker

REPO_ROOT = Path(__file__).resolve().parents[2]

# `SOAK=1` runs the larger sizes (`make soak`); `make test` runs the CI sizes.
SOAK = os.environ.get("SOAK", "").strip().lower() in ("1", "true", "yes")


def size(ci: int, soak: int) -> int:
    """The CI size, or the soak size under ``SOAK=1``."""
    return soak if SOAK else ci


def wait_until(
    condition: Callable[[], Any],
    timeout: float,
    what: str,
    interval: float = 0.05,
    describe: Callable[[], str] | None = None,
) -> Any:
    """Poll ``condition`` until it returns something truthy; fail naming ``what`` after ``timeout`` seconds, with
    what ``describe`` says of the state then."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            state = f"\n{describe()}" if describe else ""
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}{state}")
        time.sleep(interval)


def busy_invocations(prefix: str = "") -> str:
    """Where each thread of a queue-triggered invocation (named ``<host>-queue-...``) stands now: the innermost
    frames of its stack, for a run that does not settle."""
    names = {t.ident: t.name for t in threading.enumerate()}
    lines = []
    for ident, frame in sys._current_frames().items():
        name = names.get(ident, "")
        if "-queue-" in name and name.startswith(prefix):
            stack = "".join(traceback.format_stack(frame, limit=6))
            if "work_queue.get" not in stack:  # an idle pool thread
                lines.append(f"{name}:\n{stack}")
    return "\n".join(lines) or "no invocation thread"


def new_id() -> str:
    return str(uuid.uuid4())


def fast_host_json(tmp_path: Path) -> Path:
    """The repository's host.json, polling an empty queue at most every 250 ms instead of every 2 s."""
    doc = json.loads((REPO_ROOT / "host.json").read_text(encoding="utf-8"))
    doc["extensions"]["queues"]["maxPollingInterval"] = "00:00:00.250"
    path = tmp_path / "host.json"
    path.write_text(json.dumps(doc), encoding="utf-8")
    return path


def read_all(queue: QueueClient) -> list[Any]:
    """Every visible message of ``queue`` as decoded JSON (text when not JSON), hidden for five minutes."""
    found = []
    for message in queue.receive_messages(messages_per_page=32, visibility_timeout=300):
        try:
            found.append(json.loads(message.content))
        except ValueError:
            found.append(message.content)
    return found


def queue_length(queue: QueueClient) -> int:
    return queue.get_queue_properties().approximate_message_count


def app_environment(simulator: Simulator, connection_string: str, **extra: str) -> dict[str, str]:
    """Every setting the app needs to run against ``simulator`` and an Azurite queue service."""
    return {**settings_for(simulator), STORAGE_CONNECTION: connection_string, **extra}


def install_environment(monkeypatch: Any, environ: Mapping[str, str]) -> None:
    """Put ``environ`` into os.environ for this test and make the app's singletons read it afresh."""
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    runtime.reset()


# Redelivery steps from 0.25-0.5 s up to 2-4 s instead of production's 2.5-5 s up to 15-30 min, so the suite's
# rescheduled commands come back within its minutes; the growth itself is the same (tests/unit/test_retry.py).
FAST_REDELIVERY = RedeliveryBackoff(base=0.5, cap=4.0)
# A create the client gave up on has taken effect by then: past the simulator's stall (fault_plan.STALL_SECONDS).
SETTLE_SECONDS = 2.0


def install_worker(
    monkeypatch: Any, telemetry: Telemetry, read_timeout: float | None = None, connect_timeout: float = 3.05
) -> Worker:
    """Build the worker as `shared.runtime.worker` does, but with ``telemetry``, `FAST_REDELIVERY` (and optionally
    a shorter read timeout), and make the app's queue function use it. Everything else (settings, queue, client,
    API, ledger) is real."""
    worker = build_worker(telemetry, "host", read_timeout, connect_timeout)

    def get() -> Worker:
        return worker

    get.reset = lambda: None  # type: ignore[attr-defined] - runtime.reset() calls it
    monkeypatch.setattr(runtime, "worker", get)
    return worker


def install_instances(
    monkeypatch: Any, telemetry: Mapping[str, Telemetry], read_timeout: float | None = None
) -> dict[str, Worker]:
    """One worker per host name, each with its own client (token cache, pacer, connection pool) and ledger owner,
    as separate instances have; the app's queue function uses the one of the `LocalHost` (by ``name``) whose
    thread runs the invocation. Queue and ledger are the shared storage, as in Azure."""
    workers = {name: build_worker(t, name, read_timeout) for name, t in telemetry.items()}

    def get() -> Worker:
        return workers[threading.current_thread().name.split("-queue-", 1)[0]]

    get.reset = lambda: None  # type: ignore[attr-defined]
    monkeypatch.setattr(runtime, "worker", get)
    return workers


def build_worker(
    telemetry: Telemetry, owner: str, read_timeout: float | None = None, connect_timeout: float = 3.05
) -> Worker:
    settings = runtime.settings()
    options: dict[str, Any] = {"telemetry": telemetry, "policy": runtime.WORKER_POLICY}
    if read_timeout is not None:
        options["timeout"] = (connect_timeout, read_timeout)
    return Worker(
        ITwinApi(ITwinClient(settings, **options)),
        runtime.command_queue(),
        telemetry,
        max_attempts=settings.max_attempts,
        max_age=settings.max_command_age,
        backoff=FAST_REDELIVERY,
        ledger=runtime.ledger(),
        owner=owner,
        settle=SETTLE_SECONDS,
    )


@dataclass
class RecordingSender:
    """Stands in for an azure-storage-queue ``QueueClient``: keeps what was sent, with its visibility delay."""

    sent: list[tuple[str, int | None]] = field(default_factory=list)

    def send_message(self, content: Any, *, visibility_timeout: int | None = None, **kwargs: Any) -> Any:
        self.sent.append((content, visibility_timeout))
        return SimpleNamespace(id=len(self.sent) - 1, pop_receipt="receipt")

    def update_message(self, message: int, pop_receipt: str, *, visibility_timeout: int, **kwargs: Any) -> None:
        """Showing a hidden batch message: it is recorded as visible now."""
        self.sent[message] = (self.sent[message][0], visibility_timeout or None)

    def delete_message(self, message: int, pop_receipt: str, **kwargs: Any) -> None:
        raise AssertionError("a recorded send never fails, so nothing is taken back")


class RecordingQueue(CommandQueue):
    """The real `CommandQueue` over recording senders: what would have been enqueued or dead-lettered."""

    def __init__(self) -> None:
        self.commands = RecordingSender()
        self.poison = RecordingSender()
        super().__init__(self.commands, self.poison)

    @property
    def messages(self) -> list[dict[str, Any]]:
        return [json.loads(content) for content, _ in self.commands.sent]

    @property
    def envelopes(self) -> list[dict[str, Any]]:
        return [json.loads(content) for content, _ in self.poison.sent]

    def take(self) -> list[str]:
        """Remove and return the command bodies sent so far (to hand them to a worker)."""
        bodies = [content for content, _ in self.commands.sent]
        self.commands.sent.clear()
        return bodies

    @property
    def empty(self) -> bool:
        return not self.commands.sent and not self.poison.sent
