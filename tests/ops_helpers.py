"""Running ``python -m ops`` from tests: in-process (fast, same code path as the command line) or as a real
process, and the settings file it reads."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

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
