"""Azurite (Microsoft's Storage emulator) as a subprocess, for tests and local runs: its queue and table services.

    with Azurite() as azurite:              # port 0: Azurite picks free ports and prints them
        QueueClient.from_connection_string(azurite.connection_string, "q")
        TableClient.from_connection_string(azurite.connection_string, "t")

Azurite comes from npm (``package.json`` pins 3.35.0; 3.36+ need a newer Node than this machine's 20):
``make test`` or ``npm ci`` installs it into ``node_modules``. ``--skipApiVersionCheck`` is needed because
azure-storage-queue 12.18 speaks a newer Storage API version than Azurite 3.35 knows. Storage is in memory, every
start an empty account, unless ``location`` names a folder to keep it in (``make dev PERSIST=1``).
"""

from __future__ import annotations

import collections
import re
import socket
import subprocess
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Any

__all__ = [
    "ACCOUNT_KEY",
    "ACCOUNT_NAME",
    "DEFAULT_PORTS",
    "Azurite",
    "AzuriteError",
    "AzuriteNotInstalled",
    "app_queues",
    "connection_string",
]

REPO_ROOT = Path(__file__).resolve().parents[1]

# The well-known development account every Azurite instance accepts.
ACCOUNT_NAME = "devstoreaccount1"
ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="

_LISTENING = re.compile(r"Azurite (Blob|Queue|Table) service is successfully listening at https?://[^\s:]+:(\d+)")
# Azurite's own defaults, which UseDevelopmentStorage=true and Azure Storage Explorer's local emulator connection use.
DEFAULT_PORTS = {"blob": 10000, "queue": 10001, "table": 10002}


class AzuriteError(RuntimeError):
    """Azurite did not start."""


class AzuriteNotInstalled(AzuriteError):
    """node_modules/.bin/azurite is missing."""


def connection_string(
    port: int, host: str = "127.0.0.1", table_port: int | None = None, blob_port: int | None = None
) -> str:
    """The development-account connection string for Azurite's queue service on ``host:port`` (and its table
    service on ``table_port``, its blob service on ``blob_port``)."""
    blobs = f"BlobEndpoint=http://{host}:{blob_port}/{ACCOUNT_NAME};" if blob_port else ""
    tables = f"TableEndpoint=http://{host}:{table_port}/{ACCOUNT_NAME};" if table_port else ""
    return (
        f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT_NAME};AccountKey={ACCOUNT_KEY};{blobs}"
        f"QueueEndpoint=http://{host}:{port}/{ACCOUNT_NAME};{tables}"
    )


