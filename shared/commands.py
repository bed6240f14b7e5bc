"""Command messages: the one validator for queue bodies and the HTTP endpoint, and the typed `Command`.

A command is UTF-8 JSON such as ``{"action": "delete", "resource": "connection", "id": "..."}``. Validation
collects every problem, each naming its field (``target``: ``body.iModelId``, or ``[2].id`` in an array).

The resource names the API and its version: ``job`` and ``run`` are ContextCapture v1 and Clash Detection v1 (the
seeds' contract), ``realityJob`` and ``clashRun`` are Reality Modeling v2 and Clash Detection v2. A v2 command
cannot be read as a v1 one: its resource alone says so, and its body has the v2 fields (``changesetId`` where v1
has ``namedVersionId``, ``iTwinId`` and ``specifications`` where v1 has ``workspaceId``, ``inputs``, ``settings``).
A ``clashRun``'s id is the clash report id the run answers with: Clash Detection v2 names a run by its report.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from shared.errors import ErrorDetail
from shared.schedule import Slot

MAX_BODY_BYTES = 48 * 1024
MAX_BATCH = 100
MAX_ATTEMPT = 1000
MAX_WAITS = 100_000

_GUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_OPAQUE_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
_COMMAND_ID = re.compile(r"^[0-9]{8}-[A-Za-z0-9][A-Za-z0-9.-]{0,99}$")
IDEMPOTENCY_KEY = re.compile(r"^[\x20-\x7e]{1,200}$")
_LEASE_TOKEN = re.compile(r"^[0-9a-f]{32}$")
MAX_LEASE_WAITED = 7 * 24 * 3600
_SAFE_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
_JOB_TYPE = re.compile(r"^[A-Za-z][A-Za-z0-9]{0,63}$")
_TRACEPARENT = re.compile(r"^(?!ff)[0-9a-f]{2}-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-[0-9a-f]{2}$")
CORRELATION_ID = re.compile(r"^[\x21-\x7e]{1,128}$")
_API = re.compile(r"^[a-z][a-z0-9]*(?:-[a-z0-9]+)*$")
_SLOT_TIMES = (946_684_800.0, 4_102_444_800.0)  # 2000 to 2100, Unix seconds

# (action, resource) -> what the command carries besides its action and resource.
_SHAPES: dict[tuple[str, str], str] = {
    ("create", "connection"): "body",
    ("delete", "connection"): "id or iModelId",
    ("create", "job"): "body",
    ("submit", "job"): "id",
    ("cancel", "job"): "id",
    ("delete", "job"): "id",
    ("create", "run"): "body",
    ("delete", "run"): "id",
    ("create", "clashRun"): "body",
    ("cancel", "clashRun"): "id",
    ("delete", "clashRun"): "id",
    ("create", "realityJob"): "body",
    ("cancel", "realityJob"): "id",
    # the platform reported the job's end (realityModeling.jobCompleted.v2): its state goes into its creator's row
    ("record", "realityJob"): "id",
}
# Commands whose URL names an iTwin (Clash Detection v2): ``iTwinId`` at the top level. A create may leave it out
# (the worker asks the iModels API for the iModel's iTwin); a cancel or delete must carry it.
_ITWIN_ID: dict[tuple[str, str], bool] = {
    ("create", "clashRun"): False,
    ("cancel", "clashRun"): True,
    ("delete", "clashRun"): True,
}
ACTIONS = sorted({a for a, _ in _SHAPES})
RESOURCES = sorted({r for _, r in _SHAPES})
_TOP_LEVEL = {
    "action",
    "resource",
    "id",
    "iModelId",
    "body",
    "correlationId",
    "traceparent",
    "attempt",
    "waits",
    "firstEnqueued",
    "commandId",
    "idempotencyKey",
    "projectId",
    "iTwinId",
    "lookUp",
    "leaseSeen",
    "leaseWaited",
    "slot",
}


@dataclass(frozen=True)
class Command:
    """A validated command.

    ``attempt`` counts the deliveries that failed or may fail again (5xx, no answer); ``waits`` counts those that
    only had to wait (429, a busy connection; not a give-back of this process's own pacing), which
    `ITWIN_MAX_COMMAND_AGE` bounds instead, measured from ``first_enqueued`` (UTC). All three are kept across
    reschedules.
    """

    action: str
    resource: str
    id: str | None = None
    imodel_id: str | None = None
    body: Mapping[str, Any] | None = field(default=None, compare=False)
    correlation_id: str | None = None
    traceparent: str | None = None
    attempt: int = 1
    waits: int = 0
    first_enqueued: datetime | None = None
    command_id: str | None = None
    idempotency_key: str | None = field(default=None, compare=False)
    project_id: str | None = None
    itwin_id: str | None = None  # Clash Detection v2: the iTwin in the run's or report's URL
    look_up: bool = False  # an earlier delivery's create got no clear answer: look for what it made first
    lease_seen: str | None = None  # the lease on this create that earlier deliveries of this message found held
    lease_waited: int = 0  # seconds this message has waited on ``lease_seen`` (its visibility delays, added up)
    slot: Slot | None = None  # a slot of the shared pacing schedule reserved for its next call (`shared.schedule`)

    @property
    def kind(self) -> str:
        """``"<action> <resource>"``, the value of the ``itwin.command`` metric attribute."""
        return f"{self.action} {self.resource}"

    def to_message(self) -> dict[str, Any]:
        """The JSON form, as enqueued. Parsing it gives back an equal command."""
        message: dict[str, Any] = {"action": self.action, "resource": self.resource}
        optional = {
            "id": self.id,
            "iModelId": self.imodel_id,
            "body": self.body,
            "correlationId": self.correlation_id,
            "traceparent": self.traceparent,
            "commandId": self.command_id,
            "idempotencyKey": self.idempotency_key,
            "projectId": self.project_id,
            "iTwinId": self.itwin_id,
        }
        message.update({k: v for k, v in optional.items() if v is not None})
        if self.attempt > 1:
            message["attempt"] = self.attempt
        if self.waits:
            message["waits"] = self.waits
        if self.first_enqueued is not None:
            message["firstEnqueued"] = format_instant(self.first_enqueued)
        if self.look_up:
            message["lookUp"] = True
        if self.lease_seen:
            message["leaseSeen"] = self.lease_seen
            message["leaseWaited"] = self.lease_waited
        if self.slot is not None:
            message["slot"] = self.slot.to_message()
        return message

    @property
    def deliveries(self) -> int:
        """Deliveries so far, this one included."""
        return self.attempt + self.waits

    def enqueued(self, now: datetime) -> Command:
        """This command stamped with its first-enqueued time, unless it has one."""
        return self if self.first_enqueued else replace(self, first_enqueued=now)

    def next_attempt(self, now: datetime | None = None) -> Command:
        """The copy to reschedule after a failure that counts as an attempt."""
        again = replace(self, attempt=self.attempt + 1, slot=None)
        return again.enqueued(now) if now else again

    def after_wait(self, now: datetime) -> Command:
        """The copy to reschedule after a wait (429, busy): the attempt count is left as it is."""
        return replace(self, waits=self.waits + 1, slot=None).enqueued(now)

    def held_back(self, now: datetime) -> Command:
        """The copy to reschedule after this process's own pacing held the call back: the platform refused
        nothing, so neither count grows (counted, a command paced ten times would back off as if it had failed
        ten times at its first real failure)."""
        return replace(self, slot=None).enqueued(now)

    def age(self, now: datetime) -> float:
        """Seconds since the command was first enqueued (0 when nobody stamped it yet)."""
        return max(0.0, (now - self.first_enqueued).total_seconds()) if self.first_enqueued else 0.0


class InvalidCommand(ValueError):
    """The input is not a valid command; ``details`` name each problem and its field."""

    code = "InvalidCommand"

    def __init__(self, message: str, details: list[ErrorDetail], code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = tuple(details)
        if code:
            self.code = code

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": 400,
            "code": self.code,
            "message": self.message,
            "target": None,
            "details": [d.to_dict() for d in self.details],
        }


def format_instant(when: datetime) -> str:
    """A UTC instant as ISO 8601 with a ``Z``, to the millisecond."""
    return when.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_instant(value: Any) -> datetime | None:
    """An ISO 8601 instant with a zone, in UTC; None when ``value`` is not one."""
    if not isinstance(value, str) or len(value) > 40:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed.astimezone(UTC) if parsed.tzinfo else None


def is_guid(value: Any) -> bool:
    return isinstance(value, str) and bool(_GUID.match(value))


class _Checker:
    """Collects problems for one command; ``prefix`` makes targets like ``[2].body.iModelId``."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.problems: list[ErrorDetail] = []

    def add(self, code: str, target: str, message: str) -> None:
        where = f"{self.prefix}{target}" if target else self.prefix.rstrip(".")
        self.problems.append(ErrorDetail(code, message, where or None))

    def require(self, data: Mapping[str, Any], key: str, target: str, check: Callable[[Any], bool], what: str):
        if key not in data or data[key] is None:
            self.add("MissingRequiredProperty", target, f"{target} is required: {what}.")
            return None
        if not check(data[key]):
            self.add("InvalidValue", target, f"{target} must be {what}.")
            return None
        return data[key]

    def optional(self, data: Mapping[str, Any], key: str, target: str, check: Callable[[Any], bool], what: str):
        if key in data and not check(data[key]):
            self.add("InvalidValue", target, f"{target} must be {what}.")

    def only(self, data: Mapping[str, Any], allowed: set[str], where: str) -> None:
        for key in sorted(set(data) - allowed, key=str):
            meant = near_miss(key, allowed)
            hint = f"; did you mean {where}{meant}?" if meant else "."
            self.add("UnknownProperty", f"{where}{key}", f"{where}{key} is not a known field{hint}")


def near_miss(key: Any, allowed: set[str]) -> str | None:
    """The allowed field ``key`` differs from only in case (``imodelId`` for ``iModelId``), if any."""
    if not isinstance(key, str):
        return None
    return next((name for name in sorted(allowed) if name.lower() == key.lower() and name != key), None)


def _text(limit: int) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, str) and len(v.strip()) > 0 and len(v) <= limit


