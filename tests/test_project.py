"""Promises the repository makes about itself: README's two commands, CI, Procfile."""

from __future__ import annotations

import re

from service.__main__ import uvicorn_options
from service.settings import load_settings
from tests.support import ROOT


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


def test_procfile_web_process_serves_with_heroku_timeouts() -> None:
    assert "web: python -m service serve" in (ROOT / "Procfile").read_text().splitlines()
    options = uvicorn_options(load_settings({"PORT": "5123", "WEB_CONCURRENCY": "3"}))
    assert (options["host"], options["port"], options["workers"]) == ("0.0.0.0", 5123, 3)
    assert options["proxy_headers"] is True and options["forwarded_allow_ips"] == "*"
    assert options["timeout_keep_alive"] > 90  # Heroku's router idle timeout
    assert options["timeout_graceful_shutdown"] < 30  # Heroku's SIGKILL after SIGTERM


def test_procfile_release_process_migrates() -> None:
    assert "release: python -m service migrate" in (ROOT / "Procfile").read_text().splitlines()
