"""`python -m bench --smoke`: every benchmark runs and produces its rows. Counts only, never timings: the
machine is shared, so the timed figures are checked by `make bench` at full sizes, not here."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
ROWS = {
    "overhead.ratio",
    "overhead.per_call",
    "overhead.no_sdk",
    "tokens.requests",
    "calls.delete_connection",
    "calls.delete_job",
    "calls.delete_run",
    "calls.submit_job",
    "calls.cancel_job",
    "calls.create_connection_new",
    "calls.create_connection_existing",
    "calls.create_job",
    "calls.create_run",
    "rate_limit.wall",
    "rate_limit.429_share",
    "cold_start.total",
    "cold_start.own",
    "cold_start.own_source",
    "memory.peak_rss",
    *(f"scale.{n}.{figure}" for n in (1, 2) for figure in ("calls", "429_share", "dead_lettered", "wall")),
}
# Calls per command by kind, and the outcome each command must end in.
CALLS = {
    "delete_connection": (1, "succeeded"),
    "delete_job": (1, "succeeded"),
    "delete_run": (1, "succeeded"),
    "submit_job": (1, "succeeded"),
    "cancel_job": (1, "succeeded"),
    "create_connection_new": (2, "succeeded"),
    "create_connection_existing": (1, "already_done"),
    "create_job": (1, "succeeded"),
    "create_run": (1, "succeeded"),
}


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("bench")
    done = subprocess.run(  # noqa: S603 - our own interpreter and module
        [
            sys.executable,
            "-m",
            "bench",
            "--smoke",
            "--json",
            str(out / "bench.json"),
            "--markdown",
            str(out / "BENCHMARKS.md"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads((out / "bench.json").read_text(encoding="utf-8"))
    result["stdout"] = done.stdout
    result["markdown"] = (out / "BENCHMARKS.md").read_text(encoding="utf-8")
    return result


def test_every_row_is_produced_once_with_a_number(smoke):
    keys = [row["key"] for row in smoke["rows"]]
    assert sorted(keys) == sorted(ROWS)
    for row in smoke["rows"]:
        assert math.isfinite(row["value"]), row
        assert row["result"] in {"pass", "MISS", "info"}
        assert row["figure"] in smoke["stdout"]
        assert f"| {row['figure']} | {row['shown']} | {row['target']} | {row['result']} |" in smoke["markdown"]
    assert smoke["smoke"] is True


def test_overhead_runs_every_delete_through_both_paths(smoke):
    counts = smoke["counts"]
    assert counts["overhead.worker_deletes"] == counts["overhead.bare_deletes"] == 200
    assert counts["overhead.no_sdk_deletes"] == 200
    assert counts["overhead.succeeded"] == counts["overhead.expected"]
    assert counts["otel.spans_exported"] > 0


def test_sixteen_threads_share_one_token(smoke):
    counts = smoke["counts"]
    assert counts["tokens.token_requests"] == 1
    assert counts["tokens.succeeded"] == counts["tokens.commands"] == counts["tokens.api_calls"] == 200


def test_api_calls_per_command_by_kind(smoke):
    counts = smoke["counts"]
    for kind, (per_command, outcome) in CALLS.items():
        commands = counts[f"calls.{kind}.commands"]
        assert commands > 0
        assert counts[f"calls.{kind}.{outcome}"] == commands, kind
        assert counts[f"calls.{kind}.api_calls"] == per_command * commands, kind


def test_the_rate_limited_fan_out_deletes_every_connection(smoke):
    counts = smoke["counts"]
    assert counts["rate_limit.connections"] == 60
    assert counts["rate_limit.fanned_out"] == 1
    assert counts["rate_limit.deleted"] == counts["rate_limit.succeeded"] == 60
    assert counts["rate_limit.remaining"] == counts["rate_limit.dead_lettered"] == 0
    assert counts["rate_limit.calls"] >= 61  # one list page and one delete each, plus any refused


def test_cold_start_sees_the_projects_modules(smoke):
    counts = smoke["counts"]
    assert counts["cold_start.own_modules"] > 10
    assert counts["cold_start.runs"] >= 6


def test_instances_in_separate_processes_share_the_queue_and_create_every_run_once(smoke):
    counts = smoke["counts"]
    for n in (1, 2):
        runs = counts[f"scale.{n}.runs"]
        assert counts[f"scale.{n}.created"] == counts[f"scale.{n}.succeeded"] == runs
        assert counts[f"scale.{n}.dead_lettered"] == 0
        assert counts[f"scale.{n}.calls"] == runs + counts[f"scale.{n}.refused"]
    assert "## Many instances, one platform limit" in smoke["markdown"]
