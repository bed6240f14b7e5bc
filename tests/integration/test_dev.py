"""`make dev` end to end: the tool registers the webhook, the simulator delivers the demo iModel's deletion, and
its connections go; the tool works against the sandbox from another process."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import requests

from sandbox.azurite import Azurite, app_queues

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def azurite_on_free_ports() -> list[str]:
    """make dev's options for Azurite on free ports: tests leave the default ports to a developer's make dev."""
    return [f"--azurite{option}-port={free_port()}" for option in ("-blob", "", "-table")]


def start_dev(tmp_path: Path, port: int, *extra: str, **popen: Any) -> subprocess.Popen:
    """``python -m sandbox.dev`` on free ports (the functions on ``port``) with no ITWIN_ or storage settings from
    this environment, in a session of its own (see `stop`), its output on stdout."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ITWIN_", "AzureWebJobs"))}
    command = [sys.executable, "-u", "-m", "sandbox.dev", "--settings", str(tmp_path / "none.json")]
    command += ["--port", str(port), "--simulator-port", str(free_port()), *azurite_on_free_ports(), *extra]
    return subprocess.Popen(  # noqa: S603
        command,
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        **popen,
    )


def stop(process: subprocess.Popen, signum: int) -> None:
    """Stop ``process`` (started in a session of its own) with ``signum``; one that has not ended 20 s later is
    killed with everything it started, and the test fails."""
    process.send_signal(signum)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        raise AssertionError(f"make dev did not stop on {signal.Signals(signum).name}") from None


def read_until(process, text, lines, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        lines.append(line)
        if text in line:
            return line
    raise AssertionError(f"{text!r} not printed; got:\n{''.join(lines)}")


def test_make_dev_registers_the_webhook_with_the_tool_and_a_deleted_imodels_connections_go(tmp_path):
    """Started as a shell without job control starts a background command (SIGINT ignored), and stopped by
    Ctrl-C's signal all the same."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ITWIN_", "AzureWebJobs"))}
    port = free_port()
    process = start_dev(tmp_path, port, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    lines: list[str] = []
    try:
        read_until(process, "activated webhook", lines)
        read_until(process, "webhook iModels.iModelDeleted.v1", lines)
        read_until(process, "outcome=fanned_out", lines)
        read_until(process, "outcome=succeeded", lines)
        read_until(process, "outcome=succeeded", lines)
        assert requests.get(f"http://127.0.0.1:{port}/api/health", timeout=5).json() == {"status": "ok"}
        listed = subprocess.run(
            [sys.executable, "-m", "ops", "--settings", ".sandbox/local.settings.json", "webhook", "list"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert listed.returncode == 0, listed.stderr
        assert f"http://127.0.0.1:{port}/api/webhooks/itwin" in listed.stdout.splitlines()[1]
        assert listed.stdout.splitlines()[1].startswith("* ")
    finally:
        stop(process, signal.SIGINT)
    assert process.returncode == 0
    assert not any("curl" in line for line in lines)


def test_make_dev_with_its_port_taken_says_which_port_and_how_to_choose_another(tmp_path):
    # GIVEN something already listening on the port make dev wants
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ITWIN_", "AzureWebJobs"))}
        # WHEN make dev starts
        done = subprocess.run(  # noqa: S603
            [sys.executable, "-m", "sandbox.dev", "--settings", str(tmp_path / "none.json"), "--port", str(port)],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
        )
    # THEN it stops at once, in one line per port, naming the port and the way to choose another; no traceback
    assert done.returncode == 1
    assert f"port {port} (the functions) is taken" in done.stderr
    assert f"make dev PORT={port + 1}" in done.stderr
    assert "Traceback" not in done.stderr


def test_make_dev_with_an_azurite_port_taken_uses_a_free_one_and_says_how_storage_explorer_connects(tmp_path):
    # GIVEN something already listening on the port make dev wants for Azurite's blob service
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        blob_port = holder.getsockname()[1]
        # WHEN make dev starts
        process = start_dev(tmp_path, free_port(), f"--azurite-blob-port={blob_port}")
        lines: list[str] = []
        try:
            started = read_until(process, "Azurite: blob", lines)
            explorer = read_until(process, "Storage Explorer:", lines)
        finally:
            stop(process, signal.SIGTERM)
    # THEN it says which port was taken, runs Azurite's blob service on another, and prints the connection string
    assert f"port {blob_port} (Azurite's blob service) is taken" in "".join(lines)
    assert f"blob {blob_port}," not in started
    assert "in memory; make dev PERSIST=1 keeps it" in started
    assert "BlobEndpoint=http://127.0.0.1:" in explorer
    assert process.returncode == 0


def test_azurite_with_a_location_keeps_the_queues_messages_when_restarted(tmp_path):
    # GIVEN Azurite keeping its data in a folder, as make dev PERSIST=1 does, and a message on the command queue
    with Azurite(location=tmp_path) as azurite:
        app_queues(azurite.connection_string)["itwin-commands"].send_message("kept")
    # WHEN it starts again on the same folder and make dev sets the queues up without clearing them
    with Azurite(location=tmp_path) as azurite:
        queues = app_queues(azurite.connection_string, clear=False)
        # THEN the message is still there
        assert [m.content for m in queues["itwin-commands"].peek_messages()] == ["kept"]
