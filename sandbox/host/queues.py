"""Queue triggers: one poller per function, which receives messages, runs the function, keeps the message's lease
while it runs and settles it (deleted, visible again after ``visibilityTimeout``, or moved to ``<queue>-poison``)."""

from __future__ import annotations

import base64
import binascii
import contextlib
import logging
import math
import threading
import time
import uuid
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from azure.core.exceptions import AzureError, ResourceExistsError, ResourceNotFoundError
from azure.functions.queue import QueueMessage
from azure.storage.queue import LinearRetry, QueueClient

from sandbox.host.functions import QueueFunction
from sandbox.host.invocation import Context, call

if TYPE_CHECKING:
    from sandbox.host.local_host import LocalHost

log = logging.getLogger("sandbox.host")  # one logger for the whole local host


@dataclass
class _Lease:
    message_id: str
    pop_receipt: str
    renew_at: float
    done: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)


class QueuePoller:
    """Polls one queue for one function, runs invocations in a small pool, settles each message."""

    def __init__(self, host: LocalHost, function: QueueFunction, conn_str: str) -> None:
        self.host = host
        self.function = function
        self.settings = host.settings
        retry = LinearRetry(backoff=0.5, retry_total=3, random_jitter_range=0.2)
        self.client = QueueClient.from_connection_string(conn_str, function.queue_name, retry_policy=retry)
        self.poison_client = QueueClient.from_connection_string(
            conn_str, function.poison_queue_name, retry_policy=retry
        )
        self.max_in_flight = self.settings.batch_size + self.settings.new_batch_threshold
        self.pool = ThreadPoolExecutor(
            max_workers=self.max_in_flight, thread_name_prefix=f"{host.name}-queue-{function.name}"
        )
        self.leases: dict[str, _Lease] = {}
        self.in_flight = 0
        self.changed = threading.Condition()
        self.stop_polling = threading.Event()
        self.stop_leases = threading.Event()
        self.queue_ready = False
        self.poison_ready = False
        self.poll_thread = threading.Thread(target=self._poll, name=f"poll-{function.name}", daemon=True)
        self.lease_thread = threading.Thread(target=self._keep_leases, name=f"lease-{function.name}", daemon=True)

    def start(self) -> None:
        self.poll_thread.start()
        self.lease_thread.start()

    def stop(self) -> None:
        self.stop_polling.set()
        with self.changed:
            self.changed.notify_all()
        self.poll_thread.join()
        self.pool.shutdown(wait=True)  # in-flight invocations finish and settle their messages
        self.stop_leases.set()
        self.lease_thread.join()
        self.client.close()
        self.poison_client.close()

    # polling

    def _poll(self) -> None:
        interval = self.settings.min_polling_interval
        while not self.stop_polling.is_set():
            with self.changed:
                while self.in_flight > self.settings.new_batch_threshold and not self.stop_polling.is_set():
                    self.changed.wait(1.0)
            if self.stop_polling.is_set():
                return
            try:
                self._ensure_queue()
                count = min(self.settings.batch_size, self.max_in_flight - self.in_flight)
                messages = list(
                    self.client.receive_messages(
                        messages_per_page=count, max_messages=count, visibility_timeout=self.host.lease_seconds
                    )
                )
            except AzureError as exc:
                if isinstance(exc, ResourceNotFoundError):
                    self.queue_ready = False  # deleted under us: create it again on the next poll
                log.warning("queue %s: polling failed: %s", self.function.queue_name, exc)
                self.stop_polling.wait(self.settings.max_polling_interval)
                continue
            if messages:
                interval = self.settings.min_polling_interval
                for message in messages:
                    self._dispatch(message)
                continue
            self.stop_polling.wait(interval)
            interval = min(interval * 2, self.settings.max_polling_interval)

    def _ensure_queue(self) -> None:
        if not self.queue_ready:
            with contextlib.suppress(ResourceExistsError):
                self.client.create_queue()
            self.queue_ready = True

    def _dispatch(self, message: Any) -> None:
        lease = _Lease(message.id, message.pop_receipt, time.monotonic() + self.host.lease_seconds / 2)
        with self.changed:
            self.in_flight += 1
            self.leases[message.id] = lease
        self.pool.submit(self._run, message, lease)

    # invocation

    def _run(self, message: Any, lease: _Lease) -> None:
        fn = self.function
        invocation_id = str(uuid.uuid4())
        started = time.monotonic()
        try:
            error: BaseException | None = None
            try:
                body = self._decode(message.content)
                self._invoke(message, body, invocation_id)
            except Exception as exc:
                error = exc
            elapsed_ms = (time.monotonic() - started) * 1000
            with lease.lock:
                lease.done = True
            if error is None:
                log.log(
                    self.host.invocation_log_level,
                    "Executed '%s' (Succeeded, Id=%s, message %s, dequeue count %s, %.0f ms)",
                    fn.name,
                    invocation_id,
                    message.id,
                    message.dequeue_count,
                    elapsed_ms,
                )
                self.host._count(fn.name, "succeeded")
                self._delete(lease)
            else:
                log.error(
                    "Executed '%s' (Failed, Id=%s, message %s, dequeue count %s, %.0f ms): %s",
                    fn.name,
                    invocation_id,
                    message.id,
                    message.dequeue_count,
                    elapsed_ms,
                    error,
                    exc_info=error,
                )
                self.host._count(fn.name, "failed")
                self._settle_failure(message, lease)
        except Exception:
            log.exception("queue %s: settling message %s failed", fn.queue_name, message.id)
        finally:
            with self.changed:
                self.in_flight -= 1
                self.leases.pop(message.id, None)
                self.changed.notify_all()

    def _decode(self, content: Any) -> bytes:
        if content is None:
            return b""
        raw = content if isinstance(content, bytes) else str(content).encode("utf-8")
        if self.settings.message_encoding == "none":
            return raw
        try:
            return base64.b64decode(b"".join(raw.split()), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ValueError(
                "the message is not valid base64 (host.json extensions.queues.messageEncoding is base64); "
                "send base64 content or set messageEncoding to none"
            ) from exc

    def _invoke(self, message: Any, body: bytes, invocation_id: str) -> None:
        fn = self.function
        value: Any
        if fn.body_type == "bytes":
            value = body
        elif fn.body_type == "str":
            value = body.decode("utf-8")
        else:
            value = QueueMessage(
                id=message.id,
                body=body,
                dequeue_count=message.dequeue_count,
                expiration_time=message.expires_on,
                insertion_time=message.inserted_on,
                time_next_visible=message.next_visible_on,
                pop_receipt=message.pop_receipt,
            )
        kwargs: dict[str, Any] = {fn.binding_name: value}
        if fn.wants_context:
            kwargs["context"] = Context(invocation_id, fn.name, str(Path.cwd()))
        log.log(
            self.host.invocation_log_level,
            "Executing '%s' (Reason='New queue message detected on '%s'.', Id=%s)",
            fn.name,
            fn.queue_name,
            invocation_id,
        )
        call(fn.user_function, kwargs)

    def _delete(self, lease: _Lease) -> None:
        try:
            self.client.delete_message(lease.message_id, pop_receipt=lease.pop_receipt)
        except ResourceNotFoundError:
            log.warning("queue %s: message %s was already gone", self.function.queue_name, lease.message_id)

    def _settle_failure(self, message: Any, lease: _Lease) -> None:
        fn = self.function
        dequeue_count = message.dequeue_count or 0
        if dequeue_count >= self.settings.max_dequeue_count:
            if not self.poison_ready:
                with contextlib.suppress(ResourceExistsError):
                    self.poison_client.create_queue()
                self.poison_ready = True
            self.poison_client.send_message(message.content)
            log.warning(
                "Message %s has reached MaxDequeueCount of %s: moving it to queue '%s'",
                message.id,
                self.settings.max_dequeue_count,
                fn.poison_queue_name,
            )
            self.host._count(fn.name, "poisoned")
            self._delete(lease)
            return
        visibility = math.ceil(self.settings.visibility_timeout)
        try:
            self.client.update_message(lease.message_id, pop_receipt=lease.pop_receipt, visibility_timeout=visibility)
        except ResourceNotFoundError:
            log.warning("queue %s: message %s was already gone", fn.queue_name, lease.message_id)
            return
        log.info("queue %s: message %s will be visible again in %s s", fn.queue_name, message.id, visibility)

    # leases

    def _keep_leases(self) -> None:
        tick = min(1.0, self.host.lease_seconds / 4)
        while not self.stop_leases.wait(tick):
            with self.changed:
                leases = list(self.leases.values())
            now = time.monotonic()
            for lease in leases:
                if lease.renew_at > now:
                    continue
                with lease.lock:
                    if lease.done:
                        continue
                    try:
                        updated = self.client.update_message(
                            lease.message_id, pop_receipt=lease.pop_receipt, visibility_timeout=self.host.lease_seconds
                        )
                    except AzureError as exc:
                        log.warning(
                            "queue %s: renewing lease of %s failed: %s", self.function.queue_name, lease.message_id, exc
                        )
                        lease.renew_at = now + tick
                        continue
                    lease.pop_receipt = updated.pop_receipt
                    lease.renew_at = now + self.host.lease_seconds / 2
                    log.debug("queue %s: renewed lease of %s", self.function.queue_name, lease.message_id)


def queue_connection_string(function: QueueFunction, environ: Mapping[str, str]) -> str:
    """The connection string of a queue trigger's storage; ValueError, saying where to set it, when unset."""
    for name in (function.connection, f"AzureWebJobs{function.connection}"):
        value = environ.get(name)
        if value:
            return value
    raise ValueError(
        f"function {function.name}: app setting {function.connection!r} (the queue trigger's connection) is not set; "
        "put a storage connection string in it (local.settings.json Values or the environment)"
    )
