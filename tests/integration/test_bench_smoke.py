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
    "ledger.accept_requests",
    "ledger.accept_keyed",
    "ledger.accept_1",
    "ledger.accept_100",
    *(f"ledger.worker_{kind}" for kind in CALLS),
    "ledger.worker_fan_out",
    "ledger.worker_again_create_run",
    "ledger.worker_again_delete_run",
    "ledger.overhead_ratio",
    "ledger.overhead_per_call",
    *(
        f"scale.{mode}.{start}.{n}.{figure}"
        for mode in ("local", "shared")
        for start, n in (("together", 1), ("together", 2), ("spread", 2))
        for figure in ("calls", "429_share", "reschedules", "dead_lettered", "wall")
    ),
    *(f"scale.shared.{start}.{n}.table" for start, n in (("together", 1), ("together", 2), ("spread", 2))),
    *(
        f"scale.model.{mode}.{start}.8.{figure}"
        for mode in ("local", "shared")
        for start in ("together", "spread")
        for figure in ("share", "calls", "reschedules", "wall", "queue_per_s")
    ),
    *(f"scale.model.shared.{start}.8.table" for start in ("together", "spread")),
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


def test_accepting_a_batch_of_100_commands_is_one_table_transaction(smoke):
    counts = smoke["counts"]
    assert counts["ledger.accept.accepted"] == counts["ledger.accept.batch"] == 100
    assert counts["ledger.accept.table_requests"] == counts["ledger.accept.transactions"] == 2  # rows, then sent
    assert counts["ledger.accept.queue_requests"] == 200  # each message sent hidden, then shown
    keyed = counts["ledger.accept_keyed.commands"]
    assert counts["ledger.accept_keyed.accepted"] == keyed
    assert counts["ledger.accept_keyed.transactions"] == 2
    assert counts["ledger.accept_keyed.table_requests"] == keyed + 2  # an index row per idempotency key


def test_the_worker_makes_two_table_round_trips_per_command_and_three_per_create(smoke):
    counts = smoke["counts"]
    for kind, (per_command, outcome) in CALLS.items():
        commands = counts[f"ledger.worker.{kind}.commands"]
        assert commands > 0
        assert counts[f"ledger.worker.{kind}.{outcome}"] == commands, kind
        round_trips = 3 if kind.startswith("create") else 2
        assert counts[f"ledger.worker.{kind}.table_requests"] == round_trips * commands, kind
        per_command += kind == "create_run"  # with the ledger, the matching runs are listed before the create
        assert counts[f"ledger.worker.{kind}.api_calls"] == per_command * commands, kind


def test_a_fan_out_records_its_children_in_one_transaction_and_each_child_takes_two_round_trips(smoke):
    counts = smoke["counts"]
    assert counts["ledger.worker.fan_out.fanned_out"] == counts["ledger.worker.fan_out.commands"] == 1
    assert counts["ledger.worker.fan_out.table_requests"] == 5  # read, children, sent, children listed, result
    children = counts["ledger.worker.fan_out.children_succeeded"]
    assert children == 3
    assert counts["ledger.worker.fan_out.children_table_requests"] == 2 * children


def test_a_command_delivered_again_once_done_calls_no_api(smoke):
    counts = smoke["counts"]
    for kind, per_command in (("again_create_run", 1), ("again_delete_run", 1)):
        commands = counts[f"ledger.worker.{kind}.commands"]
        assert counts[f"ledger.worker.{kind}.already_done"] == commands > 0, kind
        assert counts[f"ledger.worker.{kind}.table_requests"] == per_command * commands, kind
        assert counts[f"ledger.worker.{kind}.api_calls"] == 0, kind


def test_the_ledger_backed_worker_deletes_every_connection_with_two_round_trips_each(smoke):
    counts = smoke["counts"]
    assert counts["ledger.overhead.succeeded"] == counts["ledger.overhead.expected"]
    assert counts["ledger.overhead.table_requests"] == 2 * counts["ledger.overhead.deletes"]


def test_instances_in_separate_processes_share_the_queue_and_create_every_run_once(smoke):
    counts = smoke["counts"]
    for key in (
        f"scale.{mode}.{start}.{n}"
        for mode in ("local", "shared")
        for start, n in (("together", 1), ("together", 2), ("spread", 2))
    ):
        runs = counts[f"{key}.runs"]
        assert counts[f"{key}.created"] == counts[f"{key}.succeeded"] == runs
        assert counts[f"{key}.dead_lettered"] == 0
        assert counts[f"{key}.calls"] == runs + counts[f"{key}.refused"]
    assert "## Many instances, one platform limit" in smoke["markdown"]