def _one_of(*values: str) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, str) and v in values


def _matches(pattern: re.Pattern[str]) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, str) and bool(pattern.match(v))


def _whole(low: int, high: int) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and low <= v <= high


def _instant(value: Any) -> bool:
    return parse_instant(value) is not None


def _is_object(value: Any) -> bool:
    return isinstance(value, dict)


def _opaque_id(value: Any) -> bool:
    return isinstance(value, str) and bool(_OPAQUE_ID.match(value))


def _safe_id(value: Any) -> bool:
    return isinstance(value, str) and bool(_SAFE_ID.match(value))


def _check_inputs(value: Any) -> bool:
    return (
        isinstance(value, list)
        and 0 < len(value) <= 1000
        and all(isinstance(i, dict) and _text(256)(i.get("id")) and set(i) <= {"id", "description"} for i in value)
    )


def _slot(value: Any) -> bool:
    """``{"api", "at", "gen", "part"}``: an API name, a Unix time between 2000 and 2100, a whole generation, the
    schedule's entity it was reserved in (absent in messages of the unsplit schedule: entity 0)."""
    return (
        isinstance(value, dict)
        and set(value) in ({"api", "at", "gen"}, {"api", "at", "gen", "part"})
        and _whole(0, 1023)(value.get("part", 0))
        and isinstance(value["api"], str)
        and bool(_API.match(value["api"]))
        and len(value["api"]) <= 64
        and isinstance(value["at"], int | float)
        and not isinstance(value["at"], bool)
        and _SLOT_TIMES[0] < value["at"] < _SLOT_TIMES[1]
        and _whole(0, 10**9)(value["gen"])
    )


