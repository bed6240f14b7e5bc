"""POST /api/commands: validate, record and enqueue commands; GET /api/commands/{id}: one command's status
(auth level FUNCTION for both)."""

import azure.functions as func

from functions._http import respond
from shared import runtime
from shared.http_api import accept_commands, command_status

bp = func.Blueprint()


@bp.function_name("commands")
@bp.route(route="commands", methods=["POST"], auth_level=func.AuthLevel.FUNCTION)
def commands(req: func.HttpRequest) -> func.HttpResponse:
    base = req.url.split("?", 1)[0].rstrip("/")
    reply = accept_commands(
        req.get_body(),
        req.headers.get("Content-Length"),
        runtime.command_queue,
        runtime.ledger,
        idempotency_key=req.headers.get("Idempotency-Key"),
        status_url=lambda command_id: f"{base}/{command_id}",
    )
    return respond(reply)


@bp.function_name("command_status")
@bp.route(route="commands/{id}", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
def command_status_function(req: func.HttpRequest) -> func.HttpResponse:
    return respond(command_status(req.route_params.get("id", ""), runtime.ledger))
