"""What the HTTP functions answer, as pure functions: the blueprints only translate requests and replies."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from shared.commands import Command, InvalidCommand, decode_json, parse_batch
from shared.errors import ErrorDetail
from shared.queues import CommandQueue
from shared.replays import RecentDeliveries
from shared.rules import Rule, commands_for, parse_event
from shared.settings import SettingsError, missing_required
from shared.signature import WebhookSecrets, verify

log = logging.getLogger(__name__)

MAX_REQUEST_BYTES = 1024 * 1024


@dataclass(frozen=True)
class Reply:
    """An HTTP answer: status and JSON body."""

    status: int
    body: Mapping[str, Any] = field(default_factory=dict)


def error_reply(status: int, code: str, message: str, details: tuple[ErrorDetail, ...] = ()) -> Reply:
    """An answer in the iTwin error shape ``{"error": {code, message, details: [{code, message, target}]}}``."""
    return Reply(status, {"error": {"code": code, "message": message, "details": [d.to_dict() for d in details]}})


TOO_LARGE = error_reply(413, "RequestTooLarge", f"The body is over {MAX_REQUEST_BYTES} bytes (1 MiB).")


def _too_large(body: bytes, declared_length: str | None) -> bool:
    digits = declared_length or ""
    declared = int(digits) if digits.isascii() and digits.isdigit() else 0
    return max(declared, len(body)) > MAX_REQUEST_BYTES


def _enqueue(queue: CommandQueue, commands: list[Command]) -> None:
    """Send each command, carrying the current trace unless the command names its own."""
    from shared.telemetry import current_traceparent  # OpenTelemetry's propagators: kept out of cold start

    traceparent = current_traceparent()
    for command in commands:
        queue.send(replace(command, traceparent=command.traceparent or traceparent).to_message())


def _misconfigured(error: SettingsError) -> Reply:
    log.error("cannot serve the request: %s", error)
    return error_reply(503, "ServiceMisconfigured", f"{error}. See GET /api/health.")


def accept_commands(body: bytes, declared_length: str | None, queue: Callable[[], CommandQueue]) -> Reply:
    """``POST /api/commands``: validate one command or up to 100, then enqueue all of them or none."""
    if _too_large(body, declared_length):
        return TOO_LARGE
    try:
        commands = parse_batch(decode_json(body))
        _enqueue(queue(), commands)
    except InvalidCommand as invalid:
        return error_reply(400, invalid.code, invalid.message, invalid.details)
    except SettingsError as error:
        return _misconfigured(error)
    return Reply(202, {"accepted": len(commands)})


def receive_webhook(
    body: bytes,
    signature: str | None,
    secret: str | WebhookSecrets | None,
    rules: Callable[[], tuple[Rule, ...]],
    environ: Mapping[str, str],
    queue: Callable[[], CommandQueue],
    deliveries: RecentDeliveries | None = None,
) -> Reply:
    """``POST /api/webhooks/itwin``: verify the signature, map the event to commands by rules, enqueue them.

    ``secret`` is the webhook secret, or `WebhookSecrets` (the current and, during a change-over, the previous one).

    With ``deliveries``, a ``messageId`` already accepted by this process is answered 202 and enqueues nothing.
    """
    if _too_large(body, None):
        return TOO_LARGE
    if not verify(body, signature, secret):
        reason = "no webhook secret is configured" if not secret else "the Signature header does not match the body"
        log.warning("webhook delivery refused: %s", reason)
        return error_reply(401, "InvalidSignature", f"Delivery refused: {reason}.")
    try:
        event = parse_event(body)
        commands = commands_for(event, rules(), environ)
    except InvalidCommand as invalid:
        log.warning("webhook event rejected: %s %s", invalid.message, [d.to_dict() for d in invalid.details])
        return error_reply(400, invalid.code, invalid.message, invalid.details)
    except SettingsError as error:
        return _misconfigured(error)
    tracked = deliveries is not None and event.message_id is not None
    if tracked and not deliveries.first_time(event.message_id):
        log.info("webhook %s messageId=%s: a repeat, nothing enqueued", event.event_type, event.message_id)
        return Reply(202, {"accepted": 0, "eventType": event.event_type, "duplicate": True})
    try:
        if commands:
            _enqueue(queue(), commands)
    except Exception as error:
        if tracked:
            deliveries.forget(event.message_id)  # the platform's resend must be accepted
        if isinstance(error, SettingsError):
            return _misconfigured(error)
        raise
    log.info("webhook %s messageId=%s: %d command(s) enqueued", event.event_type, event.message_id, len(commands))
    return Reply(202, {"accepted": len(commands), "eventType": event.event_type})


def health(environ: Mapping[str, str], rules: Callable[[], tuple[Rule, ...]]) -> Reply:
    """``GET /api/health``: 200 when the required settings are present and valid, else 503 naming them."""
    missing = missing_required(environ)
    invalid = []
    try:
        rules()
    except SettingsError:
        invalid.append("ITWIN_EVENT_RULES")
    if missing or invalid:
        return Reply(503, {"status": "unhealthy", "missing": missing, "invalid": invalid})
    return Reply(200, {"status": "ok"})