def _test_settings(value: Any) -> bool:
    return isinstance(value, dict) and set(value) <= {"resultsLimit"}


def _specifications(value: Any) -> bool:
    return isinstance(value, dict) and isinstance(value.get("inputs"), dict) and isinstance(value.get("outputs"), dict)


def _check_body(c: _Checker, body: Mapping[str, Any], resource: str) -> None:
    size = len(json.dumps(body, separators=(",", ":")).encode())
    if size > MAX_BODY_BYTES:
        c.add("InvalidValue", "body", f"body is {size} bytes; the limit is {MAX_BODY_BYTES} (48 KiB).")
        return
    if resource == "connection":
        c.only(body, {"iModelId", "displayName", "authenticationType"}, "body.")
        c.require(body, "iModelId", "body.iModelId", is_guid, "an iModel id (a GUID)")
        c.require(
            body,
            "displayName",
            "body.displayName",
            _text(255),
            "a non-empty string of up to 255 characters (the worker finds an existing connection by iModel and name, "
            "so that a repeated create makes no second connection)",
        )
        c.optional(body, "authenticationType", "body.authenticationType", _one_of("User", "Service"), "User or Service")
    elif resource == "job":
        c.only(body, {"type", "name", "workspaceId", "inputs", "settings", "costEstimationParameters"}, "body.")
        c.require(
            body,
            "type",
            "body.type",
            _one_of("Full", "Calibration", "Reconstruction"),
            "Full, Calibration or Reconstruction",
        )
        c.require(body, "name", "body.name", _text(256), "a non-empty string")
        c.require(body, "workspaceId", "body.workspaceId", is_guid, "a workspace id (a GUID)")
        c.require(body, "inputs", "body.inputs", _check_inputs, "a non-empty list of {id, description}")
        c.require(body, "settings", "body.settings", _is_object, "an object")
        c.optional(body, "costEstimationParameters", "body.costEstimationParameters", _is_object, "an object")
    elif resource == "clashRun":
        c.only(body, {"testId", "iModelId", "changesetId", "testSettings"}, "body.")
        c.require(body, "testId", "body.testId", is_guid, "a Clash Detection v2 test id (a GUID)")
        c.require(body, "iModelId", "body.iModelId", is_guid, "an iModel id (a GUID)")
        c.require(body, "changesetId", "body.changesetId", _safe_id, "the id of the changeset to test")
        c.optional(body, "testSettings", "body.testSettings", _test_settings, "an object {resultsLimit}")
        if isinstance(body.get("testSettings"), dict) and "resultsLimit" in body["testSettings"]:
            limit = body["testSettings"]["resultsLimit"]
            if not _whole(1, 100_000)(limit):
                c.add(
                    "InvalidValue",
                    "body.testSettings.resultsLimit",
                    "body.testSettings.resultsLimit must be a "
                    "whole number from 1 to 100000 (the API's default and most).",
                )
    elif resource == "realityJob":
        c.only(body, {"type", "name", "iTwinId", "specifications"}, "body.")
        c.require(
            body, "type", "body.type", _matches(_JOB_TYPE), "a Reality Modeling v2 job type such as Reconstruction"
        )
        c.require(
            body,
            "name",
            "body.name",
            lambda v: _text(256)(v) and len(v.strip()) >= 3,
            "a string of 3 to 256 characters (the worker finds a job it may have made by its iTwin and name, so "
            "that a repeated create makes no second job)",
        )
        c.require(body, "iTwinId", "body.iTwinId", is_guid, "an iTwin id (a GUID)")
        c.require(body, "specifications", "body.specifications", _specifications, "an object with inputs and outputs")
    else:
        c.only(body, {"testId", "iModelId", "namedVersionId", "testSettings", "inPlace"}, "body.")
        c.require(body, "testId", "body.testId", _safe_id, "a Clash Detection test id")
        c.require(body, "iModelId", "body.iModelId", is_guid, "an iModel id (a GUID)")
        c.require(body, "namedVersionId", "body.namedVersionId", _safe_id, "a named version id")
        c.optional(body, "testSettings", "body.testSettings", _is_object, "an object")
        c.optional(body, "inPlace", "body.inPlace", lambda v: isinstance(v, bool), "true or false")


