"""Ids and bodies the tests share, in the shapes the iTwin Platform documents."""

IMODEL = "a0471655-6b18-419e-ab01-ebf4fbff9dff"
MISSING = "fc226d0d-1647-48d7-8c11-f1f74f2d9808"
JOB = "0e7f2f1a-7a0b-4c38-b0c5-9b5a6d1a2b3c"
WORKSPACE = "1db84556-49ba-41fd-8500-3657784c7752"
JOB_BODY = {
    "type": "Full",
    "name": "Survey",
    "workspaceId": WORKSPACE,
    "inputs": [{"id": "0e7f2f1a-7a0b-4c38-b0c5-9b5a6d1a2b3d", "description": "photos"}],
    "settings": {"quality": "Draft", "outputs": ["Cesium 3D Tiles"]},
}
OTHER_IMODEL = "5db42812-ebb8-4c58-98a4-2eaa99e0d8b6"
# Clash Detection v2 and Reality Modeling v2 (GUID ids; a changeset id is the iModels API's 40 hex digits)
CLASH_TEST = "c6263303-8d04-44c1-a769-675fb763c412"
CHANGESET = "380bba8dfed24971818c112d010dfbe5a1b2c3d4"
ITWIN = "3fa85f64-5717-4562-b3fc-2c963f66afa6"
REALITY_JOB_BODY = {
    "type": "Reconstruction",
    "name": "Survey mesh",
    "iTwinId": ITWIN,
    "specifications": {
        "inputs": {"scene": "7e8bd05b-f82f-4955-81e9-7d66a731857a"},
        "outputs": {"exports": [{"format": "3DTiles"}]},
    },
}
