"""/docs as a person sees it: headless Chromium against a real server process."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from service.docs import load_spec
from tests.support import procfile_server


def test_docs_page_lists_every_operation_in_a_real_browser(tmp_path: Path) -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true but chromium is not installed (.ci/run installs it)")
        pytest.skip("chromium is not installed")
    env = {"DATABASE_URL": f"sqlite:///{tmp_path}/docs.db", "ACCESS_LOG": "false"}
    with procfile_server(env, cwd=tmp_path) as (url, _):
        dom = subprocess.run(
            [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=10000",
             f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", f"{url}/docs"],
            capture_output=True, text=True, timeout=120,
        ).stdout  # fmt: skip
    shown = set(re.findall(r'opblock-summary-method">(\w+)<.*?data-path="([^"]+)"', dom))
    _, spec = load_spec()
    documented = {
        (m.upper(), p)
        for p, item in [*spec["paths"].items(), *spec.get("webhooks", {}).items()]  # Swagger UI lists webhooks too
        for m in item
        if m in ("get", "post", "patch", "delete")
    }
    assert shown == documented
