"""python -m bench [--smoke] [--out DIR]: every scenario, one report (bench/results/report.md) with charts."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from bench import report
from bench.scenarios import SMOKE, Profile, everything


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="a few seconds per scenario, to prove the harness works")
    parser.add_argument("--out", type=Path, default=report.RESULTS, help="where report.md and the charts go")
    args = parser.parse_args(argv)
    started = time.monotonic()
    outcomes, machine = everything(SMOKE if args.smoke else Profile())
    command = "python -m bench" + (" --smoke" if args.smoke else "")
    path = report.write(outcomes, machine, command=command, out=args.out)
    for outcome in outcomes:
        if not outcome.goals and outcome.table:  # informational (no goal): print its rows
            for row in outcome.table[1:]:
                print(f"{outcome.title.split('.')[0]:>2}. {row[0]}: {' '.join(row[1:])}")
        for goal in outcome.goals:
            mark = "met" if goal.met else "MISSED"
            sign = ">=" if goal.higher_is_better else "<="
            print(f"{outcome.title.split('.')[0]:>2}. {goal.name}: {goal.measured:.2f}{goal.unit} (goal {sign} {goal.target:g}) {mark}")
    print(f"report: {path} ({time.monotonic() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
