"""Azurite (Microsoft's Storage emulator) as a subprocess, for tests and local runs: its queue and table services.

    with Azurite() as azurite:              # port 0: Azurite picks free ports and prints them
        QueueClient.from_connection_string(azurite.connection_string, "q")
        TableClient.from_connection_string(azurite.connection_string, "t")

Azurite comes from npm (``package.json`` pins 3.35.0; 3.36+ need a newer Node than this machine's 20):
``make test`` or ``npm ci`` installs it into ``node_modules``. ``--skipApiVersionCheck`` is needed because
azure-storage-queue 12.18 speaks a newer Storage API version than Azurite 3.35 knows. Storage is in memory:
every start is an empty account.
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

_LISTENING = re.compile(r"Azurite (Queue|Table) service is successfully listening at https?://[^\s:]+:(\d+)")


class AzuriteError(RuntimeError):
    """Azurite did not start."""


class AzuriteNotInstalled(AzuriteError):
    """node_modules/.bin/azurite is missing."""


def connection_string(port: int, host: str = "127.0.0.1", table_port: int | None = None) -> str:
    """The development-account connection string for Azurite's queue service on ``host:port`` (and its table
    service on ``table_port``)."""
    tables = f"TableEndpoint=http://{host}:{table_port}/{ACCOUNT_NAME};" if table_port else ""
    return (
        f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT_NAME};AccountKey={ACCOUNT_KEY};"
        f"QueueEndpoint=http://{host}:{port}/{ACCOUNT_NAME};{tables}"
    )


class Azurite:
    """Azurite's queue and table services in a child process; a context manager (``start()`` / ``stop()`` also work).

    ``port=0`` (and ``table_port=0``) lets Azurite pick free ports, parsed from what it prints. Storage is in memory
    unless ``location`` names a directory: then it is kept there, so that a stopped Azurite started again on the same
    ports and location is the same account (the shared pacing schedule's stop-and-restart test does that).
    ``start()`` returns once both ports accept connections (about a second). Its blob service runs too, on a free
    port, unused: the all-in-one ``azurite`` is the one that prints the ports it took.
    """

    def __init__(
        self,
        port: int = 0,
        *,
        host: str = "127.0.0.1",
        root: str | Path | None = None,
        startup_timeout: float = 30.0,
        extra_args: tuple[str, ...] = (),
        table_port: int = 0,
        location: str | Path | None = None,
    ) -> None:
        self.host = host
        self.requested_port = port
        self.requested_table_port = table_port
        self.location = Path(location) if location is not None else None
        self.root = Path(root) if root is not None else REPO_ROOT
        self.startup_timeout = startup_timeout
        self.extra_args = tuple(extra_args)
        self.process: subprocess.Popen[str] | None = None
        self._port: int | None = None
        self._table_port: int | None = None
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
    def queue_endpoint(self) -> str:
        return f"http://{self.host}:{self.port}/{ACCOUNT_NAME}"

    @property
    def connection_string(self) -> str:
        return connection_string(self.port, self.host, self.table_port)

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
            "0",
            *(("--location", str(self.location)) if self.location is not None else ("--inMemoryPersistence",)),
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
            elif match:
                self._table_port = int(match.group(2))
            if self._port is not None and self._table_port is not None:
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
        self._listening.clear()

    def __enter__(self) -> Azurite:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def app_queues(connection_string: str) -> dict[str, Any]:
    """The app's command and poison queues on this account (their names are fixed): created, or emptied if they exist;
    and the command ledger's table, created when missing (as the Bicep template creates it in Azure).

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
            client.clear_messages()
    return clients
