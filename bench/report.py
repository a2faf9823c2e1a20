"""Write bench/results/report.md and its PNG charts from the scenarios' outcomes.

`python -m bench.report` redraws the charts from a written report.md (after a change to the charts).
"""

from __future__ import annotations

import argparse
import datetime
import re
import sys
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING

from bench.harness import Measurement, Series
from bench.scenarios import Goal, Outcome

if TYPE_CHECKING:
    from matplotlib.figure import Figure

RESULTS = Path(__file__).resolve().parent / "results"


README = RESULTS.parent / "README.md"  # bench/README.md: the latest full run only
START, END = "<!-- performance:start -->", "<!-- performance:end -->"


def write(outcomes: list[Outcome], machine: dict[str, str], *, command: str, out: Path = RESULTS) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    charts = _charts(outcomes, out)
    goals = _goals_table(outcomes)
    lines = [
        "# Performance report",
        "",
        (
            f"Generated {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M UTC} by `{command}`. Every figure is a median "
            "over alternating rounds in this one run on this one machine; ratios compare contenders measured side by side."
        ),
        "",
        "| Machine | |",
        "|---|---|",
        *[f"| {key} | {value} |" for key, value in machine.items()],
        "",
        "## Goals",
        "",
        *goals,
    ]
    lines += ["", *[f"![{name}]({name})" for name in charts], ""]
    for outcome in outcomes:
        lines += [f"## {outcome.title}", ""]
        if outcome.series:
            lines += ["| Contender | req/s | p50 | p99 | non-2xx | socket errors |", "|---|---|---|---|---|---|"]
            for s in outcome.series.values():
                lines.append(f"| {s.label} | {s.rps:,.0f} | {s.p50_ms:.2f} ms | {s.p99_ms:.2f} ms | {s.non_2xx} | {s.errors} |")
            lines.append("")
        if outcome.table:
            header, *rows = outcome.table
            lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            lines += ["| " + " | ".join(row) + " |" for row in rows]
            lines.append("")
        lines += [f"- {note}" for note in outcome.notes]
        lines.append("")
    report = out / "report.md"
    report.write_text("\n".join(lines))
    if out == RESULTS:
        _update_readme(goals, machine)
    return report


def _goals_table(outcomes: list[Outcome]) -> list[str]:
    rows = ["| Scenario | Measure | Measured | Goal | Met |", "|---|---|---|---|---|"]
    for outcome in outcomes:
        for goal in outcome.goals:
            sign = "≥" if goal.higher_is_better else "≤"
            rows.append(
                f"| {outcome.title.split('.')[0]} | {goal.name} | {_number(goal.measured)}{goal.unit} | "
                f"{sign} {_number(goal.target)}{goal.unit} | {'yes' if goal.met else '**no**'} |"
            )
    return rows


def _update_readme(goals: list[str], machine: dict[str, str]) -> None:
    """bench/README.md shows the latest full run."""
    text = README.read_text()
    if START not in text or END not in text:
        return
    block = [START, f"Latest run ({datetime.datetime.now(datetime.UTC):%Y-%m-%d}, {machine['CPU']}):", "", *goals, "",
             "![throughput](results/throughput.png)", END]  # fmt: skip
    before, rest = text.split(START, 1)
    after = rest.split(END, 1)[1]
    README.write_text(before + "\n".join(block) + after)


def _number(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.2f}"


