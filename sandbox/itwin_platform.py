"""iTwin Platform simulator: the token service, three APIs and Webhooks over real HTTPS on loopback.

The real iTwin Platform cannot be reached from development and CI machines, so the project's tests and
``make dev`` run the project's client against this simulator. It follows the public API pages the project was
started from (error codes, messages and targets included) and adds controls for what the real service does
only on bad days: rate limiting, 5xx answers, proxy error pages, dropped connections and stalls.

Quick start::

    from sandbox.itwin_platform import Faults, Simulator

    with Simulator() as sim:                 # a fresh HTTPS server on 127.0.0.1, a free port
        sim.url                              # https://127.0.0.1:54321: token authority AND API root
        sim.ca_path                          # PEM of the CA to trust (set REQUESTS_CA_BUNDLE to it)
        sim.add_connection(imodel_id, "nightly")
        sim.fail_next("DELETE", "/export/connections/", 429, headers={"Retry-After": "2"})
        sim.faults = Faults(error_rate=0.2, seed=7)
        ...
        sim.api_calls("export")              # what the client sent, in order, with the answers

From a shell, ``python -m sandbox`` runs one until Ctrl-C and prints the settings that point the app at it.

Token service (one registered client, `client_id` / `client_secret`)
    ``GET /.well-known/openid-configuration``: issuer is `url` itself (path-less, like https://ims.bentley.com),
    token endpoint ``{url}/connect/token``. ``POST /connect/token`` with ``grant_type=client_credentials`` and
    the client's credentials in the form or as HTTP Basic answers ``{access_token, token_type: "Bearer",
    expires_in, scope}`` with the requested scope echoed exactly; wrong credentials: 401 ``invalid_client``;
    another grant: 400 ``unsupported_grant_type``; while `token_service_down`: 503. Tokens are opaque random
    strings, valid `token_lifetime` seconds; `revoke_tokens` forgets all of them.

API calls (every other path), checked in this order
    1. Authentication: no Authorization header: 401 ``HeaderNotFound``; unknown, revoked or expired token:
       401 ``InvalidToken``; a token without the ``itwin-platform`` scope: 403 ``InsufficientPermissions``.
    2. Rate limit of the API (first path segment), a sliding one-second window; default
       ``{"clashdetection": 6.0}`` as documented. Over it: 429 with ``Retry-After`` (whole seconds, >= 1),
       code ``RateLimitExceeded`` (Export) or ``TooManyRequests`` (the others). Refused calls do not count.
    3. Scripted answers: `fail_next`, `drop_next`, `stall_next` (these also work on the token and discovery
       paths, where they come first).
    4. Random `Faults`: errors (500/503 with the iTwin body or a proxy's HTML page, 429 with or without a body),
       dropped connections, stalls and added latency.
    5. The operation. Unknown path: 404 ``ResourceNotFound``; known path, other method: 405 with ``Allow``.

    Answers from steps 1 to 4 never change state, with one deliberate exception: a stall waits
    ``stall_seconds`` and then does the operation and answers normally. A client whose read timeout is shorter
    has given up by then, yet the work is done: exactly the case where a retried DELETE meets a 404 and a
    retried POST creates a duplicate.

Export (``/export/connections``)
    POST ``{iModelId, displayName, authenticationType: User|Service (default User)}``: 201 ``{"connection"}``
    with a GUID id (an unknown iModel becomes known). GET ``?imodelId=&$top=&$skip=`` (names in any case): a page
    in creation order with ``_links.self``, ``prev`` (when ``$skip`` > 0) and ``next`` (only while more remain),
    absolute hrefs that, as in seed 003, drop the iModel filter; without ``imodelId``, every iModel's connections;
    unknown iModel: 404 ``ConnectionNotFound`` "Requested iModelId is not available."; bad ``$top`` (not 1 to
    `max_page_size`) or iModel id: 422 ``InvalidConnectionsRequest``. GET/DELETE ``/{id}``: 200 / 204;
    404 ``ConnectionNotFound``; DELETE of a connection held with `set_connection_in_use`: 409
    ``ConnectionAlreadyInUse``; an id that is neither a GUID nor 43 URL-safe characters: 422 target
    ``connectionId``. Bad create bodies: 422 ``InvalidExportConnectionRequest`` with one detail per problem
    (``InvalidRequestBody``, ``MissingRequiredProperty``/``InvalidValue`` with targets ``imodelId``,
    ``displayName``, ``authenticationType``).

ContextCapture (``/contextcapture/jobs``)
    POST ``{type: Full|Calibration|Reconstruction, name, workspaceId (GUID), inputs: [{id, description}],
    settings: {...}}``: 201 ``{"job"}`` in state ``unsubmitted``; problems: 422 ``InvalidContextCaptureRequest``
    with details and targets. GET ``/{id}``: 200 / 404 ``JobNotFound``. PATCH ``{"state": "active"}`` submits an
    unsubmitted job, ``{"state": "cancelled"}`` cancels an unsubmitted or active one (200 ``{"job"}``); any other
    change: 422 detail ``InvalidChange``. DELETE: 204 while unsubmitted, else 422 "Cannot delete job." with
    detail ``InvalidChange`` "Cannot delete an already submitted job.". Jobs never finish by themselves: use
    `set_job_state`.

Clash Detection v1 (``/clashdetection/runs``)
    POST ``{testId, iModelId (GUID), namedVersionId, projectId?}``: 201 ``{"run": {id, _links.run.href}}``;
    problems: 422 ``InvalidClashDetectionRequest`` with details and targets. GET ``?projectId=[&$top=]``:
    ``{"runs", "_links": {"next"}}``, where ``next`` carries a ``continuationToken`` and is null on the last
    page. GET ``/{id}``: 200 ``{"run"}``; GET/DELETE of an unknown run: 404 ``ClashDetectionRunNotFound``;
    DELETE: 204 with no body. Runs keep their status until `set_run_status`.

Webhooks v2 (``/webhooks``, `sandbox.simulator.webhooks`)
    POST ``{callbackUrl (https; http on a loopback host), scope: Account|iTwin, scopeId (iTwin), secret? (>= 32),
    eventTypes}``: 201 ``{"webhook"}``, inactive, with ``secret`` only when generated; GET (paged with a
    continuation token), GET/PATCH ``/{id}`` (``active``, ``secret``, ``eventTypes``, ``callbackUrl``) answering the
    webhook object, DELETE: 204. Errors: 422 ``InvalidCreateWebhookRequest`` / ``InvalidUpdateWebhookRequest`` with a
    detail per field, 404 ``WebhookNotFound``, 403 ``InsufficientPermissions`` while `webhooks_allowed` is False.

Events (`sandbox.simulator.events`)
    `delete_imodel`, `create_imodel`, `create_named_version` and `set_job_state` (to success or failed) publish
    ``iModels.iModelDeleted.v1``, ``iModels.iModelCreated.v1``, ``iModels.namedVersionCreated.v1`` and
    ``realityModeling.jobCompleted.v1``; `publish` sends any event. Each active webhook subscribed to the type (and,
    for scope iTwin, to the event's iTwin) gets a signed POST in the background; a non-2xx answer or none within
    `delivery_timeout` is resent after each of `resend_delays`. `deliveries` records every attempt;
    `wait_for_deliveries` waits until none is pending.

Set-up and controls (all thread-safe)
    `add_imodel`, `add_connection`, `set_connection_in_use`, `add_job`, `set_job_state`, `add_run`,
    `set_run_status`, `webhooks_allowed`; `issue_token` (any scope and lifetime), `revoke_tokens`,
    `token_service_down`, `token_lifetime`; `fail_next`, `drop_next`, `stall_next`, `faults`; `rate_limits` (a
    dict, replaceable at any time), `reset_rate_limits`; `clear_requests`. Constructor options beyond the obvious:
    `max_page_size` and `default_page_size` (``$top``), `max_recorded` (requests kept), `on_answer` (called with
    each `RecordedRequest` once answered or dropped, e.g. to log), `delivery_timeout` and `resend_delays`.

Introspection
    `requests` lists every request (`RecordedRequest`: method, path, query, headers with case-insensitive
    lookups, body, api, started, status (None when dropped), fault); `api_calls(api)` leaves out token and
    discovery requests; `token_requests` counts POSTs to the token endpoint; `connections`, `jobs`, `runs` are
    copies of the state; `connections_opened` counts TLS connections (keep-alive clients open few).

Transport
    HTTP/1.1 with keep-alive over TLS, a thread per connection, Content-Length on every answer except 204
    (which has no body by definition), nothing logged per request. Every Simulator in a process shares one
    throw-away CA (made with trustme), whose PEM is at `ca_path`; the server certificate covers 127.0.0.1,
    localhost and ::1.
"""

from sandbox.simulator import DEFAULT_RATE_LIMITS, Faults, Headers, RecordedRequest, Simulator

__all__ = ["DEFAULT_RATE_LIMITS", "Faults", "Headers", "RecordedRequest", "Simulator"]
