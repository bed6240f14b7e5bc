"""POST /api/webhooks/itwin: signed iTwin Platform deliveries become queued commands (authenticated by signature)."""

import os

import azure.functions as func

from functions._http import respond
from shared import runtime
from shared.http_api import receive_webhook
from shared.signature import WebhookSecrets

bp = func.Blueprint()


@bp.function_name("itwin_webhook")
@bp.route(route="webhooks/itwin", methods=["POST"], auth_level=func.AuthLevel.ANONYMOUS)
def itwin_webhook(req: func.HttpRequest) -> func.HttpResponse:
    reply = receive_webhook(
        req.get_body(),
        req.headers.get("Signature"),
        WebhookSecrets.from_env(os.environ),
        runtime.event_rules,
        os.environ,
        runtime.command_queue,
        runtime.recent_deliveries(),
        ledger=runtime.ledger,
    )
    return respond(reply)
