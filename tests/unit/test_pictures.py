"""`python -m observability.pictures` draws one PNG per workbook query, from an export in the run's format."""

import json
from pathlib import Path

from observability.pictures import PICTURES, main

ITEMS = [
    {
        "name": "Microsoft.ApplicationInsights.Metric",
        "time": f"2026-11-23T08:00:0{n}Z",
        "data": {"baseData": {"properties": properties, "metrics": [{"name": name, "value": 1, "count": 1}]}},
    }
    for n, (name, properties) in enumerate(
        [
            ("itwin.commands", {"outcome": "succeeded", "itwin.command": "delete run"}),
            ("itwin.commands", {"outcome": "dead_lettered", "itwin.command": "delete job", "error.type": "Forbidden"}),
            ("itwin.api.client_errors", {"itwin.operation": "jobs.delete", "error.type": "Forbidden"}),
            ("itwin.token.failures", {"error.type": "TokenServiceUnavailable"}),
            ("itwin.webhook.deliveries", {"outcome": "refused", "error.type": "InvalidSignature"}),
        ]
    )
] + [
    {
        "name": "Microsoft.ApplicationInsights.RemoteDependency",
        "time": "2026-11-23T08:00:01Z",
        "data": {
            "baseData": {
                "duration": "00:00:00.020",
                "resultCode": "403",
                "properties": {"itwin.operation": "jobs.delete"},
            }
        },
    }
]
RUN = {
    "phases": [{"name": "steady", "started": "2026-11-23T08:00:00+00:00", "ended": "2026-11-23T08:00:09+00:00"}],
    "soak": False,
}


def test_each_workbook_query_gets_a_png(tmp_path: Path):
    export = tmp_path / "export"
    export.mkdir()
    (export / "items.jsonl").write_text("".join(json.dumps(i) + "\n" for i in ITEMS))
    (export / "run.json").write_text(json.dumps(RUN))

    assert main([str(export), str(tmp_path / "out")]) == 0

    pictures = sorted((tmp_path / "out").glob("*.png"))
    assert [p.stem for p in pictures] == sorted(PICTURES)
    assert all(p.read_bytes().startswith(b"\x89PNG") for p in pictures)


def test_a_folder_without_a_run_is_an_error_saying_what_to_run(tmp_path: Path, capsys):
    assert main([str(tmp_path), str(tmp_path / "out")]) == 2
    assert "make workbook-pictures" in capsys.readouterr().err
