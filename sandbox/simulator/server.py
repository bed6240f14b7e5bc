"""HTTPS on loopback: a threading HTTP/1.1 server with keep-alive, and the throw-away CA it is trusted through.

The TLS handshake runs in each connection's own thread (not in the accepting loop), Nagle is off, and every
answer is written in one buffered flush, so pooled clients pay little per call. Requests are not logged.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import socket
import socketserver
import ssl
import sys
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, urlsplit

from .protocol import Headers, RecordedRequest

if TYPE_CHECKING:
    import trustme

HANDSHAKE_TIMEOUT = 10.0
IDLE_TIMEOUT = 120.0  # an idle keep-alive connection is closed after this long


class TlsMaterial:
    """A trustme CA, a server certificate for 127.0.0.1 / localhost / ::1, and the CA written to a PEM file."""

    def __init__(self) -> None:
        import trustme  # a development dependency: only the simulator needs it

        self.ca: trustme.CA = trustme.CA(organization_name="iTwin Platform Simulator")
        leaf = self.ca.issue_cert("127.0.0.1", "localhost", "::1")
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        leaf.configure_cert(self.context)
        self.ca_pem = self.ca.cert_pem.bytes()
        handle, self.ca_path = tempfile.mkstemp(prefix="itwin-simulator-ca-", suffix=".pem")
        with os.fdopen(handle, "wb") as file:
            file.write(self.ca_pem)
        atexit.register(self._remove)

    def _remove(self) -> None:
        with contextlib.suppress(OSError):
            os.unlink(self.ca_path)


_material: TlsMaterial | None = None
_material_lock = threading.Lock()


def tls_material() -> TlsMaterial:
    """The process-wide CA and server certificate, made on first use (every Simulator shares them)."""
    global _material
    with _material_lock:
        if _material is None:
            _material = TlsMaterial()
        return _material


def _read_chunked(rfile) -> bytes:
    chunks = []
    while True:
        size = int(rfile.readline().split(b";")[0].strip() or b"0", 16)
        if size == 0:
            while rfile.readline() not in (b"\r\n", b"\n", b""):
                pass
            return b"".join(chunks)
        chunks.append(rfile.read(size))
        rfile.readline()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "iTwinPlatformSimulator/1.0"
    sys_version = ""
    timeout = IDLE_TIMEOUT
    wbufsize = -1  # buffer headers and body; BaseHTTPRequestHandler flushes once per request
    server: TlsHttpServer

    def log_message(self, format: str, *args: object) -> None:
        """Requests are recorded by the simulator, not logged."""

    def _serve(self) -> None:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            body = _read_chunked(self.rfile)
        else:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length > 0 else b""
        parts = urlsplit(self.path)
        path = parts.path if parts.path == "/" else parts.path.rstrip("/")
        simulator = self.server.simulator
        request = RecordedRequest(
            method=self.command,
            path=path,
            query=dict(parse_qsl(parts.query, keep_blank_values=True)),
            headers=Headers(self.headers.items()),
            body=body,
            api=path.lstrip("/").split("/", 1)[0],
            started=simulator._clock(),
        )
        simulator._record(request)
        response = simulator._answer(request)
        if response.drop:
            self.close_connection = True
            simulator._answered(request)
            return
        request.status = response.status
        self.send_response(response.status)
        for name, value in response.headers.items():
            self.send_header(name, value)
        if response.status != 204:
            self.send_header("Content-Length", str(response.length if response.pieces else len(response.body)))
        self.end_headers()
        if self.command != "HEAD" and response.status != 204:
            self.wfile.write(response.body)
        self.wfile.flush()
        if response.pieces is not None:
            try:
                for piece in response.pieces():
                    self.wfile.write(piece)
                    self.wfile.flush()
            except OSError:  # the client stopped reading: what it is meant to do with such a body
                self.close_connection = True
        simulator._answered(request)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _serve


class TlsHttpServer(ThreadingHTTPServer):
    """A ThreadingHTTPServer (daemon threads) that speaks TLS, handshaking in each connection's thread."""

    daemon_threads = True
    request_queue_size = 256

    def __init__(self, address: tuple[str, int], context: ssl.SSLContext, simulator) -> None:
        self.context = context
        self.simulator = simulator
        self.connections_opened = 0
        self._open: set[ssl.SSLSocket] = set()
        self._open_lock = threading.Lock()
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        """Bind without HTTPServer's reverse DNS lookup (socket.getfqdn can take seconds)."""
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)

    def finish_request(self, request, client_address) -> None:  # type: ignore[override]
        """Handshake, then serve the connection's requests until it closes."""
        with contextlib.suppress(OSError):
            request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        request.settimeout(HANDSHAKE_TIMEOUT)
        try:
            connection = self.context.wrap_socket(request, server_side=True)
        except (OSError, ValueError):
            return  # failed handshake (an untrusting client, a port scan): nothing to answer
        with self._open_lock:
            self._open.add(connection)
            self.connections_opened += 1
        try:
            self.RequestHandlerClass(connection, client_address, self)
        except (OSError, ValueError):
            pass  # the client went away (timed out, reset, closed mid-answer)
        finally:
            with self._open_lock:
                self._open.discard(connection)
            with contextlib.suppress(OSError):
                connection.close()

    def handle_error(self, request, client_address) -> None:
        """Report simulator bugs on stderr; a client going away is not one."""
        error = sys.exc_info()[1]
        if not isinstance(error, OSError | ValueError):
            super().handle_error(request, client_address)

    def close_connections(self) -> None:
        """Shut every open connection, so idle keep-alive threads end and clients see the server gone."""
        with self._open_lock:
            connections = list(self._open)
        for connection in connections:
            with contextlib.suppress(OSError, ValueError):
                connection.shutdown(socket.SHUT_RDWR)
