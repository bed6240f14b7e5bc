"""Translate `shared.http_api.Reply` into an Azure Functions HTTP response."""

import json

import azure.functions as func

from shared.http_api import Reply


def respond(reply: Reply) -> func.HttpResponse:
    return func.HttpResponse(
        json.dumps(reply.body), status_code=reply.status, mimetype="application/json", headers=dict(reply.headers)
    )
