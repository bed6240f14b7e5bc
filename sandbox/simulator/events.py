"""Event deliveries: what the platform POSTs to the callback of every active webhook subscribed to an event.

The body is ``{"content", "eventType", "enqueuedDateTime" (like "11/3/2023 8:07:01 PM", UTC), "iTwinId",
"messageId", "webhookId"}`` and the ``Signature`` header is ``sha256=<hex HMAC-SHA256 of the body>`` keyed with the
webhook's secret, computed when each attempt is sent. An answer other than 2xx, or none within `timeout` seconds
(the platform's "about five seconds"), is a failed delivery: it is resent with the same body and ``messageId`` after
each of `resend_delays` in turn, then given up. A webhook deleted or deactivated meanwhile gets no more attempts.
The real resend schedule is not published; these delays are the simulator's, and tests shorten them.
"""

from __future__ import annotations

import hashlib
import heapq
import hmac
import itertools
import json
import os
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import requests

from .state import World

DEFAULT_TIMEOUT = 5.0
DEFAULT_RESEND_DELAYS = (5.0, 30.0, 120.0)
USER_AGENT = "iTwinPlatformSimulator-Webhooks/1.0"


def signature(body: bytes, secret: str) -> str:
    """The ``Signature`` header of a delivery (computed here, not with the app's code it is tested against)."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def enqueued_text(moment: datetime) -> str:
    """A time written as the platform writes ``enqueuedDateTime``: ``11/3/2023 8:07:01 PM``."""
    hour = moment.hour % 12 or 12
    half = "AM" if moment.hour < 12 else "PM"
    return f"{moment.month}/{moment.day}/{moment.year} {hour}:{moment.minute:02}:{moment.second:02} {half}"


@dataclass(frozen=True)
class Event:
    """Something that happened on the platform, to be delivered to the webhooks subscribed to its type."""

    event_type: str
    content: dict[str, Any]
    itwin_id: str
    message_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    enqueued: datetime = field(default_factory=lambda: datetime.now(UTC))

    def body(self, webhook_id: str) -> bytes:
        return json.dumps(
            {
                "content": self.content,
                "eventType": self.event_type,
                "enqueuedDateTime": enqueued_text(self.enqueued),
                "iTwinId": self.itwin_id,
                "messageId": self.message_id,
                "webhookId": webhook_id,
            }
        ).encode()


@dataclass(frozen=True)
class DeliveryAttempt:
    """One POST to a callback: its answer's status (None: no answer) or what went wrong."""

    webhook_id: str
    message_id: str
    event_type: str
    attempt: int
    status: int | None
    error: str | None
    started: float
    seconds: float

    @property
    def accepted(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


@dataclass(order=True)
class _Pending:
    due: float
    order: int
    webhook_id: str = field(compare=False)
    event: Event = field(compare=False)
    attempt: int = field(compare=False, default=1)


class Deliverer:
    """Delivers events on a few background threads; `publish` returns at once."""

    def __init__(
        self,
        world: World,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        resend_delays: tuple[float, ...] = DEFAULT_RESEND_DELAYS,
        workers: int = 4,
    ) -> None:
        self.world = world
        self.timeout = timeout
        self.resend_delays = tuple(resend_delays)
        self._workers = workers
        self._pending: list[_Pending] = []
        self._order = itertools.count()
        self._in_flight = 0
        self._attempts: list[DeliveryAttempt] = []
        self._condition = threading.Condition()
        self._stopping = False
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        with self._condition:
            self._stopping = False
        self._threads = [
            threading.Thread(target=self._run, name=f"webhook-delivery-{n}", daemon=True) for n in range(self._workers)
        ]
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        with self._condition:
            self._stopping = True
            self._condition.notify_all()
        for thread in self._threads:
            thread.join(timeout=self.timeout + 1)
        self._threads = []

    def publish(self, event: Event) -> int:
        """Schedule ``event`` for every active webhook subscribed to it; returns how many."""
        with self.world.lock:
            targets = [
                w["id"]
                for w in self.world.webhooks.values()
                if w["active"]
                and event.event_type in w["eventTypes"]
                and (w["scope"] == "Account" or w["scopeId"] == event.itwin_id)
            ]
        with self._condition:
            for webhook_id in targets:
                heapq.heappush(self._pending, _Pending(time.monotonic(), next(self._order), webhook_id, event))
            self._condition.notify_all()
        return len(targets)

    @property
    def attempts(self) -> list[DeliveryAttempt]:
        with self._condition:
            return list(self._attempts)

    def wait(self, timeout: float) -> bool:
        """Wait until nothing is pending or being sent; False when `timeout` passed first."""
        deadline = time.monotonic() + timeout
        with self._condition:
            while self._pending or self._in_flight:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._condition.wait(remaining)
        return True

    def _next(self) -> _Pending | None:
        with self._condition:
            while not self._stopping:
                now = time.monotonic()
                if self._pending and self._pending[0].due <= now:
                    self._in_flight += 1
                    return heapq.heappop(self._pending)
                self._condition.wait(self._pending[0].due - now if self._pending else None)
            return None

    def _run(self) -> None:
        session = requests.Session()
        session.trust_env = False
        session.verify = os.environ.get("REQUESTS_CA_BUNDLE") or True
        while (item := self._next()) is not None:
            try:
                self._send(session, item)
            finally:
                with self._condition:
                    self._in_flight -= 1
                    self._condition.notify_all()
        session.close()

    def _send(self, session: requests.Session, item: _Pending) -> None:
        with self.world.lock:
            webhook = self.world.webhooks.get(item.webhook_id)
            target = (webhook["callbackUrl"], webhook["secret"]) if webhook and webhook["active"] else None
        started = time.monotonic()
        status, error = None, None
        if target is None:
            error = "the webhook was deleted or deactivated"
        else:
            url, secret = target
            body = item.event.body(item.webhook_id)
            headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT}
            headers["Signature"] = signature(body, secret)
            try:
                status = session.post(url, data=body, headers=headers, timeout=self.timeout).status_code
            except requests.RequestException as exc:
                error = f"no answer: {type(exc).__name__}"
        attempt = DeliveryAttempt(
            item.webhook_id,
            item.event.message_id,
            item.event.event_type,
            item.attempt,
            status,
            error,
            started,
            time.monotonic() - started,
        )
        with self._condition:
            self._attempts.append(attempt)
            resend = target is not None and not attempt.accepted and item.attempt <= len(self.resend_delays)
            if resend:
                due = time.monotonic() + self.resend_delays[item.attempt - 1]
                heapq.heappush(
                    self._pending, _Pending(due, next(self._order), item.webhook_id, item.event, item.attempt + 1)
                )
                self._condition.notify_all()
