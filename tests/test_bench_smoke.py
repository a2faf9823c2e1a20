"""The benchmark harness, run for a few seconds per scenario so it cannot rot. No timing is asserted."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import ROOT


@pytest.mark.slow
def test_bench_smoke_run_writes_the_report_and_charts(tmp_path: Path) -> None:
    if shutil.which("wrk") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true but wrk is not installed (.ci/run installs it)")
        pytest.skip("wrk is not installed")
    done = subprocess.run([sys.executable, "-m", "bench", "--smoke", "--out", str(tmp_path)], check=False, cwd=ROOT,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = (tmp_path / "report.md").read_text()
    for number in range(1, 15):
        assert f"## {number}." in report
    assert "| Scenario | Measure | Measured | Goal | Met |" in report
    for chart in ("throughput.png", "latency.png", "goals.png"):
        assert (tmp_path / chart).read_bytes().startswith(b"\x89PNG")
    assert "goal >=" in done.stdout and "report:" in done.stdout


def test_charts_redraw_from_the_committed_report(tmp_path: Path) -> None:
    """`python -m bench.report` reads back every contender and goal report.md recorded and draws its charts."""
    from bench.report import outcomes_from_report

    text = (ROOT / "bench" / "results" / "report.md").read_text()
    outcomes = outcomes_from_report(text)
    # Counted here independently of the parser: every scenario heading, every goal row, one known figure.
    assert [o.title.split(".")[0] for o in outcomes] == re.findall(r"^## (\d+)\.", text, re.MULTILINE)
    goal_rows = re.findall(r"^\| \d+ \| .* \| (?:yes|\*\*no\*\*) \|$", text, re.MULTILINE)
    assert sum(len(o.goals) for o in outcomes) == len(goal_rows) >= 9
    flask = re.search(r"^\| Flask \+ gunicorn \(4 sync workers\) \| ([\d,]+) \|", text, re.MULTILINE)
    [scenario_3] = [o for o in outcomes if o.title.startswith("3.")]
    assert flask is not None and scenario_3.series["Flask + gunicorn (4 sync workers)"].rps == int(flask[1].replace(",", ""))
    done = subprocess.run([sys.executable, "-m", "bench.report", "--out", str(tmp_path)], check=False, cwd=ROOT,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    for chart in ("throughput.png", "latency.png", "goals.png"):
        assert (tmp_path / chart).read_bytes().startswith(b"\x89PNG")


def test_only_runs_the_scenarios_named_by_name_or_number() -> None:
    """`python -m bench --only 3 hostile`: a function runs when its name or any of its numbers is asked for."""
    from bench.scenarios import SELECTABLE, selected

    assert {name for name in SELECTABLE if selected({"3", "hostile"}, name)} == {"cache-disabled", "hostile"}
    assert {name for name in SELECTABLE if selected({"8"}, name)} == {"side-by-side"}
    assert all(selected(None, name) for name in SELECTABLE)
    numbers = sorted((n for numbers in SELECTABLE.values() for n in numbers), key=int)
    assert numbers == [str(n) for n in range(1, 15)]  # every scenario once


def test_hostile_slow_reader_reads_pipelined_answers_one_by_one() -> None:
    """The slow reader counts the answers in one pipelined stream by their Content-Length, and knows a cut-off one."""
    from bench.hostile import _responses

    first = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nHTTP/"  # a body that looks like a head is skipped
    second = b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 21\r\n\r\nInternal Server Error"
    assert _responses(first + second) == (["200", "500"], True)
    assert _responses(first + second[:-3]) == (["200", "500"], False)
    assert _responses(first[:20]) == ([], False)
