"""What the HTTP functions answer, as pure functions: the blueprints only translate requests and replies."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from shared.commands import IDEMPOTENCY_KEY, Command, InvalidCommand, decode_json, parse_batch
from shared.errors import ErrorDetail
from shared.intake import Accepted, IdempotencyKeyReused, accept
from shared.ledger import Ledger, delivery_ids, split_id
from shared.queues import CommandQueue, EnqueueFailed
from shared.replays import DEFAULT_TTL, RecentDeliveries
from shared.rules import Rule, commands_for, parse_event
from shared.settings import SETTINGS, Settings, SettingsError, missing_required
from shared.signature import WebhookSecrets, verify

if TYPE_CHECKING:
    from shared.telemetry import Telemetry

log = logging.getLogger(__name__)

MAX_REQUEST_BYTES = 1024 * 1024
# A signed delivery stays valid this long: as long as an instance remembers the messageIds it accepted.
MAX_DELIVERY_AGE = timedelta(seconds=DEFAULT_TTL)
CLOCK_SKEW = timedelta(minutes=5)


@dataclass(frozen=True)
class Reply:
    """An HTTP answer: status, JSON body and extra headers."""

    status: int
    body: Mapping[str, Any] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)


def error_reply(status: int, code: str, message: str, details: tuple[ErrorDetail, ...] = ()) -> Reply:
    """An answer in the iTwin error shape ``{"error": {code, message, details: [{code, message, target}]}}``."""
    return Reply(status, {"error": {"code": code, "message": message, "details": [d.to_dict() for d in details]}})


TOO_LARGE = error_reply(413, "RequestTooLarge", f"The body is over {MAX_REQUEST_BYTES} bytes (1 MiB).")


def _too_large(body: bytes, declared_length: str | None) -> bool:
    digits = declared_length or ""
    declared = int(digits) if digits.isascii() and digits.isdigit() else 0
    return max(declared, len(body)) > MAX_REQUEST_BYTES


def _accept(
    commands: list[Command], queue: CommandQueue, ledger: Ledger | None, ids: list[str] | None = None
) -> Accepted:
    """Record and enqueue all the commands or none, each carrying the current trace unless it names its own."""
    from shared.telemetry import current_traceparent  # OpenTelemetry's propagators: kept out of cold start

    traceparent = current_traceparent()
    traced = [replace(c, traceparent=c.traceparent or traceparent) for c in commands]
    return accept(traced, queue, ledger, datetime.now(UTC), ids=ids, retention_days=_retention_days())


def _retention_days() -> int:
    from shared.runtime import settings

    try:
        return settings().ledger_retention_days
    except SettingsError:
        return 7


def _not_enqueued(failure: EnqueueFailed, total: int) -> Reply:
    """503 saying exactly which commands are on the queue, so a caller retries only the others."""
    log.error("enqueue failed: %s; left enqueued: %s", failure, failure.enqueued)
    on_queue = "this command is on the queue: do not send it again."
    details = [ErrorDetail("Enqueued", on_queue, f"[{i}]") for i in failure.enqueued]
    details.append(
        ErrorDetail(
            "MaybeEnqueued",
            "the queue gave no clear answer for this command: it may be on the queue.",
            f"[{failure.failed}]",
        )
    )
    if failure.enqueued:
        message = f"The queue failed; {len(failure.enqueued)} of {total} command(s) were enqueued (see details)."
    else:
        message = "The queue failed; no command was enqueued, unless details say otherwise. Retry later."
    return error_reply(503, "EnqueueFailed", message, tuple(details))


def human_duration(delta: timedelta) -> str:
    """``delta`` as a person says it, in the largest unit that keeps it a whole number of at least 2 (or 1 second):
    ``90 seconds``, ``25 hours``, ``1125 days``."""
    seconds = int(abs(delta.total_seconds()))
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= 2 * size:
            count = seconds // size
            return f"{count} {unit}s"
    return f"{seconds} second" + ("" if seconds == 1 else "s")


def _stale(enqueued_at: datetime, now: datetime) -> str | None:
    """Why a delivery enqueued at ``enqueued_at`` is refused at ``now``, or None when it is fresh enough."""
    if enqueued_at < now - MAX_DELIVERY_AGE:
        return (
            f"enqueuedDateTime is {human_duration(now - enqueued_at)} old; deliveries older than "
            f"{human_duration(MAX_DELIVERY_AGE)} are refused as replays"
        )
    if enqueued_at > now + CLOCK_SKEW:
        return (
            f"enqueuedDateTime {enqueued_at.isoformat()} is {human_duration(enqueued_at - now)} ahead of this "
            f"server's clock (more than {human_duration(CLOCK_SKEW)} is refused); check the clocks"
        )
    return None


def _misconfigured(error: SettingsError) -> Reply:
    log.error("cannot serve the request: %s", error)
    return error_reply(503, "ServiceMisconfigured", f"{error}. See GET /api/health.")


def _storage_down(error: Exception) -> Reply:
    log.error("storage failed: %s: %s", type(error).__name__, error)
    return error_reply(
        503,
        "StorageUnavailable",
        "The app's storage (queue or command ledger) did not answer; nothing was accepted. Retry later.",
    )


def _from_storage(error: Exception) -> bool:
    """True for the Azure SDK's errors (storage unreachable or failing), which are not imported at cold start."""
    return type(error).__module__.startswith("azure.")


