"""The command queue and its poison queue, reached through the same ``AzureWebJobsStorage`` setting as the host
(either form, see `shared.storage`). Messages are plain UTF-8 JSON, matching ``messageEncoding: none`` in host.json.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from typing import Any, Protocol

from shared.settings import COMMAND_QUEUE, POISON_QUEUE
from shared.storage import connection_string, endpoint_and_credential

# The Storage SDK logs every request and response at INFO; our own log lines say what happened to each message.
logging.getLogger("azure.core.pipeline.policies.http_logging_policy").setLevel(logging.WARNING)

MAX_VISIBILITY_DELAY = 7 * 24 * 3600  # the queue service's limit
# A message's time-to-live defaults to 7 days: a command rescheduled for 7 days would expire as it became visible,
# and a dead letter would vanish a week later. Nothing we send expires; attempts and ITWIN_MAX_COMMAND_AGE bound
# commands, and an operator removes dead letters (python -m ops poison purge).
NEVER_EXPIRES = -1
# A batch is sent hidden for this long and shown once all of it is on the queue. Should showing fail, the
# messages appear by themselves when this runs out: late, never lost.
BATCH_HIDDEN_SECONDS = 30

log = logging.getLogger(__name__)


class QueueSender(Protocol):
    """The methods of ``azure.storage.queue.QueueClient`` this module needs."""

    def send_message(self, content: Any, *, visibility_timeout: int | None = None, **kwargs: Any) -> Any: ...

    def update_message(self, message: Any, pop_receipt: str, *, visibility_timeout: int, **kwargs: Any) -> Any: ...

    def delete_message(self, message: Any, pop_receipt: str, **kwargs: Any) -> None: ...


class EnqueueFailed(Exception):
    """Sending a batch failed at message ``failed``, whose send got no clear answer (it may be on the queue).
    ``enqueued`` holds the indexes of earlier messages that could not be taken back and will be processed;
    every other message of the batch is not on the queue."""

    def __init__(self, cause: Exception, failed: int, enqueued: list[int]) -> None:
        super().__init__(f"the queue failed ({type(cause).__name__}) on message {failed}")
        self.failed = failed
        self.enqueued = enqueued


def queue_service(environ: Mapping[str, str], **client_options: Any) -> Any:
    """A ``QueueServiceClient`` for ``AzureWebJobsStorage`` in either form; raises `SettingsError` if unset.
    ``client_options`` go to the client (the operations tool bounds its retries and timeouts with them)."""
    from azure.storage.queue import QueueServiceClient  # imported on first use: keeps cold start short

    text = connection_string(environ)
    if text:
        return QueueServiceClient.from_connection_string(text, **client_options)
    url, credential = endpoint_and_credential(environ, "queue")
    return QueueServiceClient(account_url=url, credential=credential, **client_options)


class CommandQueue:
    """Sends commands (now or after a delay) and poison envelopes."""

    def __init__(self, commands: QueueSender, poison: QueueSender) -> None:
        self._commands = commands
        self._poison = poison

    @classmethod
    def from_environment(cls, environ: Mapping[str, str]) -> CommandQueue:
        service = queue_service(environ)
        return cls(service.get_queue_client(COMMAND_QUEUE), service.get_queue_client(POISON_QUEUE))

    def send(self, message: Mapping[str, Any], delay: float = 0.0) -> None:
        """Enqueue ``message``; it becomes visible no sooner than ``delay`` seconds from now."""
        seconds = min(MAX_VISIBILITY_DELAY, math.ceil(delay)) if delay > 0 else None
        self._commands.send_message(_text(message), visibility_timeout=seconds, time_to_live=NEVER_EXPIRES)

    def send_all(self, messages: list[Mapping[str, Any]]) -> None:
        """Enqueue every message or none; raises `EnqueueFailed` naming any that could not be taken back.

        A batch goes on the queue hidden, and is shown only once all of it is there, so no worker starts on part
        of a batch that then fails; on a failure the hidden messages are deleted again.
        """
        hidden = BATCH_HIDDEN_SECONDS if len(messages) > 1 else None
        sent = []
        try:
            for message in messages:
                sent.append(
                    self._commands.send_message(_text(message), visibility_timeout=hidden, time_to_live=NEVER_EXPIRES)
                )
        except Exception as error:
            raise EnqueueFailed(error, len(sent), self._take_back(sent)) from error
        if hidden is None:
            return
        for receipt in sent:
            try:
                self._commands.update_message(receipt.id, receipt.pop_receipt, visibility_timeout=0)
            except Exception as error:  # it shows by itself when the hidden time runs out
                log.warning("message %s shows in %d s instead of now: %s", receipt.id, BATCH_HIDDEN_SECONDS, error)

    def _take_back(self, sent: list[Any]) -> list[int]:
        """Delete the hidden messages of a failed batch; the indexes of those that stayed on the queue."""
        stayed = []
        for index, receipt in enumerate(sent):
            try:
                self._commands.delete_message(receipt.id, receipt.pop_receipt)
            except Exception:
                stayed.append(index)
        return stayed

    def dead_letter(self, envelope: str) -> None:
        """Put a poison envelope (its JSON text, see `shared.poison`) on the poison queue."""
        self._poison.send_message(envelope, time_to_live=NEVER_EXPIRES)


def _text(message: Mapping[str, Any]) -> str:
    return json.dumps(message, separators=(",", ":"))
