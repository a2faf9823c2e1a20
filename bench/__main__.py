"""python -m bench [--smoke] [--out DIR] [--only NAME|NUMBER ...]: every scenario, one report
(bench/results/report.md) with charts; or, with --only, the scenarios named, printed in full.

--only takes scenario numbers (3, 12) or names (cache-disabled, hostile); see bench.scenarios.SELECTABLE.
A run of some scenarios writes a report only where --out says: the committed report and README's table
stay those of the last full run.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from bench import report
from bench.scenarios import SELECTABLE, SMOKE, Outcome, Profile, everything


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--smoke", action="store_true", help="a few seconds per scenario, to prove the harness works")
    parser.add_argument("--out", type=Path, default=None, help="where report.md and the charts go (default: bench/results)")
    choices = sorted(
        {*SELECTABLE, *(n for numbers in SELECTABLE.values() for n in numbers)}, key=lambda c: (c[0].isalpha(), c.zfill(3))
    )
    parser.add_argument("--only", nargs="+", metavar="SCENARIO", choices=choices, help=f"one of {', '.join(choices)}")
    args = parser.parse_args(argv)
    started = time.monotonic()
    only = set(args.only) if args.only else None
    outcomes, machine = everything(SMOKE if args.smoke else Profile(), only)
    command = "python -m bench" + (" --smoke" if args.smoke else "") + (f" --only {' '.join(args.only)}" if args.only else "")
    out = args.out if args.out is not None or only else report.RESULTS
    for outcome in outcomes:
        if only:
            _print(outcome)
        elif not outcome.goals and outcome.table:  # informational (no goal): print its rows
            for row in outcome.table[1:]:
                print(f"{outcome.title.split('.')[0]:>2}. {row[0]}: {' '.join(row[1:])}")
        for goal in outcome.goals:
            mark = "met" if goal.met else "MISSED"
            sign = ">=" if goal.higher_is_better else "<="
            print(
                f"{outcome.title.split('.')[0]:>2}. {goal.name}: {goal.measured:.2f}{goal.unit} (goal {sign} {goal.target:g}) {mark}"
            )
    if out is None:
        print(f"no report written (--only without --out) ({time.monotonic() - started:.0f} s)")
        return 0
    path = report.write(outcomes, machine, command=command, out=out)
    print(f"report: {path} ({time.monotonic() - started:.0f} s)")
    return 0


def _print(outcome: Outcome) -> None:
    """One scenario as the report shows it, as plain text tables."""
    print(f"\n## {outcome.title}\n")
    rows: list[tuple[str, ...]] = []
    if outcome.series:
        rows = [("Contender", "req/s", "p50", "p99", "non-2xx", "socket errors")]
        rows += [
            (s.label, f"{s.rps:,.0f}", f"{s.p50_ms:.2f} ms", f"{s.p99_ms:.2f} ms", str(s.non_2xx), str(s.errors))
            for s in outcome.series.values()
        ]
    for table in (rows, outcome.table):
        if table:
            widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
            for row in table:
                print(" | ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
            print()
    for note in outcome.notes:
        print(f"- {note}")
    print()


if __name__ == "__main__":
    sys.exit(main())
