"""``python -m sandbox.send_event TYPE``: one signed webhook delivery of an event type to the local app.

The body has the shape the iTwin Platform delivers (``content``, ``eventType``, ``enqueuedDateTime`` written as the
platform writes it, ``iTwinId``, ``messageId``, ``webhookId``) and the ``Signature`` header is
``sha256=<HMAC-SHA256 of the body>`` keyed with ``ITWIN_WEBHOOK_SECRET``. The secret and the callback
(``ITWIN_WEBHOOK_URL``) come from the environment, then from ``.sandbox/local.settings.json``, which ``make dev``
writes at start (its secret is random each run), so under ``make dev`` it works as typed:

    python -m sandbox.send_event iModels.iModelDeleted.v1 --imodel 2f0c9a3e-4b1d-4c6e-8a57-1d3e5f7a9b20
    python -m sandbox.send_event iModels.namedVersionCreated.v1 --imodel ID --changeset ID
    python -m sandbox.send_event realityModeling.jobCompleted.v2 --job ID
    python -m sandbox.send_event Any.Type.v1 --content '{"anything": 1}'

It prints the app's answer and exits 0 when the app accepted the delivery (2xx), 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import requests

from ops.local_settings import LocalSettingsFile
from shared.rules import format_enqueued
from shared.signature import SECRET_SETTING, sign

ROOT = Path(__file__).resolve().parents[1]
SANDBOX_SETTINGS = ROOT / ".sandbox" / "local.settings.json"
URL_SETTING = "ITWIN_WEBHOOK_URL"
DEFAULT_URL = "http://127.0.0.1:7071/api/webhooks/itwin"
DEFAULT_ITWIN = "e3d8c0a4-9a27-4f6e-8b1c-5d2f7a6b9c10"
# The content fields each event type carries, filled from the options (the pages' names, as the simulator sends).
KNOWN_TYPES = {
    "iModels.iModelDeleted.v1": ("imodelId", "userId"),
    "iModels.iModelCreated.v1": ("imodelId", "iModelName"),
    "iModels.namedVersionCreated.v1": ("imodelId", "versionId", "versionName", "changesetId", "changesetIndex"),
    "realityModeling.jobCompleted.v1": ("jobId",),
    "realityModeling.jobCompleted.v2": ("jobId",),
}


def event_content(event_type: str, args: argparse.Namespace) -> dict[str, Any]:
    """The event's ``content``: the fields its type carries, from the options (made up where left out), then
    ``--content`` on top."""
    made_up = {
        "imodelId": args.imodel or str(uuid.uuid4()),
        "userId": "send-event",
        "iModelName": args.name or "send-event",
        "versionId": args.version or str(uuid.uuid4()),
        "versionName": args.name or "send-event",
        "changesetId": args.changeset or uuid.uuid4().hex + uuid.uuid4().hex[:8],
        "changesetIndex": 1,
        "jobId": args.job or str(uuid.uuid4()),
    }
    content = {name: made_up[name] for name in KNOWN_TYPES.get(event_type, ())}
    if args.content:
        extra = json.loads(args.content)
        if not isinstance(extra, dict):
            raise ValueError("--content must be a JSON object")
        content.update(extra)
    return content


def delivery(event_type: str, content: Mapping[str, Any], itwin_id: str, message_id: str, now: datetime) -> bytes:
    """The body of a delivery, as the platform sends it."""
    return json.dumps(
        {
            "content": dict(content),
            "eventType": event_type,
            "enqueuedDateTime": format_enqueued(now),
            "iTwinId": itwin_id,
            "messageId": message_id,
            "webhookId": "send-event",
        }
    ).encode()


def settings(path: Path, environ: Mapping[str, str]) -> dict[str, str]:
    """The environment's values over the settings file's."""
    values = LocalSettingsFile(path).values() if path.exists() else {}
    return {**values, **{k: v for k, v in environ.items() if k in (SECRET_SETTING, URL_SETTING)}}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m sandbox.send_event",
        description="Send one signed webhook delivery to the local app (make dev).",
        epilog=f"Event types with known content: {', '.join(KNOWN_TYPES)}; any other type takes --content.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("event_type", metavar="TYPE", help="the event type, e.g. iModels.iModelDeleted.v1")
    parser.add_argument("--imodel", help="content.imodelId (default: a new GUID)")
    parser.add_argument("--version", help="content.versionId of a named version (default: a new GUID)")
    parser.add_argument("--changeset", help="content.changesetId of a named version (default: a new id)")
    parser.add_argument("--job", help="content.jobId of a completed job (default: a new GUID)")
    parser.add_argument("--name", help="content.iModelName or content.versionName")
    parser.add_argument("--content", help="a JSON object merged into content, for any field or event type")
    parser.add_argument("--itwin", default=DEFAULT_ITWIN, help="the event's iTwinId")
    parser.add_argument("--message-id", help="the delivery's messageId (default: a new GUID; repeat one to resend)")
    parser.add_argument("--settings", default=str(SANDBOX_SETTINGS), help="where the secret and callback URL are")
    parser.add_argument("--url", help=f"the callback (default {URL_SETTING} from the settings, else {DEFAULT_URL})")
    return parser


def main(argv: list[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    values = settings(Path(args.settings), os.environ if environ is None else environ)
    secret = values.get(SECRET_SETTING, "")
    if not secret:
        print(
            f"{SECRET_SETTING} is not set in the environment or in {args.settings}: start the app with `make dev` "
            "(it writes .sandbox/local.settings.json), or pass --settings PATH",
            file=sys.stderr,
        )
        return 2
    try:
        content = event_content(args.event_type, args)
    except ValueError as error:
        print(f"--content: {error}", file=sys.stderr)
        return 2
    url = args.url or values.get(URL_SETTING) or DEFAULT_URL
    body = delivery(args.event_type, content, args.itwin, args.message_id or str(uuid.uuid4()), datetime.now(UTC))
    headers = {"Content-Type": "application/json", "Signature": sign(body, secret)}
    print(f"POST {url}\n{body.decode()}")
    try:
        answer = requests.post(url, data=body, headers=headers, timeout=10)
    except requests.RequestException as error:
        print(f"no answer from {url} ({type(error).__name__}): is `make dev` running?", file=sys.stderr)
        return 1
    print(f"{answer.status_code} {answer.reason}\n{answer.text}")
    return 0 if answer.ok else 1


if __name__ == "__main__":
    sys.exit(main())