def accept_commands(
    body: bytes,
    declared_length: str | None,
    queue: Callable[[], CommandQueue],
    ledger: Callable[[], Ledger | None] = lambda: None,
    *,
    idempotency_key: str | None = None,
    status_url: Callable[[str], str] = lambda command_id: f"/api/commands/{command_id}",
) -> Reply:
    """``POST /api/commands``: validate one command or up to 100, then record and enqueue all of them or none.

    202 names each command's id and status URL (``Location`` too, for one command). ``idempotency_key`` is the
    ``Idempotency-Key`` header, for a single command.
    """
    if _too_large(body, declared_length):
        return TOO_LARGE
    batch = False
    try:
        data = decode_json(body)
        batch = isinstance(data, list)
        commands = _keyed(_parse_posted(data), idempotency_key)
        accepted = _accept(commands, queue(), ledger())
    except InvalidCommand as invalid:
        return error_reply(400, invalid.code, invalid.message, invalid.details)
    except SettingsError as error:
        return _misconfigured(error)
    except EnqueueFailed as failure:
        return _not_enqueued(failure, len(commands))
    except IdempotencyKeyReused as reused:
        if idempotency_key is not None:
            key, target = "The Idempotency-Key header", "Idempotency-Key"
        else:
            key = f"The idempotency key of command {reused.index}"
            target = f"[{reused.index}].idempotencyKey" if batch else "idempotencyKey"
        return error_reply(
            409,
            "IdempotencyKeyReused",
            f"{key} was used for a different command ({reused.existing}) "
            "within the retention period. Use a new key for a new command.",
            (ErrorDetail("IdempotencyKeyReused", str(reused), target),),
        )
    except Exception as error:
        if _from_storage(error):
            return _storage_down(error)
        raise
    listed = [
        {"id": command_id, "status": status_url(command_id), **({} if fresh else {"duplicate": True})}
        for command_id, fresh in zip(accepted.ids, accepted.enqueued, strict=True)
    ]
    headers = {"Location": listed[0]["status"]} if len(listed) == 1 else {}
    return Reply(202, {"accepted": sum(accepted.enqueued), "commands": listed}, headers)


def _parse_posted(data: Any) -> list[Command]:
    """The commands of a POST, validated. A ``commandId`` is the service's to assign, so one in a POST is refused
    as such, whatever its form (not first as a malformed id, then as a taken one); raises `InvalidCommand`."""
    items = data if isinstance(data, list) else [data]
    assigned = [
        ErrorDetail(
            "InvalidValue",
            "commandId is assigned by the service; leave it out (use idempotencyKey to make a repeat harmless).",
            f"[{index}].commandId" if isinstance(data, list) else "commandId",
        )
        for index, item in enumerate(items)
        if isinstance(item, dict) and "commandId" in item
    ]
    if assigned:
        items = [{k: v for k, v in i.items() if k != "commandId"} if isinstance(i, dict) else i for i in items]
        data = items if isinstance(data, list) else items[0]
    try:
        commands = parse_batch(data)
    except InvalidCommand as invalid:
        if not assigned:
            raise
        raise InvalidCommand(invalid.message, [*assigned, *invalid.details]) from None
    if assigned:
        raise InvalidCommand("The request is invalid.", assigned)
    return commands


