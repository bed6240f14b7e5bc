"""POST /api/commands: validate commands and enqueue them (auth level FUNCTION)."""

import azure.functions as func

from functions._http import respond
from shared import runtime
from shared.http_api import accept_commands

bp = func.Blueprint()


@bp.function_name("commands")
@bp.route(route="commands", methods=["POST"], auth_level=func.AuthLevel.FUNCTION)
def commands(req: func.HttpRequest) -> func.HttpResponse:
    return respond(accept_commands(req.get_body(), req.headers.get("Content-Length"), runtime.command_queue))
