"""`make bench`: the worker is fast, frugal and within its targets, measured in one run on loopback.

python -m bench              full sizes (about six minutes on two cores), each benchmark announced on stderr
python -m bench --smoke      small sizes: checks that every benchmark runs, not the targets
python -m bench --markdown BENCHMARKS.md   also write the table there (and the charts beside it, under docs/);
                                           make bench writes into .bench/, make bench-docs into BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bench.figures import SECTIONS, run_all
from bench.scale import scale_section


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="small sizes: checks the benchmarks run, not targets")
    parser.add_argument("--markdown", type=Path, help="write the results table to this Markdown file")
    parser.add_argument("--json", type=Path, help="write the rows and the counts behind them to this JSON file")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="always add a cProfile breakdown of the worker path (it is added anyway when overhead misses its target)",
    )
    parser.add_argument(
        "--only", action="append", choices=SECTIONS, help="run only this benchmark (repeatable); for trying things"
    )
    args = parser.parse_args(argv)
    table = run_all(smoke=args.smoke, profile=args.profile, only=frozenset(args.only) if args.only else None)
    print(table.render_text(), flush=True)
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        scale = table.data.get("scale")
        if scale is not None:
            from bench.charts import draw_charts  # matplotlib: only when the charts are drawn

            charts = draw_charts(scale, args.markdown.parent) if not args.smoke else {}
            table.sections.append(scale_section(scale, charts))
        args.markdown.write_text(table.render_markdown(smoke=args.smoke), encoding="utf-8")
    if args.json:
        args.json.write_text(table.to_json(), encoding="utf-8")
    missed = [row.figure for row in table.rows if not row.passed]
    if missed and not args.smoke:
        print(f"missed: {'; '.join(missed)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
