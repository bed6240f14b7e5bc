"""`python -m ops` on a poison queue of 100,000 dead letters, on Azurite: how long `poison list`, `poison replay --all`
and `poison purge --all` take, and that each ends having seen every letter once. Each command runs as the operator
runs it, in its own process. Run it with ``python -m bench.dead_letters [COUNT]``; not part of ``make bench``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from sandbox.azurite import Azurite, app_queues
from shared.settings import COMMAND_QUEUE, POISON_QUEUE

COUNT = 100_000
THREADS = 8  # concurrent sends while filling the queue
ROOT = Path(__file__).resolve().parents[1]


def _envelope(n: int) -> str:
    error = {"status": 403, "code": "InsufficientPermissions", "message": "no", "target": None, "details": []}
    command = {"action": "delete", "resource": "run", "id": f"run-{n}"}
    return json.dumps({"message": command, "error": error, "attempts": 1, "failedAt": "2026-11-23T08:00:00Z"})


def _ops(settings: Path, *argv: str) -> tuple[float, subprocess.CompletedProcess[str]]:
    started = time.monotonic()
    done = subprocess.run(  # noqa: S603
        [sys.executable, "-m", "ops", "--settings", str(settings), *argv], cwd=ROOT, capture_output=True, text=True
    )
    return time.monotonic() - started, done


def main(argv: list[str]) -> int:
    count = int(argv[0]) if argv else COUNT
    with Azurite() as azurite, tempfile.TemporaryDirectory() as work:
        queues = app_queues(azurite.connection_string)
        settings = Path(work) / "local.settings.json"
        values = {"AzureWebJobsStorage": azurite.connection_string}
        settings.write_text(json.dumps({"IsEncrypted": False, "Values": values}), encoding="utf-8")
        started = time.monotonic()
        with ThreadPoolExecutor(THREADS) as pool:
            list(pool.map(lambda n: queues[POISON_QUEUE].send_message(_envelope(n), time_to_live=-1), range(count)))
        print(f"filled {count} dead letters in {time.monotonic() - started:.0f} s", flush=True)

        took, listed = _ops(settings, "poison", "list", "--json")
        shown = json.loads(listed.stdout)
        print(
            f"poison list: {took:.0f} s, exit {listed.returncode}, {len(shown)} listed, "
            f"{len({x['id'] for x in shown})} distinct",
            flush=True,
        )

        took, replayed = _ops(settings, "poison", "replay", "--all")
        on_queue = queues[COMMAND_QUEUE].get_queue_properties().approximate_message_count
        left = queues[POISON_QUEUE].get_queue_properties().approximate_message_count
        print(
            f"poison replay --all: {took:.0f} s, exit {replayed.returncode}, {replayed.stdout.count('replayed  ')} "
            f"replayed, {on_queue} on itwin-commands, {left} left",
            flush=True,
        )

        with ThreadPoolExecutor(THREADS) as pool:
            list(pool.map(lambda n: queues[POISON_QUEUE].send_message(_envelope(n), time_to_live=-1), range(count)))
        took, purged = _ops(settings, "poison", "purge", "--all", "--yes")
        left = queues[POISON_QUEUE].get_queue_properties().approximate_message_count
        print(
            f"poison purge --all: {took:.0f} s, exit {purged.returncode}, {purged.stdout.strip().splitlines()[-1]}, "
            f"{left} left",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