# Ids the platform assigns are opaque (the seeds show GUIDs and 43-character URL-safe ids for the same resource):
# any URL-safe id passes here and the API's 404/422 decides. Only fields a seed calls a GUID are checked as one.
_ID_CHECKS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "connection": (_opaque_id, "a connection id (1-128 letters, digits, '-' or '_')"),
    "job": (is_guid, "a job id (a GUID)"),
    "run": (_opaque_id, "a run id (1-128 letters, digits, '-' or '_')"),
    "clashRun": (is_guid, "the run's clash report id (a GUID)"),
    "realityJob": (is_guid, "a Reality Modeling v2 job id (a GUID)"),
}


def validate(data: Any, prefix: str = "") -> Command:
    """Validate one decoded command; raises `InvalidCommand` listing every problem."""
    c = _Checker(prefix)
    if not isinstance(data, dict):
        c.add("InvalidValue", "", "a command must be a JSON object.")
        raise InvalidCommand("The command is invalid.", c.problems)
    c.only(data, _TOP_LEVEL, "")
    action = c.require(data, "action", "action", _one_of(*ACTIONS), f"one of {', '.join(ACTIONS)}")
    resource = c.require(data, "resource", "resource", _one_of(*RESOURCES), f"one of {', '.join(RESOURCES)}")
    c.optional(data, "correlationId", "correlationId", _matches(CORRELATION_ID), "1-128 printable characters")
    c.optional(data, "traceparent", "traceparent", _matches(_TRACEPARENT), "a W3C traceparent")
    c.optional(data, "attempt", "attempt", _whole(1, MAX_ATTEMPT), f"a whole number from 1 to {MAX_ATTEMPT}")
    c.optional(data, "waits", "waits", _whole(0, MAX_WAITS), f"a whole number from 0 to {MAX_WAITS}")
    c.optional(data, "firstEnqueued", "firstEnqueued", _instant, "an ISO 8601 time with a zone")
    c.optional(data, "commandId", "commandId", _matches(_COMMAND_ID), "a command id such as 20261123-c0a1b2...")
    c.optional(data, "idempotencyKey", "idempotencyKey", _matches(IDEMPOTENCY_KEY), "1-200 printable characters")
    c.optional(data, "lookUp", "lookUp", lambda v: isinstance(v, bool), "true or false")
    c.optional(data, "leaseSeen", "leaseSeen", _matches(_LEASE_TOKEN), "a lease token (32 hex digits)")
    c.optional(
        data, "leaseWaited", "leaseWaited", _whole(0, MAX_LEASE_WAITED), f"whole seconds from 0 to {MAX_LEASE_WAITED}"
    )
    c.optional(data, "slot", "slot", _slot, "a reserved slot {api, at (Unix seconds), gen, part}")
    if "projectId" in data and (action, resource) != ("create", "run"):
        c.add("UnknownProperty", "projectId", "projectId belongs only to a create run command.")
    else:
        # null is absent: the default rule fills projectId from an event's iTwinId, which an event may lack
        c.optional(data, "projectId", "projectId", lambda v: v is None or is_guid(v), "the run's project (iTwin) id")
    itwin_rule = _ITWIN_ID.get((action, resource)) if action and resource else None
    if "iTwinId" in data and itwin_rule is None:
        c.add("UnknownProperty", "iTwinId", "iTwinId belongs only to clashRun commands (Clash Detection v2).")
    elif itwin_rule:
        c.require(data, "iTwinId", "iTwinId", is_guid, "the iTwin of the clash report (a GUID)")
    else:  # null is absent, as for projectId: the default rule fills it from an event's iTwinId
        c.optional(data, "iTwinId", "iTwinId", lambda v: v is None or is_guid(v), "the iTwin of the run (a GUID)")
    shape = _SHAPES.get((action, resource)) if action and resource else None
    if action and resource and shape is None:
        c.add("InvalidValue", "action", f"{action} is not an action on a {resource}.")
    if shape == "body":
        c.require(data, "body", "body", _is_object, "an object")
        if _is_object(data.get("body")):
            _check_body(c, data["body"], resource)
    elif shape == "id or iModelId" and "iModelId" in data:
        c.require(data, "iModelId", "iModelId", is_guid, "an iModel id (a GUID)")
    elif shape == "id or iModelId" and "id" not in data:
        if not any(near_miss(key, {"id", "iModelId"}) for key in data):  # already said: "did you mean iModelId?"
            id_what = _ID_CHECKS[resource][1]
            c.add(
                "MissingRequiredProperty",
                "id",
                f"id or iModelId is required: {id_what}, or the iModel whose connections to delete (a GUID).",
            )
    elif shape:
        c.require(data, "id", "id", *_ID_CHECKS[resource])
    if shape:
        carried = {"body"} if shape == "body" else {"id", "iModelId"} if "iModelId" in shape else {"id"}
        for key in sorted(k for k in ("id", "iModelId", "body") if k in data and k not in carried):
            c.add("UnknownProperty", key, f"{key} does not belong to a {action} {resource} command.")
        if carried == {"id", "iModelId"} and "id" in data and "iModelId" in data:
            c.add("InvalidValue", "iModelId", "give either id or iModelId, not both.")
    if c.problems:
        raise InvalidCommand("The command is invalid.", c.problems)
    return Command(
        action=action,
        resource=resource,
        id=data.get("id"),
        imodel_id=data.get("iModelId"),
        body=data.get("body"),
        correlation_id=data.get("correlationId"),
        traceparent=data.get("traceparent"),
        attempt=data.get("attempt", 1),
        waits=data.get("waits", 0),
        first_enqueued=parse_instant(data.get("firstEnqueued")),
        command_id=data.get("commandId"),
        idempotency_key=data.get("idempotencyKey"),
        project_id=data.get("projectId"),
        itwin_id=data.get("iTwinId"),
        look_up=data.get("lookUp", False),
        lease_seen=data.get("leaseSeen"),
        lease_waited=data.get("leaseWaited", 0),
        slot=Slot.from_message(data["slot"]) if "slot" in data else None,
    )