def _keyed(commands: list[Command], header: str | None) -> list[Command]:
    """The commands with the ``Idempotency-Key`` header applied; raises `InvalidCommand` for what cannot be."""
    problems = []
    if header is not None:
        key = header.strip()
        if len(commands) != 1:
            problems.append(
                ErrorDetail(
                    "InvalidValue",
                    "the Idempotency-Key header is for one command; give idempotencyKey on each command of a batch.",
                    "Idempotency-Key",
                )
            )
        elif not IDEMPOTENCY_KEY.match(key) or commands[0].idempotency_key not in (None, key):
            problems.append(
                ErrorDetail(
                    "InvalidValue",
                    "Idempotency-Key must be 1-200 printable ASCII characters (no letters outside ASCII: the same "
                    "rule as idempotencyKey in the body), and equal the command's idempotencyKey when both are given.",
                    "Idempotency-Key",
                )
            )
        else:
            commands = [replace(commands[0], idempotency_key=key)]
    first: dict[str, int] = {}
    for index, command in enumerate(commands):
        if not command.idempotency_key:
            continue
        if command.idempotency_key in first:
            problems.append(
                ErrorDetail(
                    "InvalidValue",
                    f"commands {first[command.idempotency_key]} and {index} of the batch have the same "
                    "idempotencyKey; give each command its own.",
                    f"[{index}].idempotencyKey",
                )
            )
        else:
            first[command.idempotency_key] = index
    if problems:
        raise InvalidCommand("The request is invalid.", problems)
    return commands


def command_status(command_id: str, ledger: Callable[[], Ledger]) -> Reply:
    """``GET /api/commands/{id}``: the command's row, or 404 ``CommandNotFound`` (without reading storage for a
    string that is not a command id)."""
    try:
        split_id(command_id)
    except ValueError as error:
        return error_reply(404, "CommandNotFound", f"{error}: ids look like 20261123-c0a1b2... (day, then key).")
    try:
        record = ledger().status(command_id)
    except SettingsError as error:
        return _misconfigured(error)
    except Exception as error:
        if _from_storage(error):
            return _storage_down(error)
        raise
    if record is None:
        return error_reply(
            404,
            "CommandNotFound",
            f"No command {command_id}: it was never accepted, or it is older than the ledger keeps "
            "(ITWIN_LEDGER_RETENTION).",
        )
    return Reply(200, record.to_dict())


def receive_webhook(
    body: bytes,
    signature: str | None,
    secret: str | WebhookSecrets | None,
    rules: Callable[[], tuple[Rule, ...]],
    environ: Mapping[str, str],
    queue: Callable[[], CommandQueue],
    deliveries: RecentDeliveries | None = None,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ledger: Callable[[], Ledger | None] = lambda: None,
    *,
    telemetry: Telemetry | None = None,
) -> Reply:
    """``POST /api/webhooks/itwin``: verify the signature, map the event to commands by rules, enqueue them.

    ``secret`` is the webhook secret, or `WebhookSecrets` (the current and, during a change-over, the previous one).
    A delivery whose signed ``enqueuedDateTime`` is older than `MAX_DELIVERY_AGE` (or ahead of ``now`` by more
    than `CLOCK_SKEW`) is refused as a possible replay. Within that window a repeat of a ``messageId`` is answered
    202 ``duplicate`` and enqueues nothing: by ``deliveries`` (this process's memory, a fast path) or, on any
    instance, by the ledger, which holds the ids derived from the ``messageId``. Each delivery is counted
    (``itwin.webhook.deliveries``) as accepted, duplicate or refused, a refusal with its error code as ``error.type``.
    """
    try:
        reply = _receive_webhook(body, signature, secret, rules, environ, queue, deliveries, now, ledger)
    except Exception as error:
        _count_delivery(telemetry, "refused", type(error).__qualname__)
        raise
    if reply.status != 202:
        _count_delivery(telemetry, "refused", reply.body["error"]["code"])
    else:
        _count_delivery(telemetry, "duplicate" if reply.body.get("duplicate") else "accepted", None)
    return reply


