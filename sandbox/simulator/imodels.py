"""iModels v2 (``/imodels``), the one operation the app needs: "Get iModel details", for an iModel's iTwin."""

from __future__ import annotations

from .protocol import ApiError, RecordedRequest, Response, json_response
from .state import World


def get_imodel(world: World, request: RecordedRequest, imodel_id: str) -> Response:
    """GET /imodels/{id}: 200 ``{"iModel": {id, displayName, name, state, iTwinId}}``; 404 ``iModelNotFound``.

    The page lists more fields (description, extent, createdDateTime, ...); the simulator answers those the app
    reads and a few more, for iModels it knows (`Simulator.add_imodel`, `create_imodel`).
    """
    itwin_id = world.imodels.get(imodel_id.lower())
    if itwin_id is None:
        raise ApiError(404, "iModelNotFound", "Requested iModel is not available.")
    name = f"iModel {imodel_id[:8]}"
    imodel = {"id": imodel_id, "displayName": name, "name": name, "state": "initialized", "iTwinId": itwin_id}
    return json_response(200, {"iModel": imodel})


ROUTES = (("/imodels/{imodel_id}", {"GET": get_imodel}),)
