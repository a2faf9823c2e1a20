"""Write bench/results/report.md and its PNG charts from the scenarios' outcomes."""

from __future__ import annotations

import datetime
from pathlib import Path

from bench.scenarios import Outcome

RESULTS = Path(__file__).resolve().parent / "results"


README = RESULTS.parent.parent / "README.md"
START, END = "<!-- performance:start -->", "<!-- performance:end -->"


def write(outcomes: list[Outcome], machine: dict[str, str], *, command: str, out: Path = RESULTS) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    charts = _charts(outcomes, out)
    goals = _goals_table(outcomes)
    lines = [
        "# Performance report",
        "",
        f"Generated {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M UTC} by `{command}`. Every figure is a median "
        "over alternating rounds in this one run on this one machine; ratios compare contenders measured side by side.",
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
    """README's Performance section shows the latest full run."""
    text = README.read_text()
    if START not in text or END not in text:
        return
    block = [START, f"Latest run ({datetime.datetime.now(datetime.UTC):%Y-%m-%d}, {machine['CPU']}):", "", *goals, "",
             "![throughput](bench/results/throughput.png)", END]  # fmt: skip
    before, rest = text.split(START, 1)
    after = rest.split(END, 1)[1]
    README.write_text(before + "\n".join(block) + after)


def _number(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.2f}"


def _charts(outcomes: list[Outcome], out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    throughput = [(s.label, s.rps) for o in outcomes if o.title.startswith(("1.", "2.", "3.")) for s in o.series.values()]
    seen: dict[str, float] = {}
    for label, rps in throughput:
        seen.setdefault(label, rps)
    fig, ax = plt.subplots(figsize=(10, 0.45 * len(seen) + 1.5))
    labels = list(seen)
    ax.barh(labels, [seen[k] for k in labels], color=["#2b7bba" if "this service" in k else "#9aa5b1" for k in labels])
    ax.invert_yaxis()
    ax.set_xlabel("requests per second (median)")
    ax.set_title("Throughput, scenarios 1–3")
    for i, label in enumerate(labels):
        ax.text(seen[label], i, f" {seen[label]:,.0f}", va="center", fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "throughput.png", dpi=110)
    plt.close(fig)

    latency = [s for o in outcomes if o.title.startswith("4.") for s in o.series.values()]
    fig, ax = plt.subplots(figsize=(10, 0.5 * len(latency) + 1.5))
    names = [s.label for s in latency]
    ax.barh([n + " p99" for n in names], [s.p99_ms for s in latency], color="#d1495b", label="p99")
    ax.barh([n + " p50" for n in names], [s.p50_ms for s in latency], color="#edae49", label="p50")
    ax.set_xscale("log")
    ax.invert_yaxis()
    ax.set_xlabel("/health latency, ms (log scale)")
    ax.set_title("Scenario 4: /health latency alone and beside 32 announcement readers")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "latency.png", dpi=110)
    plt.close(fig)
    return ["throughput.png", "latency.png"]
