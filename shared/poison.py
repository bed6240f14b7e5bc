"""Poison envelopes: what a dead-lettered command leaves on the poison queue, always small enough to be sent.

An envelope is ``{"message", "error": {status, code, message, target, details}, "attempts", "failedAt"}``. The
message is the original command as decoded JSON, or its text when it was not JSON. When the whole would not fit
in a queue message, the message becomes a prefix of its JSON text ending in `TRUNCATED`, and if even that is not
enough, the error keeps its status, code, target and the start of its message but loses its details.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any
from xml.sax.saxutils import escape

# The queue service takes 64 KiB of message text, and the SDK sends it inside XML: measure after escaping.
MAX_ENVELOPE_BYTES = 60 * 1024
TRUNCATED = "…(truncated)"
_ERROR_MESSAGE_KEPT = 1000


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def encoded_size(text: str) -> int:
    """Bytes ``text`` takes on the wire as a queue message (UTF-8 after XML escaping)."""
    return len(escape(text).encode())


def _fit_message(text: str, rest: Mapping[str, Any], limit: int) -> str | None:
    """The envelope with the longest prefix of ``text`` that fits in ``limit``, or None when none does."""

    def build(length: int) -> str:
        return _dumps({"message": text[:length] + TRUNCATED, **rest})

    if encoded_size(build(0)) > limit:
        return None
    low, high = 0, len(text)
    while low < high:
        middle = (low + high + 1) // 2
        if encoded_size(build(middle)) <= limit:
            low = middle
        else:
            high = middle - 1
    return build(low)


def encode_envelope(
    message: Any,
    error: Mapping[str, Any],
    *,
    attempts: int,
    failed_at: str,
    limit: int = MAX_ENVELOPE_BYTES,
) -> str:
    """The envelope as queue message text, never more than ``limit`` bytes on the wire, whatever the content."""
    rest = {"error": dict(error), "attempts": attempts, "failedAt": failed_at}
    whole = _dumps({"message": message, **rest})
    if encoded_size(whole) <= limit:
        return whole
    text = message if isinstance(message, str) else _dumps(message)
    fitted = _fit_message(text, rest, limit)
    if fitted is not None:
        return fitted
    short_error = {
        "status": error.get("status"),
        "code": str(error.get("code") or "")[:_ERROR_MESSAGE_KEPT] or None,
        "message": f"{str(error.get('message') or '')[:_ERROR_MESSAGE_KEPT]}{TRUNCATED}",
        "target": str(error.get("target") or "")[:_ERROR_MESSAGE_KEPT] or None,
        "details": [],
    }
    fitted = _fit_message(text, {**rest, "error": short_error}, limit)
    if fitted is None:  # only for a limit far below the queue's
        raise ValueError(f"a poison envelope cannot fit in {limit} bytes")
    return fitted
