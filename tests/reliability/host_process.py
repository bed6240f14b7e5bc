"""``python -m sandbox.host`` in a child process, for the runs that kill, restart or measure a real host."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

from reliability_kit import REPO_ROOT, wait_until

LEASE_SECONDS = 2
OUTCOME = re.compile(r"command='(?P<kind>[^']+)' outcome=(?P<outcome>\w+) correlationId=(?P<key>\S+)")


class HostProcess:
    """``python -m sandbox.host`` in a child process, its output collected line by line."""

    def __init__(
        self, environ: dict[str, str], host_json: Path, settings: Path, lease_seconds: float = LEASE_SECONDS
    ) -> None:
        args = [sys.executable, "-m", "sandbox.host", "--port", "0", "--lease-seconds", str(lease_seconds)]
        args += ["--host-json", str(host_json), "--settings", str(settings)]
        self.process = subprocess.Popen(  # noqa: S603 - this interpreter, fixed arguments
            args,
            cwd=REPO_ROOT,
            env=environ,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        line = wait_until(self._started, 60, "the host to start", interval=0.05)
        self.url = line.split()[3].rstrip(";")

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line)

    def _started(self) -> str | None:
        assert self.process.poll() is None, "".join(self.lines)
        return next((line for line in self.lines if line.startswith("Host running on")), None)

    def outcomes(self) -> list[tuple[str, str]]:
        """(correlationId, outcome) for each outcome the worker logged, in order."""
        return [(m["key"], m["outcome"]) for line in list(self.lines) if (m := OUTCOME.search(line))]

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)
        self._reader.join(timeout=10)

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
        code = self.process.wait(timeout=30)
        self._reader.join(timeout=10)
        return code
