"""The command queue and its poison queue, reached through the same ``AzureWebJobsStorage`` setting as the host.

Both forms of that setting work: a connection string (Azurite locally, or a storage key), and the identity-based
form Azure uses with a managed identity (``AzureWebJobsStorage__queueServiceUri`` or ``__accountName``, with
``__credential=managedidentity`` and ``__clientId`` for a user-assigned identity). Messages are plain UTF-8 JSON,
matching ``messageEncoding: none`` in host.json.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from typing import Any, Protocol

from shared.settings import COMMAND_QUEUE, POISON_QUEUE, STORAGE_CONNECTION, SettingsError

# The Storage SDK logs every request and response at INFO; our own log lines say what happened to each message.
logging.getLogger("azure.core.pipeline.policies.http_logging_policy").setLevel(logging.WARNING)

MAX_VISIBILITY_DELAY = 7 * 24 * 3600  # the queue service's limit


class QueueSender(Protocol):
    """The one method of ``azure.storage.queue.QueueClient`` this module needs."""

    def send_message(self, content: Any, *, visibility_timeout: int | None = None, **kwargs: Any) -> Any: ...


def queue_service(environ: Mapping[str, str]) -> Any:
    """A ``QueueServiceClient`` for ``AzureWebJobsStorage`` in either form; raises `SettingsError` if unset."""
    from azure.storage.queue import QueueServiceClient  # imported on first use: keeps cold start short

    connection_string = environ.get(STORAGE_CONNECTION, "").strip()
    if connection_string:
        return QueueServiceClient.from_connection_string(connection_string)
    prefix = STORAGE_CONNECTION + "__"
    options = {key[len(prefix) :].lower(): value.strip() for key, value in environ.items() if key.startswith(prefix)}
    url = options.get("queueserviceuri")
    if not url and options.get("accountname"):
        url = f"https://{options['accountname']}.queue.core.windows.net"
    if not url:
        raise SettingsError(
            f"{STORAGE_CONNECTION} is not set: give a connection string, or {prefix}queueServiceUri "
            f"(or {prefix}accountName) for a managed identity"
        )
    from azure.identity import DefaultAzureCredential, ManagedIdentityCredential

    if options.get("credential", "").lower() == "managedidentity":
        credential = ManagedIdentityCredential(client_id=options.get("clientid") or None)
    else:
        credential = DefaultAzureCredential()
    return QueueServiceClient(account_url=url, credential=credential)


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
        self._commands.send_message(json.dumps(message, separators=(",", ":")), visibility_timeout=seconds)

    def dead_letter(self, envelope: str) -> None:
        """Put a poison envelope (its JSON text, see `shared.poison`) on the poison queue."""
        self._poison.send_message(envelope)
