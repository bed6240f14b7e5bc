"""Application Insights ingestion on loopback: what the Azure Monitor exporter sends, kept for inspection.

The Azure Functions Python worker exports the app's OpenTelemetry through `azure-monitor-opentelemetry` when
``PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY`` is true; the local host does the same (`sandbox.host`). Pointing
its connection string at this sink gives the telemetry exactly as Application Insights would receive it: metric
items after the exporter's own mapping, dependency items for CLIENT spans, and so on.

    with IngestionSink() as sink:
        environ["APPLICATIONINSIGHTS_CONNECTION_STRING"] = sink.connection_string
        ...
        sink.items()          # every telemetry item received, decoded, in arrival order

The sink answers like the ingestion endpoint (``{"itemsReceived", "itemsAccepted", "errors"}``) and accepts any
instrumentation key; it stores items in memory only.
"""

from __future__ import annotations

import gzip
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

__all__ = ["IngestionSink"]

# Any key is accepted; the exporter only needs one to be present.
INSTRUMENTATION_KEY = "00000000-0000-0000-0000-000000000000"


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    sink: IngestionSink


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        """The exporter posts every second or so; nothing of it is worth a log line."""

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        try:
            items = _decode(body)
        except ValueError as error:
            self._answer(400, {"itemsReceived": 0, "itemsAccepted": 0, "errors": [{"message": str(error)}]})
            return
        self.server.sink._keep(items)
        self._answer(200, {"itemsReceived": len(items), "itemsAccepted": len(items), "errors": []})

    def _answer(self, status: int, doc: dict[str, Any]) -> None:
        payload = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


def _decode(body: bytes) -> list[dict[str, Any]]:
    """A JSON array of items, or one item per line (both are what exporters send)."""
    text = body.decode("utf-8").strip()
    if text.startswith("["):
        return list(json.loads(text))
    return [json.loads(line) for line in text.splitlines() if line.strip()]


class IngestionSink:
    """An Application Insights ingestion endpoint on ``127.0.0.1``; a context manager."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._address = (host, port)
        self._items: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> IngestionSink:
        self._server = _Server(self._address, _Handler)
        self._server.sink = self
        self._thread = threading.Thread(target=self._server.serve_forever, name="ingestion", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> IngestionSink:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("the sink is not started")
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/"

    @property
    def connection_string(self) -> str:
        """An Application Insights connection string whose ingestion endpoint is this sink."""
        return f"InstrumentationKey={INSTRUMENTATION_KEY};IngestionEndpoint={self.url}"

    def items(self) -> list[dict[str, Any]]:
        """Every item received so far (the exporter's envelopes: name, time, tags, data.baseType/baseData)."""
        with self._lock:
            return list(self._items)

    def _keep(self, items: list[dict[str, Any]]) -> None:
        with self._lock:
            self._items.extend(items)
