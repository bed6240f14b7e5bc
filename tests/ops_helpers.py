"""Running ``python -m ops`` from tests: in-process (fast, same code path as the command line) or as a real
process, and the settings file it reads."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ops.cli import main
from ops.output import Output

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Result:
    code: int
    out: str
    err: str


def write_settings(path: Path, values: dict[str, str]) -> Path:
    path.write_text(json.dumps({"IsEncrypted": False, "Values": values}, indent=2), encoding="utf-8")
    return path


def read_settings(path: Path) -> dict[str, str]:
    return json.loads(path.read_text(encoding="utf-8"))["Values"]


def run_ops(settings: Path, *argv: str) -> Result:
    """The tool in this process, with only the settings file as configuration (the environment adds nothing)."""
    out, err = io.StringIO(), io.StringIO()
    environ = {"REQUESTS_CA_BUNDLE": os.environ.get("REQUESTS_CA_BUNDLE", "")}
    code = main(["--settings", str(settings), *argv], output=Output(out, err, interactive=False), environ=environ)
    return Result(code, out.getvalue(), err.getvalue())


def ops_process(settings: Path, *argv: str, **popen: object) -> subprocess.Popen[str]:
    """The tool as an operator runs it: ``python -m ops`` in its own process."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ITWIN_", "AzureWebJobs"))}
    return subprocess.Popen(  # noqa: S603
        [sys.executable, "-m", "ops", "--settings", str(settings), *argv],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **popen,
    )


def replay_killed_half_way_and_again(settings: Path, command_queue: Any, total: int) -> Result:
    """``poison replay --all`` killed with SIGKILL once 6 or more of ``total`` commands are back on ``command_queue``
    (a ``QueueClient``), then run again to the end: the second run's result."""
    first = ops_process(settings, "poison", "replay", "--all", "--rate", "12", "--lease", "2")
    deadline = time.monotonic() + 30
    while len(command_queue.peek_messages(max_messages=32)) < 6 and time.monotonic() < deadline:
        time.sleep(0.01)
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=10)
    sent_before = len(command_queue.peek_messages(max_messages=32))
    assert 6 <= sent_before < total, "the kill came before or after the replay, not half-way"

    second = ops_process(settings, "poison", "replay", "--all", "--lease", "2", "--wait", "10")
    out, err = second.communicate(timeout=60)
    return Result(second.returncode, out, err)