def _count_delivery(telemetry: Telemetry | None, outcome: str, error_type: str | None) -> None:
    if telemetry is None:
        from shared.telemetry import default_telemetry  # OpenTelemetry: kept out of cold start, as in _enqueue

        telemetry = default_telemetry()
    attributes = {"outcome": outcome}
    if error_type:
        attributes["error.type"] = error_type
    telemetry.webhook_deliveries.add(1, attributes)


def _receive_webhook(
    body: bytes,
    signature: str | None,
    secret: str | None,
    rules: Callable[[], tuple[Rule, ...]],
    environ: Mapping[str, str],
    queue: Callable[[], CommandQueue],
    deliveries: RecentDeliveries | None,
    now: Callable[[], datetime],
    ledger: Callable[[], Ledger | None],
) -> Reply:
    if _too_large(body, None):
        return TOO_LARGE
    if not verify(body, signature, secret):
        if not secret:
            reason = "no webhook secret is configured"
        elif not (signature or "").strip():
            reason = "the Signature header is missing (sha256=<hex HMAC-SHA256 of the body>)"
        else:
            reason = "the Signature header does not match the body"
        log.warning("webhook delivery refused: %s", reason)
        return error_reply(401, "InvalidSignature", f"Delivery refused: {reason}.")
    try:
        event = parse_event(body)
        stale = _stale(event.enqueued_at, now())
        if stale:
            log.warning("webhook delivery refused: %s (messageId=%s)", stale, event.message_id)
            return error_reply(400, "StaleDelivery", f"Delivery refused: {stale}.")
        commands = commands_for(event, rules(), environ)
    except InvalidCommand as invalid:
        log.warning("webhook event rejected: %s %s", invalid.message, [d.to_dict() for d in invalid.details])
        return error_reply(400, invalid.code, invalid.message, invalid.details)
    except SettingsError as error:
        return _misconfigured(error)
    tracked = deliveries is not None
    if tracked and not deliveries.first_time(event.message_id):
        log.info("webhook %s messageId=%s: a repeat, nothing enqueued", event.event_type, event.message_id)
        return Reply(202, {"accepted": 0, "eventType": event.event_type, "duplicate": True})
    ids = delivery_ids(event.message_id, event.enqueued_at, len(commands))
    try:
        accepted = _accept(commands, queue(), ledger(), ids) if commands else Accepted([], [])
    except Exception as error:
        if tracked:
            deliveries.forget(event.message_id)  # the platform's resend must be accepted
        if isinstance(error, SettingsError):
            return _misconfigured(error)
        if isinstance(error, EnqueueFailed):
            return _not_enqueued(error, len(commands))
        if isinstance(error, IdempotencyKeyReused):  # the rules changed since this messageId was first accepted
            return Reply(202, {"accepted": 0, "eventType": event.event_type, "duplicate": True})
        if _from_storage(error):
            return _storage_down(error)  # the platform resends the delivery
        raise
    count = sum(accepted.enqueued)
    if commands and count == 0:
        log.info("webhook %s messageId=%s: a repeat (ledger), nothing enqueued", event.event_type, event.message_id)
        return Reply(202, {"accepted": 0, "eventType": event.event_type, "duplicate": True, "commands": accepted.ids})
    log.info("webhook %s messageId=%s: %d command(s) enqueued", event.event_type, event.message_id, count)
    return Reply(202, {"accepted": count, "eventType": event.event_type, "commands": accepted.ids})


def health(environ: Mapping[str, str], rules: Callable[[], tuple[Rule, ...]]) -> Reply:
    """``GET /api/health``: 200 when the required settings are present and valid, else 503 naming them (and, for
    settings that are malformed or break a guarantee together, ``problems``: what is wrong, never a value)."""
    missing = missing_required(environ)
    invalid: list[str] = []
    problems: list[str] = []
    try:
        rules()
    except SettingsError:
        invalid.append("ITWIN_EVENT_RULES")
    if not missing:
        try:
            Settings.from_env(environ)
        except SettingsError as error:
            problems.append(str(error))
            invalid.extend(s.name for s in SETTINGS if s.name in str(error) and s.name not in invalid)
    if missing or invalid:
        body = {"status": "unhealthy", "missing": missing, "invalid": invalid}
        return Reply(503, {**body, "problems": problems} if problems else body)
    return Reply(200, {"status": "ok"})