def _charts(outcomes: list[Outcome], out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    charts = {"throughput.png": _throughput_chart, "latency.png": _latency_chart, "goals.png": _goals_chart}
    for name, draw in charts.items():
        figure = draw(outcomes)
        figure.savefig(out / name, dpi=110)
        plt.close(figure)
    return list(charts)


OURS, PEER, MET, MISSED, GOAL = "#2b7bba", "#9aa5b1", "#3a9d5d", "#d1495b", "#333333"
# Value labels sit on white so a goal line crossing them cannot hide a digit.
LABEL = {"fontsize": 9, "bbox": {"facecolor": "white", "edgecolor": "none", "pad": 1}}


def _wrap(text: str, width: int) -> str:
    return "\n".join(textwrap.wrap(text, width)) or text


def _goal_text(goal: Goal) -> str:
    sign = "≥" if goal.higher_is_better else "≤"
    verdict = "met" if goal.met else "missed"
    return f"Goal: {goal.name} {sign} {_number(goal.target)}{goal.unit} — measured {_number(goal.measured)}{goal.unit}, {verdict}"


def _throughput_chart(outcomes: list[Outcome]) -> Figure:
    """Scenarios 1–3, one panel each on its own scale, so Flask's 24 req/s shows beside 26,700."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    panels = [o for o in outcomes if o.series and o.title.startswith(("1.", "2.", "3."))]
    rows = [len(o.series) for o in panels]
    figure, axes = plt.subplots(len(panels), 1, figsize=(11, 0.42 * sum(rows) + 1.25 * len(panels) + 0.6),
                                height_ratios=rows, layout="constrained", squeeze=False)  # fmt: skip
    figure.suptitle("Throughput, requests per second (median over rounds; blue: this service)", fontsize=13, weight="bold")
    for ax, outcome in zip(axes[:, 0], panels, strict=True):
        series = list(outcome.series.values())
        values = [s.rps for s in series]
        bars = ax.barh(range(len(series)), values, color=[OURS if s.label.startswith("this service") else PEER for s in series])
        ax.set_yticks(range(len(series)), [_wrap(s.label, 34) for s in series], fontsize=9)
        ax.invert_yaxis()
        ax.bar_label(bars, [f"{v:,.0f}" for v in values], padding=4, **LABEL)
        marks = {g.target for g in outcome.goals if g.unit.strip() == "req/s"}  # absolute goals: a line on this scale
        for target in marks:
            ax.axvline(target, color=GOAL, linestyle="--", linewidth=1, zorder=2.5)
            quiet_row = values.index(min(values))  # beside the shortest bar the label hides nothing
            ax.annotate(f"goal ≥ {target:,.0f} req/s", (target, quiet_row), xytext=(4, 0), textcoords="offset points",
                        va="center", color=GOAL, **LABEL)  # fmt: skip
        ax.set_xlim(0, max([*values, *marks]) * 1.15)
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:,.0f}"))
        ax.tick_params(axis="x", labelsize=8.5)
        goals = "\n".join(_goal_text(g) for g in outcome.goals)
        ax.set_title(_wrap(outcome.title, 110) + ("\n" + goals if goals else ""), loc="left", fontsize=9.5)
        ax.spines[["top", "right"]].set_visible(False)
    return figure


def _latency_chart(outcomes: list[Outcome]) -> Figure:
    """Scenario 4: p50 and p99 of /health, idle and beside the readers, with the p99 goal on each loaded row."""
    import matplotlib.pyplot as plt

    outcome = next(o for o in outcomes if o.title.startswith("4."))
    series = list(outcome.series.values())
    figure, ax = plt.subplots(figsize=(11, 1.0 * len(series) + 2.2), layout="constrained")
    figure.suptitle(_wrap(outcome.title, 90), fontsize=12, weight="bold")
    positions = range(len(series))
    p50 = ax.barh([i - 0.2 for i in positions], [s.p50_ms for s in series], height=0.38, color="#edae49", label="p50")
    p99 = ax.barh([i + 0.2 for i in positions], [s.p99_ms for s in series], height=0.38, color=MISSED, label="p99")
    ax.bar_label(p50, [f"{s.p50_ms:.2f} ms" for s in series], padding=4, **LABEL)
    ax.bar_label(p99, [f"{s.p99_ms:.2f} ms" for s in series], padding=4, **LABEL)
    ax.set_yticks(list(positions), [_wrap(s.label, 40) for s in series], fontsize=9)
    ax.invert_yaxis()
    # The series come in (idle, loaded) pairs per contender; the goal bounds loaded p99 by a multiple of idle p99.
    goal = outcome.goals[0] if outcome.goals else None
    if goal is not None:
        for i in range(1, len(series), 2):
            limit = series[i - 1].p99_ms * goal.target
            ax.plot([limit, limit], [i - 0.45, i + 0.45], color=GOAL, linestyle="--", linewidth=1.2, zorder=2.5)
            ax.text(limit, i - 0.47, f" goal ≤ {goal.target:g}× idle p99 = {limit:.2f} ms", color=GOAL, va="bottom", **LABEL)
        ax.set_title(_goal_text(goal), loc="left", fontsize=9.5)
    ax.set_xlim(0, max(s.p99_ms for s in series) * 1.25)
    ax.set_xlabel("/health latency, ms")
    ax.legend(loc="lower right")
    ax.spines[["top", "right"]].set_visible(False)
    return figure


def _goals_chart(outcomes: list[Outcome]) -> Figure:
    """Every goal as measured ÷ goal: 1 is the goal itself; green met, red missed."""
    import matplotlib.pyplot as plt

    goals = [(o.title.split(".")[0], g) for o in outcomes for g in o.goals]
    figure, ax = plt.subplots(figsize=(11, 0.5 * len(goals) + 1.8), layout="constrained")
    figure.suptitle("Every goal, measured ÷ goal: green met, red missed", fontsize=12, weight="bold")
    ratios = [g.measured / g.target for _, g in goals]
    bars = ax.barh(range(len(goals)), ratios, color=[MET if g.met else MISSED for _, g in goals])
    labels = [f"{_number(g.measured)}{g.unit} (goal {'≥' if g.higher_is_better else '≤'} {_number(g.target)}{g.unit}), "
              f"{'met' if g.met else 'missed'}" for _, g in goals]  # fmt: skip
    ax.bar_label(bars, labels, padding=4, **LABEL)
    ax.set_yticks(range(len(goals)), [_wrap(f"{n}. {g.name}", 44) for n, g in goals], fontsize=9)
    ax.invert_yaxis()
    ax.axvline(1.0, color=GOAL, linestyle="--", linewidth=1.2, zorder=2.5)
    ax.text(1.0, -0.75, " goal", color=GOAL, va="bottom", **LABEL)
    ax.set_xlim(0, max(ratios) * 1.7)
    ax.set_xlabel("measured ÷ goal (a ≥ goal is met right of the line, a ≤ goal left of it)")
    ax.spines[["top", "right"]].set_visible(False)
    return figure


def outcomes_from_report(text: str) -> list[Outcome]:
    """The contenders and goals a written report.md recorded, enough to redraw its charts."""
    outcomes: dict[str, Outcome] = {}
    goals: list[tuple[str, Goal]] = []
    table = ""  # the header of the table being read
    for line in text.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if line.startswith("## ") and line[3:4].isdigit():
            outcomes[line[3:].split(".")[0]] = Outcome(line[3:])
        elif not line.startswith("|"):
            table = ""
        elif not table:
            table = " | ".join(cells[:2])  # e.g. "Contender | req/s"; other tables (bytes sent, costs) are not drawn
        elif line.startswith("|---"):
            continue
        elif table == "Contender | req/s":  # | label | req/s | p50 | p99 | non-2xx | socket errors |
            rps, p50, p99 = (_parse_number(cell) for cell in cells[1:4])
            run = Measurement(rps, p50, p99, requests=0, non_2xx=int(cells[4]), errors=int(cells[5]))
            outcomes[next(reversed(outcomes))].series[cells[0]] = Series(cells[0], [run])
        elif table.startswith("Scenario |"):  # | scenario | measure | measured | goal | met |
            measured, target = _parse_number(cells[2]), _parse_number(cells[3])
            unit = re.sub(r"^[\d,.]+", "", cells[2])
            goals.append((cells[0], Goal(cells[1], measured, target, higher_is_better=cells[3].startswith("≥"), unit=unit)))
    for scenario, goal in goals:
        outcomes[scenario].goals.append(goal)
    return list(outcomes.values())


def _parse_number(text: str) -> float:
    match = re.search(r"[\d,]+(?:\.\d+)?", text)
    if match is None:
        raise ValueError(f"no number in {text!r}")
    return float(match[0].replace(",", ""))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.report", description="Redraw the charts of a written report.md.")
    parser.add_argument("--report", type=Path, default=RESULTS / "report.md")
    parser.add_argument("--out", type=Path, default=None, help="where the charts go (default: beside the report)")
    args = parser.parse_args(argv)
    out = args.out or args.report.parent
    out.mkdir(parents=True, exist_ok=True)
    for name in _charts(outcomes_from_report(args.report.read_text()), out):
        print(out / name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
