"""`make bench` says where it is while it runs, writes into .bench/ unless asked to update the docs, and its modules
import one another without cycles."""

from __future__ import annotations

import ast
import io
import re
from pathlib import Path

from bench.progress import Progress

ROOT = Path(__file__).resolve().parents[2]


def test_each_benchmark_is_announced_with_its_place_and_the_time_so_far():
    now = [100.0]
    out = io.StringIO()
    progress = Progress(["overhead", "tokens", "scale"], stream=out, clock=lambda: now[0])
    progress("overhead")
    now[0] += 75
    progress("tokens")
    now[0] += 300
    progress.done()
    assert out.getvalue().splitlines() == [
        "bench [1/3] overhead (0:00 so far)",
        "bench [2/3] tokens (1:15 so far)",
        "bench: 2 benchmark(s) in 6:15",
    ]


def recipe(target: str) -> str:
    text = (ROOT / "Makefile").read_text(encoding="utf-8")
    match = re.search(rf"^{re.escape(target)}:.*\n((?:\t.*\n)+)", text, flags=re.M)
    assert match, target
    return match.group(1)


def test_make_bench_writes_into_an_ignored_folder_and_only_bench_docs_rewrites_the_tracked_files():
    assert "--markdown $(BENCH_OUT)/BENCHMARKS.md" in recipe("bench")
    assert "BENCH_OUT := .bench" in (ROOT / "Makefile").read_text(encoding="utf-8")
    assert ".bench/" in (ROOT / ".gitignore").read_text(encoding="utf-8").splitlines()
    assert "--markdown BENCHMARKS.md" in recipe("bench-docs")


def test_the_bench_modules_import_one_another_without_cycles():
    imports: dict[str, set[str]] = {}
    for path in (ROOT / "bench").glob("*.py"):
        found = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("bench."):
                found.add(node.module)
        imports[f"bench.{path.stem}"] = found

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        for module in imports.get(start, ()):
            if module == goal or (module not in seen and reaches(module, goal, seen | {module})):
                return True
        return False

    assert [module for module in imports if reaches(module, module, set())] == []
