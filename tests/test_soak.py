"""200,000 mixed requests through a real server: no 5xx, memory and file descriptors flat."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.github_standin import GitHubStandIn
from tests.support import ROOT, procfile_server

TOTAL = 200_000
ROUND_SECONDS = 10
MAX_ROUNDS = 30  # bounds the run at 5 minutes even on a slow machine


def rss_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+) kB", status)[1])  # type: ignore[index]


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@pytest.mark.slow
def test_soak_200k_mixed_requests_no_5xx_flat_memory_and_fds(tmp_path: Path) -> None:
    wrk = shutil.which("wrk")
    if wrk is None:
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true but wrk is not installed (.ci/run installs it)")
        pytest.skip("wrk is not installed")
    with GitHubStandIn(count=100) as github:
        env = {"DATABASE_URL": f"sqlite:///{tmp_path}/db.sqlite", "GITHUB_OWNER": github.owner, "GITHUB_API_URL": github.url,
               "ADMIN_TOKEN": "soak-admin-token-0123456789", "ACCESS_LOG": "true"}  # fmt: skip
        with procfile_server(env, cwd=tmp_path) as (url, process):
            headers = {"Authorization": "Bearer soak-admin-token-0123456789"}
            for i in range(5):
                httpx.post(f"{url}/announcements", json={"title": f"a{i}", "body": "b"}, headers=headers).raise_for_status()
            done = fives = errors = rounds = 0
            halfway: tuple[int, int] | None = None
            while done < TOTAL and rounds < MAX_ROUNDS:
                run = subprocess.run(
                    [wrk, "-t1", "-c32", f"-d{ROUND_SECONDS}s", "-s", str(ROOT / "tests" / "load" / "soak.lua"), url],
                    capture_output=True, text=True, timeout=ROUND_SECONDS + 30,
                )  # fmt: skip
                totals = re.search(r"SOAK fives=(\d+) responses=(\d+) errors=(\d+)", run.stdout)
                assert totals, run.stdout + run.stderr
                fives += int(totals[1])
                done += int(totals[2])
                errors += int(totals[3])
                rounds += 1
                if halfway is None and done >= TOTAL // 2:
                    halfway = (rss_kib(process.pid), open_fds(process.pid))
            time.sleep(0.5)  # let closed connections settle
            end = (rss_kib(process.pid), open_fds(process.pid))
        assert len(github.calls) <= 4, "repositories were served from the cache"
    assert done >= TOTAL, f"only {done} requests in {rounds} rounds"
    assert fives == 0 and errors == 0
    assert halfway is not None
    growth_kib = end[0] - halfway[0]
    print(f"soak: {done} requests, RSS {halfway[0]} -> {end[0]} KiB, fds {halfway[1]} -> {end[1]}")
    assert growth_kib <= 2048, f"RSS grew {growth_kib} KiB over the second half"
    assert end[1] <= halfway[1] + 2, "file descriptors leak"
