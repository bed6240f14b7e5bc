"""GET /api/health: which required settings are missing, never their values."""

import os

import azure.functions as func

from functions._http import respond
from shared import runtime
from shared.http_api import health as health_reply

bp = func.Blueprint()


@bp.function_name("health")
@bp.route(route="health", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
def health(req: func.HttpRequest) -> func.HttpResponse:
    return respond(health_reply(os.environ, runtime.event_rules))
