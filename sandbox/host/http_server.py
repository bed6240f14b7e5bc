"""HTTP triggers: the server on ``127.0.0.1:<port>`` and :func:`dispatch`, which routes a request to its function
and turns the function's result into a response."""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Iterable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlsplit

import azure.functions as func

from sandbox.host.invocation import Context, call

if TYPE_CHECKING:
    from sandbox.host.local_host import LocalHost

log = logging.getLogger("sandbox.host")  # one logger for the whole local host

HTTP_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "TRACE")


class HttpServer(ThreadingHTTPServer):
    """The host's HTTP server: one thread per request, each handed to :func:`dispatch`."""

    daemon_threads = True
    host: LocalHost


class Handler(BaseHTTPRequestHandler):
    """Reads a request (chunked bodies too), dispatches it, writes the answer and closes the connection."""

    server: HttpServer
    protocol_version = "HTTP/1.1"
    server_version = "sandbox-functions-host"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s - %s", self.address_string(), format % args)

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _handle(self) -> None:
        self.close_connection = True
        try:
            body = self._read_body()
        except (ValueError, OSError):
            self._send(400, {}, b"bad request body")
            return
        status, headers, payload = dispatch(
            self.server.host, self.command, self.path, dict(_merge_headers(self.headers.items())), body
        )
        self._send(status, headers, payload)

    def _send(self, status: int, headers: Mapping[str, str], payload: bytes) -> None:
        self.send_response(status)
        for name, value in headers.items():
            if name.lower() in ("content-length", "transfer-encoding", "connection", "date", "server"):
                continue
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD" and payload:
            self.wfile.write(payload)


for _method in HTTP_METHODS:
    setattr(Handler, f"do_{_method}", Handler._handle)


def _merge_headers(items: Iterable[tuple[str, str]]) -> Iterable[tuple[str, str]]:
    merged: dict[str, tuple[str, str]] = {}
    for name, value in items:
        key = name.lower()
        merged[key] = (merged[key][0], f"{merged[key][1]}, {value}") if key in merged else (name, value)
    return merged.values()


def _response_parts(result: Any) -> tuple[int, dict[str, str], bytes]:
    if isinstance(result, func.HttpResponse):
        headers = dict(result.headers.items())
        if not any(name.lower() == "content-type" for name in headers):
            mimetype = result.mimetype
            headers["Content-Type"] = (
                f"{mimetype}; charset={result.charset}" if mimetype.startswith("text/") else mimetype
            )
        return result.status_code, headers, result.get_body() or b""
    if result is None:
        return 204, {}, b""
    if isinstance(result, str):
        return 200, {"Content-Type": "text/plain; charset=utf-8"}, result.encode()
    if isinstance(result, bytes | bytearray):
        return 200, {"Content-Type": "application/octet-stream"}, bytes(result)
    return 200, {"Content-Type": "application/json; charset=utf-8"}, json.dumps(result).encode()


def dispatch(
    host: LocalHost, method: str, target: str, headers: dict[str, str], body: bytes
) -> tuple[int, dict[str, str], bytes]:
    """Route one request to its function and answer as the Functions host does: 404 for an unknown route, 405 for
    another method, 500 when the function raises; returns (status, headers, body)."""
    parts = urlsplit(target)
    path = parts.path or "/"
    matches = [(f, p) for f in host.http_functions if (p := f.compiled.match(path)) is not None]
    if not matches:
        if path == "/" and method in ("GET", "HEAD"):
            return 200, {"Content-Type": "text/plain; charset=utf-8"}, b"Your local Functions host is running.\n"
        return 404, {}, b""
    allowed = [(f, p) for f, p in matches if f.allows(method)]
    if not allowed:
        methods = sorted({m for f, _ in matches for m in (f.methods or HTTP_METHODS)})
        return 405, {"Allow": ", ".join(methods)}, b""
    function, route_params = max(allowed, key=lambda fp: (fp[0].compiled.literal_length, -len(fp[0].compiled.groups)))
    params: dict[str, str] = {}
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        params[key] = f"{params[key]},{value}" if key in params else value
    host_header = next((v for k, v in headers.items() if k.lower() == "host"), f"{host.bind}:{host.port}")
    url = f"http://{host_header}{target if target.startswith('/') else path}"
    request = func.HttpRequest(
        method=method, url=url, headers=headers, params=params, route_params=route_params, body=body
    )
    invocation_id = str(uuid.uuid4())
    kwargs: dict[str, Any] = {function.binding_name: request}
    if function.wants_context:
        kwargs["context"] = Context(invocation_id, function.name, str(Path.cwd()))
    with host._http_changed:
        host._http_in_flight += 1
    started = time.monotonic()
    log.log(
        host.invocation_log_level,
        "Executing '%s' (Reason='This function was programmatically called via the host APIs.', Id=%s)",
        function.name,
        invocation_id,
    )
    try:
        result = call(function.user_function, kwargs)
        status, response_headers, payload = _response_parts(result)
    except Exception:
        log.exception("Executed '%s' (Failed, Id=%s)", function.name, invocation_id)
        host._count(function.name, "failed")
        return 500, {}, b""
    finally:
        with host._http_changed:
            host._http_in_flight -= 1
            host._http_changed.notify_all()
    elapsed_ms = (time.monotonic() - started) * 1000
    log.log(
        host.invocation_log_level,
        "Executed '%s' (Succeeded, Id=%s, %s %s -> %s, %.0f ms)",
        function.name,
        invocation_id,
        method,
        path,
        status,
        elapsed_ms,
    )
    host._count(function.name, "succeeded")
    return status, response_headers, payload
