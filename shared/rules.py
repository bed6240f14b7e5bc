"""Event rules: data that maps an iTwin webhook event to commands.

A rules document is a JSON array of ``{"eventType", "commands", "requires"?, "forEach"?}``. In command templates a
string ``"{path}"`` is replaced by the value at ``path``: ``content.<field>`` (the event's content), ``event.<field>``
(``eventType``, ``iTwinId``, ``messageId``, ``webhookId``), ``settings.<NAME>`` (a non-secret setting) or ``item``
(the current element of ``forEach``, a comma-separated setting or a list). ``requires`` lists paths that must be
non-empty for the rule to apply. The defaults live in ``default_rules.json``; ``ITWIN_EVENT_RULES`` replaces them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from shared.commands import CORRELATION_ID, Command, InvalidCommand, decode_json, parse_batch
from shared.errors import ErrorDetail
from shared.settings import SETTINGS, SettingsError

DEFAULT_RULES = Path(__file__).with_name("default_rules.json")
_PLACEHOLDER = re.compile(r"\{([A-Za-z][A-Za-z0-9_.]*)\}")
_PUBLIC_SETTINGS = tuple(s.name for s in SETTINGS if not s.secret)


@dataclass(frozen=True)
class Event:
    """An iTwin Platform webhook delivery."""

    event_type: str
    content: Mapping[str, Any]
    enqueued_at: datetime
    itwin_id: str | None = None
    message_id: str | None = None
    webhook_id: str | None = None


@dataclass(frozen=True)
class Rule:
    """Commands to produce for one event type."""

    event_type: str
    commands: tuple[Mapping[str, Any], ...]
    requires: tuple[str, ...] = ()
    for_each: str | None = None


def parse_event(raw: bytes) -> Event:
    """Decode a webhook body; raises `InvalidCommand` (``InvalidRequestBody``/``InvalidEvent``) naming the field.

    ``eventType``, ``enqueuedDateTime`` and ``messageId`` are required: the time bounds how long a signed delivery
    can be replayed, and the id is what tells a replay (or the platform's resend) from a new delivery.
    """
    data = decode_json(raw)
    problems = []
    if not isinstance(data, dict):
        raise InvalidCommand(
            "The event is invalid.", [ErrorDetail("InvalidValue", "not a JSON object.", None)], "InvalidEvent"
        )
    if not isinstance(data.get("eventType"), str) or not data["eventType"]:
        problems.append(ErrorDetail("MissingRequiredProperty", "eventType must be a non-empty string.", "eventType"))
    if not isinstance(data.get("content", {}), dict):
        problems.append(ErrorDetail("InvalidValue", "content must be an object.", "content"))
    if not isinstance(data.get("messageId"), str) or not data["messageId"]:
        problems.append(
            ErrorDetail(
                "MissingRequiredProperty",
                "messageId must be the platform's non-empty id of this delivery: without it a repeat of the "
                "delivery cannot be recognised.",
                "messageId",
            )
        )
    enqueued_at = parse_enqueued(data.get("enqueuedDateTime"))
    if enqueued_at is None:
        problems.append(
            ErrorDetail(
                "InvalidValue",
                'enqueuedDateTime must be the time the platform enqueued the event, e.g. "11/3/2023 8:07:01 PM".',
                "enqueuedDateTime",
            )
        )
    if problems:
        raise InvalidCommand("The event is invalid.", problems, "InvalidEvent")

    def text(key: str) -> str | None:
        return data[key] if isinstance(data.get(key), str) else None

    assert enqueued_at is not None
    return Event(
        data["eventType"], data.get("content") or {}, enqueued_at, text("iTwinId"), text("messageId"), text("webhookId")
    )


def format_enqueued(when: datetime) -> str:
    """``when`` as the platform writes ``enqueuedDateTime`` (``"11/3/2023 8:07:01 PM"``, UTC)."""
    when = when.astimezone(UTC)
    return f"{when.month}/{when.day}/{when.year} {int(when.strftime('%I'))}:{when:%M:%S %p}"


def parse_enqueued(value: Any) -> datetime | None:
    """A delivery's ``enqueuedDateTime`` in UTC, or None when it is missing or unreadable.

    The platform writes ``M/d/yyyy h:mm:ss AM|PM`` (``"11/3/2023 8:07:01 PM"``, no zone: read as UTC); ISO 8601 is
    accepted too, in case the platform moves to it.
    """
    if not isinstance(value, str):
        return None
    text = value.strip()
    try:
        parsed = datetime.strptime(text, "%m/%d/%Y %I:%M:%S %p")
    except ValueError:
        try:
            parsed = datetime.fromisoformat(text)
        except ValueError:
            return None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def load_rules(text: str | None) -> tuple[Rule, ...]:
    """Parse a rules document (the default one when ``text`` is None); raises `SettingsError` when malformed."""
    source = "ITWIN_EVENT_RULES"
    if text is None:
        text, source = DEFAULT_RULES.read_text(encoding="utf-8"), str(DEFAULT_RULES.name)
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise SettingsError(f"{source} is not valid JSON: {exc}") from None
    if not isinstance(data, list):
        raise SettingsError(f"{source} must be a JSON array of rules")
    rules = []
    for index, item in enumerate(data):
        if (
            not isinstance(item, dict)
            or not isinstance(item.get("eventType"), str)
            or not isinstance(item.get("commands"), list)
            or not all(isinstance(c, dict) for c in item["commands"])
            or not all(isinstance(p, str) for p in item.get("requires", []))
            or not isinstance(item.get("forEach", ""), str)
            or set(item) - {"eventType", "commands", "requires", "forEach"}
        ):
            raise SettingsError(
                f"{source}[{index}] must be an object with eventType (string), commands (array of objects), "
                "and optionally requires (array of paths) and forEach (a path)"
            )
        rules.append(
            Rule(item["eventType"], tuple(item["commands"]), tuple(item.get("requires", ())), item.get("forEach"))
        )
    return tuple(rules)


def _lookup(path: str, scope: Mapping[str, Any]) -> Any:
    value: Any = scope
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def _render(template: Any, scope: Mapping[str, Any]) -> Any:
    if isinstance(template, dict):
        return {key: _render(value, scope) for key, value in template.items()}
    if isinstance(template, list):
        return [_render(value, scope) for value in template]
    if not isinstance(template, str):
        return template
    whole = _PLACEHOLDER.fullmatch(template)
    if whole:
        return _lookup(whole.group(1), scope)
    return _PLACEHOLDER.sub(lambda m: str(_lookup(m.group(1), scope) or ""), template)


def _items(value: Any) -> list[Any]:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return list(value) if isinstance(value, list) else []


def commands_for(event: Event, rules: tuple[Rule, ...], environ: Mapping[str, str]) -> list[Command]:
    """The validated commands the rules produce for ``event`` (none for an event type without a rule).

    Raises `InvalidCommand` when the event lacks what a rule needs (for example ``content.imodelId``).
    """
    scope = {
        "content": event.content,
        "event": {
            "eventType": event.event_type,
            "iTwinId": event.itwin_id,
            "messageId": event.message_id,
            "webhookId": event.webhook_id,
        },
        "settings": {name: environ.get(name, "").strip() for name in _PUBLIC_SETTINGS},
    }
    produced: list[Any] = []
    sources: list[dict[str, str]] = []  # per command: its fields that are one placeholder, and the path they read
    for rule in rules:
        if rule.event_type != event.event_type or not all(_lookup(p, scope) for p in rule.requires):
            continue
        items = _items(_lookup(rule.for_each, scope)) if rule.for_each else [None]
        for item in items:
            for template in rule.commands:
                produced.append(_render(template, {**scope, "item": item}))
                sources.append(_placeholders(template))
    if not produced:
        return []
    correlation = event.message_id if event.message_id and CORRELATION_ID.match(event.message_id) else None
    for command in produced:
        if isinstance(command, dict) and correlation and "correlationId" not in command:
            command["correlationId"] = correlation
    try:
        return parse_batch(produced)
    except InvalidCommand as invalid:
        raise InvalidCommand(invalid.message, [_in_event_terms(d, sources) for d in invalid.details]) from None


def _placeholders(template: Any, prefix: str = "") -> dict[str, str]:
    """``{"iModelId": "content.imodelId"}`` for a rule's command whose field is exactly ``{content.imodelId}``."""
    found: dict[str, str] = {}
    if isinstance(template, dict):
        for key, value in template.items():
            if isinstance(value, dict):
                found.update(_placeholders(value, f"{prefix}{key}."))
            elif isinstance(value, str) and (whole := _PLACEHOLDER.fullmatch(value)):
                found[f"{prefix}{key}"] = whole.group(1)
    return found


def _in_event_terms(detail: ErrorDetail, sources: list[dict[str, str]]) -> ErrorDetail:
    """A problem with a command field the rule fills from the event, said of the event's field: ``[0].iModelId is
    required`` becomes ``content.imodelId is required``, as the sender of the event can fix that and not the rule."""
    match = re.fullmatch(r"\[(\d+)\]\.(.+)", detail.target or "")
    if not match or int(match.group(1)) >= len(sources):
        return detail
    field_name = match.group(2)
    path = sources[int(match.group(1))].get(field_name)
    if not path or not path.startswith(("content.", "event.")):
        return detail
    target = path if path.startswith("content.") else path.removeprefix("event.")
    message = detail.message or ""
    if message.startswith(field_name + " "):
        message = target + message[len(field_name) :]
    return replace(detail, message=message, target=target)
