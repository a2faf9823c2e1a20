"""Promises the repository makes about itself: README's two commands, CI, Procfile."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _readme_commands() -> list[str]:
    return re.findall(r"```sh\n(python3 -m venv[^\n]*)\n```", (ROOT / "README.md").read_text())


def test_readme_has_exactly_two_set_up_commands_run_and_test() -> None:
    commands = _readme_commands()
    assert len(commands) == 2
    run, test = commands
    assert run.endswith("python -m service") and "pytest" not in run
    assert test.endswith("python -m pytest")


def test_ci_runs_readmes_test_command() -> None:
    test_command = _readme_commands()[1]
    assert test_command in (ROOT / ".ci" / "run").read_text().splitlines()


def test_procfile_web_process_runs_uvicorn_for_heroku() -> None:
    web = next(line for line in (ROOT / "Procfile").read_text().splitlines() if line.startswith("web:"))
    for flag in ("service.app:app", "--host 0.0.0.0", "--port ${PORT", "--forwarded-allow-ips='*'", "--workers ${WEB_CONCURRENCY"):
        assert flag in web
    keep_alive = int(re.search(r"--timeout-keep-alive (\d+)", web)[1])  # type: ignore[index]
    graceful = int(re.search(r"--timeout-graceful-shutdown (\d+)", web)[1])  # type: ignore[index]
    assert keep_alive > 90 and graceful < 30


def test_procfile_release_process_migrates() -> None:
    assert "release: python -m service migrate" in (ROOT / "Procfile").read_text().splitlines()