class Azurite:
    """Azurite's blob, queue and table services in a child process; a context manager (``start()`` / ``stop()`` also
    work).

    ``port`` is the queue service's, ``table_port`` and ``blob_port`` the others'; 0 (the default for each) lets
    Azurite pick a free port, parsed from what it prints. ``start()`` returns once the queue and table ports accept
    connections (about a second). The app uses no blobs; the Functions host (``func start``) does, and Storage
    Explorer shows them. ``location`` keeps the account's data in that folder across restarts (default: in memory).
    """

    def __init__(
        self,
        port: int = 0,
        *,
        host: str = "127.0.0.1",
        table_port: int = 0,
        blob_port: int = 0,
        location: str | Path | None = None,
        root: str | Path | None = None,
        startup_timeout: float = 30.0,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.host = host
        self.requested_port = port
        self.requested_table_port = table_port
        self.requested_blob_port = blob_port
        self.location = Path(location) if location is not None else None
        self.root = Path(root) if root is not None else REPO_ROOT
        self.startup_timeout = startup_timeout
        self.extra_args = tuple(extra_args)
        self.process: subprocess.Popen[str] | None = None
        self._port: int | None = None
        self._table_port: int | None = None
        self._blob_port: int | None = None
        self._output: collections.deque[str] = collections.deque(maxlen=200)
        self._listening = threading.Event()
        self._reader: threading.Thread | None = None

    @property
    def binary(self) -> Path:
        return self.root / "node_modules" / ".bin" / "azurite"

    @property
    def port(self) -> int:
        if self._port is None:
            raise AzuriteError("Azurite is not running: call start() or use it as a context manager")
        return self._port

    @property
    def table_port(self) -> int:
        if self._table_port is None:
            raise AzuriteError("Azurite is not running: call start() or use it as a context manager")
        return self._table_port

    @property
    def blob_port(self) -> int:
        if self._blob_port is None:
            raise AzuriteError("Azurite is not running: call start() or use it as a context manager")
        return self._blob_port

    @property
    def queue_endpoint(self) -> str:
        return f"http://{self.host}:{self.port}/{ACCOUNT_NAME}"

    @property
    def connection_string(self) -> str:
        return connection_string(self.port, self.host, self.table_port, self.blob_port)

    @property
    def output(self) -> str:
        """The last lines Azurite printed."""
        return "\n".join(self._output)

    def start(self) -> Azurite:
        if self.process is not None:
            raise AzuriteError("Azurite is already started")
        if not self.binary.exists():
            raise AzuriteNotInstalled(
                f"Azurite is not installed ({self.binary} is missing): run `make test` or `npm ci` in {self.root}"
            )
        args = [
            str(self.binary),
            "--queueHost",
            self.host,
            "--queuePort",
            str(self.requested_port),
            "--tableHost",
            self.host,
            "--tablePort",
            str(self.requested_table_port),
            "--blobHost",
            self.host,
            "--blobPort",
            str(self.requested_blob_port),
            *(("--location", str(self.location)) if self.location else ("--inMemoryPersistence",)),
            "--skipApiVersionCheck",
            "--disableTelemetry",
            "--loose",
            *self.extra_args,
        ]
        self.process = subprocess.Popen(  # noqa: S603 - fixed binary, arguments built above
            args,
            cwd=self.root,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
        )
        self._reader = threading.Thread(target=self._read_output, name="azurite-output", daemon=True)
        self._reader.start()
        try:
            self._wait_until_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _read_output(self) -> None:
        assert self.process is not None
        assert self.process.stdout is not None
        for line in self.process.stdout:
            line = line.rstrip("\n")
            self._output.append(line)
            match = _LISTENING.search(line)
            if match and match.group(1) == "Queue":
                self._port = int(match.group(2))
            elif match and match.group(1) == "Table":
                self._table_port = int(match.group(2))
            elif match:
                self._blob_port = int(match.group(2))
            if None not in (self._port, self._table_port, self._blob_port):
                self._listening.set()

    def _wait_until_ready(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + self.startup_timeout
        while not self._listening.wait(0.05):
            if self.process.poll() is not None:
                self._fail(f"Azurite exited with code {self.process.returncode} before listening")
            if time.monotonic() > deadline:
                self._fail(f"Azurite did not report a listening port within {self.startup_timeout} s")
        for port in (self.port, self.table_port):
            while True:
                try:
                    with socket.create_connection((self.host, port), timeout=1):
                        break
                except OSError:
                    if self.process.poll() is not None:
                        self._fail(f"Azurite exited with code {self.process.returncode}")
                    if time.monotonic() > deadline:
                        self._fail(f"Azurite's port {port} does not accept connections")
                    time.sleep(0.02)

    def _fail(self, message: str) -> None:
        if self._reader is not None:
            self._reader.join(timeout=1)
        raise AzuriteError(f"{message}; its output:\n{self.output}")

    def stop(self, timeout: float = 10.0) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self._reader is not None:
            self._reader.join(timeout=2)
        if process.stdout is not None:
            process.stdout.close()
        self._port = None
        self._table_port = None
        self._blob_port = None
        self._listening.clear()

    def __enter__(self) -> Azurite:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def app_queues(connection_string: str, *, clear: bool = True) -> dict[str, Any]:
    """The app's command and poison queues on this account (their names are fixed): created, or emptied if they exist
    (kept as they are with ``clear=False``); and the command ledger's table, created when missing (as the Bicep
    template creates it in Azure).

    Returns ``azure.storage.queue.QueueClient`` objects by queue name.
    """
    from azure.core.exceptions import ResourceExistsError
    from azure.data.tables import TableServiceClient
    from azure.storage.queue import QueueServiceClient

    from shared.ledger import LEDGER_TABLE
    from shared.settings import COMMAND_QUEUE, POISON_QUEUE

    TableServiceClient.from_connection_string(connection_string).create_table_if_not_exists(LEDGER_TABLE)

    service = QueueServiceClient.from_connection_string(connection_string)
    clients = {name: service.get_queue_client(name) for name in (COMMAND_QUEUE, POISON_QUEUE)}
    for client in clients.values():
        try:
            client.create_queue()
        except ResourceExistsError:
            if clear:
                client.clear_messages()
    return clients
