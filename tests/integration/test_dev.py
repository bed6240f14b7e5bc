"""`make dev` end to end: the printed curl deletes the demo connections, and the outcomes are shown."""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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


def test_make_dev_runs_the_app_and_the_printed_curl_deletes_the_demo_connections(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ITWIN_", "AzureWebJobs"))}
    port = free_port()
    command = [
        sys.executable,
        "-u",
        "-m",
        "sandbox.dev",
        "--settings",
        str(tmp_path / "none.json"),
        "--port",
        str(port),
    ]
    command += ["--simulator-port", str(free_port()), "--azurite-port", str(free_port())]
    process = subprocess.Popen(  # noqa: S603
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    lines: list[str] = []
    try:
        curl = read_until(process, "curl -i", lines).strip()
        args = shlex.split(curl)
        signature = args[args.index("-H") + 1].split(": ", 1)[1]
        body = (ROOT / args[-1].lstrip("@")).read_bytes()
        response = requests.post(args[4], data=body, headers={"Signature": signature}, timeout=5)
        assert response.status_code == 202
        read_until(process, "outcome=fanned_out", lines)
        read_until(process, "outcome=succeeded", lines)
        read_until(process, "outcome=succeeded", lines)
        assert requests.get(f"http://127.0.0.1:{port}/api/health", timeout=5).json() == {"status": "ok"}
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=20)
    assert process.returncode == 0
