"""Export API (``/export``): connections of an iModel, created, listed with ``$top``/``$skip``, read, deleted."""

from __future__ import annotations

from .protocol import (
    ApiError,
    RecordedRequest,
    Response,
    detail,
    is_guid,
    is_url_safe_id,
    json_response,
    no_content,
    parse_int,
    parse_json_object,
    query_value,
)
from .state import World

CANNOT = "Cannot perform operation."
INVALID_IMODEL = "Provided imodelId value is not valid."


def _connection_not_found() -> ApiError:
    return ApiError(404, "ConnectionNotFound", "Requested Connection is not available.")


def create_connection(world: World, request: RecordedRequest) -> Response:
    """POST /export/connections: 201 ``{"connection"}``; 422 ``InvalidExportConnectionRequest``."""
    payload = parse_json_object(request.body, "InvalidExportConnectionRequest", CANNOT)
    details = []
    imodel_id = payload.get("iModelId")
    if imodel_id is None:
        details.append(detail("MissingRequiredProperty", "imodelId was not provided.", "imodelId"))
    elif not is_guid(imodel_id):
        details.append(detail("InvalidValue", INVALID_IMODEL, "imodelId"))
    display_name = payload.get("displayName", "")
    if not isinstance(display_name, str):
        details.append(detail("InvalidValue", "Provided displayName value is not valid.", "displayName"))
    authentication_type = payload.get("authenticationType", "User")
    if authentication_type not in ("User", "Service"):
        details.append(detail("InvalidValue", "Provided authenticationType value is not valid.", "authenticationType"))
    if details:
        raise ApiError(422, "InvalidExportConnectionRequest", CANNOT, details=details)
    connection = world.add_connection(imodel_id, display_name, authentication_type)
    location = f"{world.base_url}/export/connections/{connection['id']}"
    return json_response(201, {"connection": connection}, {"Location": location})


def list_connections(world: World, request: RecordedRequest) -> Response:
    """GET /export/connections?imodelId&$top&$skip: one page and ``_links`` self/prev/next.

    Like seed 003's example, the links carry ``$skip`` and ``$top`` but not the iModel filter. What Export does
    with a list that has no ``imodelId`` is not documented; the simulator answers the worst plausible thing,
    a page of every connection of every iModel, so a client that trusts the links shows it.
    """
    imodel_id = query_value(request.query, "imodelId")
    top = parse_int(request.query.get("$top"), world.default_page_size)
    skip = parse_int(request.query.get("$skip"), 0)
    details = []
    if top is None or not 1 <= top <= world.max_page_size:
        details.append(detail("InvalidValue", "Page size is out of limits.", "$top"))
    if skip is None or skip < 0:
        details.append(detail("InvalidValue", "Provided $skip value is not valid.", "$skip"))
    if imodel_id is not None and not is_guid(imodel_id):
        details.append(detail("InvalidValue", INVALID_IMODEL, "imodelId"))
    if details:
        raise ApiError(422, "InvalidConnectionsRequest", CANNOT, details=details)
    assert top is not None
    assert skip is not None
    if imodel_id is None:
        matching = list(world.connections.values())
    elif imodel_id.lower() not in world.imodels:
        raise ApiError(404, "ConnectionNotFound", "Requested iModelId is not available.")
    else:
        matching = [c for c in world.connections.values() if c["iModelId"].lower() == imodel_id.lower()]

    def href(offset: int) -> dict[str, str]:
        return {"href": f"{world.base_url}/export/connections?$skip={offset}&$top={top}"}

    links = {"self": href(skip)}
    if skip > 0:
        links["prev"] = href(max(0, skip - top))
    if skip + top < len(matching):
        links["next"] = href(skip + top)
    return json_response(200, {"connections": matching[skip : skip + top], "_links": links})


def get_connection(world: World, request: RecordedRequest, connection_id: str) -> Response:
    """GET /export/connections/{id}: 200 ``{"connection"}``; 404 ``ConnectionNotFound``."""
    connection = world.connections.get(connection_id)
    if connection is None:
        raise _connection_not_found()
    return json_response(200, {"connection": connection})


def delete_connection(world: World, request: RecordedRequest, connection_id: str) -> Response:
    """DELETE /export/connections/{id}: 204; 422 bad id; 404 ``ConnectionNotFound``; 409 while in use."""
    if not (is_guid(connection_id) or is_url_safe_id(connection_id)):
        raise ApiError(
            422,
            "InvalidExportConnectionRequest",
            CANNOT,
            details=[detail("InvalidValue", "Provided connectionId value is not valid.", "connectionId")],
        )
    if connection_id not in world.connections:
        raise _connection_not_found()
    if world.connection_in_use(connection_id):
        raise ApiError(409, "ConnectionAlreadyInUse", "Connection is already being processed.")
    del world.connections[connection_id]
    world.in_use_until.pop(connection_id, None)
    return no_content()


ROUTES = (
    ("/export/connections", {"GET": list_connections, "POST": create_connection}),
    ("/export/connections/{connection_id}", {"GET": get_connection, "DELETE": delete_connection}),
)