def decode_json(raw: bytes | str) -> Any:
    """Decode UTF-8 JSON; raises `InvalidCommand` with code ``InvalidRequestBody`` when it is not."""
    try:
        return json.loads(raw)
    except RecursionError:
        detail = ErrorDetail("InvalidRequestBody", "the JSON is nested too deeply.", None)
    except (ValueError, UnicodeDecodeError) as exc:
        detail = ErrorDetail("InvalidRequestBody", f"not UTF-8 JSON: {exc}", None)
    raise InvalidCommand("The body is not valid JSON.", [detail], code="InvalidRequestBody") from None


def parse_batch(data: Any) -> list[Command]:
    """One command or an array of 1 to 100; every problem of every command is reported together."""
    if not isinstance(data, list):
        return [validate(data)]
    if not 0 < len(data) <= MAX_BATCH:
        detail = ErrorDetail("InvalidValue", f"an array must hold 1 to {MAX_BATCH} commands.", "")
        raise InvalidCommand("The batch is invalid.", [detail])
    commands, problems = [], []
    for index, item in enumerate(data):
        try:
            commands.append(validate(item, prefix=f"[{index}]."))
        except InvalidCommand as exc:
            problems.extend(exc.details)
    if problems:
        raise InvalidCommand("One or more commands are invalid; none was accepted.", problems)
    return commands
