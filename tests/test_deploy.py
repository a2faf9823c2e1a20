"""Deploying safely: no SQLite on a Heroku dyno, a connection budget that holds, app.json in step with
the settings, and README's commands working as written."""

from __future__ import annotations

import json
import os
import re
import secrets
import shlex
import subprocess
import sys
import time
from pathlib import Path

import httpx
import msgspec
import pytest

from service.announcements.models import NewAnnouncement
from service.settings import RESERVED_CONNECTIONS, SECRETS, Settings, SettingsError, load_settings
from tests.support import ROOT, free_port

README = (ROOT / "README.md").read_text()
POSTGRES = "postgres://site:S3cretPw@db.example:5432/site"


def run_service(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """`python -m service ARGS` with only `env` configured, on loopback in case it serves."""
    clean = {k: v for k, v in os.environ.items() if k not in Settings.__struct_encode_fields__ and k != "DYNO"}
    env = {"HOST": "127.0.0.1", "PORT": str(free_port()), **env}
    return subprocess.run(
        [sys.executable, "-m", "service", *args], cwd=cwd, env={**clean, **env}, capture_output=True, text=True, timeout=60
    )


# -- 1. no SQLite on a Heroku dyno -----------------------------------------------------------------


@pytest.mark.parametrize("command", ["serve", "migrate"])
@pytest.mark.parametrize("database", [{}, {"DATABASE_URL": "sqlite:///data/service.db"}], ids=["unset", "sqlite"])
def test_heroku_dyno_without_postgresql_refuses_to_start_in_one_line(
    command: str, database: dict[str, str], tmp_path: Path
) -> None:
    done = run_service(command, cwd=tmp_path, DYNO="web.1", **database)
    assert done.returncode == 2, done.stderr
    assert done.stdout == "" and done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert done.stderr.startswith("configuration error: DATABASE_URL ")
    assert "`heroku addons:create heroku-postgresql:essential-0`" in done.stderr
    assert "ALLOW_EPHEMERAL_DATABASE=true" in done.stderr
    assert not (tmp_path / "data").exists(), "nothing was written"


def test_heroku_dyno_runs_on_sqlite_when_the_operator_accepts_losing_writes(tmp_path: Path) -> None:
    done = run_service("migrate", cwd=tmp_path, DYNO="release.1", ALLOW_EPHEMERAL_DATABASE="true")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "data" / "service.db").exists()


def test_off_heroku_the_embedded_default_stays(tmp_path: Path) -> None:
    done = run_service("migrate", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "data" / "service.db").exists()


def test_heroku_dyno_with_postgresql_is_accepted() -> None:
    settings = load_settings({"DYNO": "web.1", "DATABASE_URL": POSTGRES})
    assert settings.database_url == POSTGRES


# -- 2. the connection budget ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "pool"),
    [
        ({}, 5),  # 1 × 1 × 5 + 2 = 7 of 20
        ({"WEB_CONCURRENCY": "2"}, 5),  # Basic / Standard-1X: 1 × 2 × 5 + 2 = 12
        ({"WEB_CONCURRENCY": "4"}, 4),  # Standard-2X: (20 - 2) // 4 = 4, 18 in all
        ({"WEB_CONCURRENCY": "17"}, 1),  # Performance-L: 17 + 2 = 19
        ({"WEB_CONCURRENCY": "18"}, 1),  # 18 + 2 = 20, exactly the limit
        ({"WEB_CONCURRENCY": "5", "WEB_DYNOS": "2"}, 1),  # (20 - 2) // 10 = 1
        ({"WEB_CONCURRENCY": "2", "DATABASE_MAX_CONNECTIONS": "120"}, 5),  # never more than 5 unless asked
        ({"WEB_CONCURRENCY": "2", "DATABASE_POOL_SIZE": "9"}, 9),  # explicit: 18 + 2 = 20
        ({"WEB_CONCURRENCY": "17", "DATABASE_MAX_CONNECTIONS": "120", "DATABASE_POOL_SIZE": "6"}, 6),  # 102 + 2 = 104
    ],
)
def test_each_workers_pool_is_sized_from_the_connection_budget(env: dict[str, str], pool: int) -> None:
    settings = load_settings({"DATABASE_URL": POSTGRES, **env})
    assert settings.database_pool_size == pool
    in_use = settings.web_dynos * settings.web_concurrency * settings.database_pool_size
    assert in_use + RESERVED_CONNECTIONS <= settings.database_max_connections


@pytest.mark.parametrize(
    ("env", "arithmetic"),
    [
        # The issue's case: Performance-L's 17 workers × 5 connections against essential-0's 20.
        (
            {"WEB_CONCURRENCY": "17", "DATABASE_POOL_SIZE": "5"},
            "WEB_DYNOS=1 × WEB_CONCURRENCY=17 workers × 5 connections (DATABASE_POOL_SIZE)"
            " + 2 reserved for the release phase and heroku run = 87 > DATABASE_MAX_CONNECTIONS=20",
        ),
        (
            {"WEB_CONCURRENCY": "19"},
            "WEB_DYNOS=1 × WEB_CONCURRENCY=19 workers × 1 connection"
            " + 2 reserved for the release phase and heroku run = 21 > DATABASE_MAX_CONNECTIONS=20",
        ),
        ({"WEB_CONCURRENCY": "5", "WEB_DYNOS": "4"}, "× 1 connection + 2 reserved for the release phase and heroku run = 22 >"),
        ({"WEB_CONCURRENCY": "2", "DATABASE_POOL_SIZE": "10"}, "× 10 connections (DATABASE_POOL_SIZE) + 2 reserved"),
        ({"DATABASE_MAX_CONNECTIONS": "2"}, "= 3 > DATABASE_MAX_CONNECTIONS=2"),
    ],
)
def test_a_budget_that_cannot_fit_is_one_line_with_the_arithmetic(env: dict[str, str], arithmetic: str) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings({"DATABASE_URL": POSTGRES, **env})
    message = str(caught.value)
    assert message.startswith("the database connection budget does not fit: ") and "\n" not in message
    assert arithmetic in message
    assert "S3cretPw" not in message


def test_the_budget_is_not_checked_for_sqlite() -> None:
    settings = load_settings({"WEB_CONCURRENCY": "64", "DATABASE_POOL_SIZE": "40", "DATABASE_MAX_CONNECTIONS": "1"})
    assert settings.database_pool_size == 40


@pytest.mark.parametrize("command", ["serve", "migrate"])
def test_a_budget_that_cannot_fit_stops_the_release_phase_and_the_web_process(command: str, tmp_path: Path) -> None:
    done = run_service(command, cwd=tmp_path, DYNO="web.1", DATABASE_URL=POSTGRES, WEB_CONCURRENCY="17", DATABASE_POOL_SIZE="5")
    assert done.returncode == 2, done.stderr
    assert done.stdout == "" and done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert done.stderr.startswith("configuration error: the database connection budget does not fit: ")
    assert "S3cretPw" not in done.stderr


# -- 3. app.json -----------------------------------------------------------------------------------

APP = json.loads((ROOT / "app.json").read_text())
# Heroku's app.json schema: the keys it knows, and what an env entry may say.
APP_KEYS = {"name", "description", "keywords", "website", "repository", "logo", "success_url", "scripts", "env",
            "formation", "addons", "buildpacks", "environments", "stack", "image"}  # fmt: skip
ENV_KEYS = {"description", "value", "required", "generator"}
# Settings whose default leaves a feature off: a deploy from app.json must set them.
FEATURES = {"GITHUB_OWNER": "the GitHub endpoints", "ADMIN_TOKEN": "writes"}
PLAN_CONNECTIONS = {"essential-0": 20, "essential-1": 20, "essential-2": 40, "standard-0": 120}


def _procfile() -> dict[str, str]:
    processes = {}
    for line in (ROOT / "Procfile").read_text().splitlines():
        name, _, command = line.partition(":")
        processes[name.strip()] = command.strip()
    return processes


def test_app_json_is_what_heroku_reads() -> None:
    assert set(APP) <= APP_KEYS
    assert re.fullmatch(r"[A-Za-z0-9._ -]{1,30}", APP["name"])
    for name, entry in APP["env"].items():
        assert set(entry) <= ENV_KEYS and entry.get("description"), name
        assert entry.get("generator", "secret") == "secret", name
    assert set(APP["formation"]) <= set(_procfile()), "every formation process is in the Procfile"


def test_app_json_names_only_variables_the_service_reads() -> None:
    assert set(APP["env"]) <= set(Settings.__struct_encode_fields__)


def test_app_json_asks_for_every_setting_a_deploy_needs() -> None:
    env = APP["env"]
    for name in FEATURES:
        assert name in env, f"{name} is needed for {FEATURES[name]}"
        assert env[name].get("required", True), name  # Heroku's default for "required" is true
    assert "value" not in env["GITHUB_OWNER"], "the owner is asked for, not guessed"
    assert env["ADMIN_TOKEN"]["generator"] == "secret"
    for name in ("GITHUB_TOKEN", "GITHUB_WEBHOOK_SECRET"):
        assert env[name]["required"] is False and "value" not in env[name], name
    for name in SECRETS:
        assert "value" not in env.get(name, {}), f"{name} would be a secret committed to the repository"


def test_app_json_provisions_postgresql_with_its_connection_limit() -> None:
    plans = [addon["plan"] if isinstance(addon, dict) else addon for addon in APP["addons"]]
    postgres = [plan for plan in plans if plan.startswith("heroku-postgresql:")]
    assert len(postgres) == 1
    limit = PLAN_CONNECTIONS[postgres[0].split(":", 1)[1]]
    assert APP["env"]["DATABASE_MAX_CONNECTIONS"]["value"] == str(limit)


def test_app_json_release_phase_migrates() -> None:
    assert _procfile()["release"] == "python -m service migrate"
    assert _procfile()["web"] == "python -m service serve"


def test_a_deploy_from_app_json_passes_the_start_up_checks() -> None:
    """What the button sets up — values, generated secrets, the add-on's DATABASE_URL, an owner typed in —
    is a valid configuration on a dyno, every feature on, within the plan's connections."""
    environ = {"DYNO": "web.1", "DATABASE_URL": POSTGRES}
    for name, entry in APP["env"].items():
        if "value" in entry:
            environ[name] = entry["value"]
        elif entry.get("generator") == "secret":
            environ[name] = secrets.token_hex(32)  # what Heroku's generator makes: 64 hex digits
        elif entry.get("required", True):
            environ[name] = "octo-dev"
    settings = load_settings(environ)
    assert settings.github_owner == "octo-dev" and settings.admin_token is not None
    assert settings.web_concurrency * settings.database_pool_size + RESERVED_CONNECTIONS <= settings.database_max_connections


# -- 4. README's commands --------------------------------------------------------------------------


def _shell_lines() -> list[str]:
    return [line for block in re.findall(r"```sh\n(.*?)```", README, re.S) for line in block.splitlines()]


def test_readme_states_the_python_it_needs() -> None:
    requires = re.search(r'requires-python = ">=(\d+\.\d+)"', (ROOT / "pyproject.toml").read_text())
    assert requires is not None
    assert f"Python {requires[1]} or newer" in README


def test_readme_github_stand_in_command_serves_octo_dev_beside_the_service() -> None:
    commands = set(re.findall(r"`(\.venv/bin/python -m bench\.upstream --port (\d+))`", README))
    assert len(commands) == 1, "one stand-in command"
    ((command, port),) = commands
    assert int(port) != Settings().port, "its own port, beside the service's"
    assert f"GITHUB_API_URL=http://127.0.0.1:{port}" in README
    argv = shlex.split(command.replace(f"--port {port}", f"--port {free_port()}"))
    argv[0] = sys.executable  # .venv/bin/python here; PATH below has no venv on it
    no_venv = {"PATH": "/usr/bin:/bin"}
    process = subprocess.Popen(argv, cwd=ROOT, env=no_venv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert process.stdout is not None
        announced = process.stdout.readline()
        assert "owner octo-dev" in announced and "GITHUB_OWNER=octo-dev" in announced, announced
        url = announced.split("GITHUB_API_URL=", 1)[1].split()[0]
        deadline = time.monotonic() + 30
        while True:
            try:
                response = httpx.get(f"{url}/users/octo-dev/repos", timeout=2)
                break
            except httpx.TransportError:
                assert process.poll() is None and time.monotonic() < deadline, "the stand-in did not start"
                time.sleep(0.05)
        assert response.status_code == 200
        repos = response.json()
        assert len(repos) == 30 and {repo["owner"]["login"] for repo in repos} == {"octo-dev"}
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_readme_check_config_example_prints_settings_with_secrets_masked(tmp_path: Path) -> None:
    (line,) = [line for line in _shell_lines() if "-m service check-config" in line]
    words = shlex.split(line)
    env = dict(word.split("=", 1) for word in words if re.fullmatch(r"[A-Z_]+=.*", word))
    argv = [word for word in words if not re.fullmatch(r"[A-Z_]+=.*", word)]
    assert argv == [".venv/bin/python", "-m", "service", "check-config"]
    done = run_service(*argv[3:], cwd=tmp_path, **env)
    assert done.returncode == 0, done.stderr
    shown = json.loads(done.stdout)
    assert shown["GITHUB_OWNER"] == env["GITHUB_OWNER"]
    for name in set(env) & set(SECRETS):
        assert shown[name] == "***" and env[name] not in done.stdout


def test_readme_deploy_walks_from_heroku_create_to_a_published_announcement() -> None:
    deploy = (ROOT / "docs" / "heroku.md").read_text().split("## Deploy to Heroku", 1)[1].split("\n## ", 1)[0]
    steps = ["heroku create", "heroku addons:create heroku-postgresql:essential-0", "heroku config:set GITHUB_OWNER=",
             "git push heroku main", "heroku logs --tail", "heroku config:get ADMIN_TOKEN", "curl -X POST"]  # fmt: skip
    positions = [deploy.find(step) for step in steps]
    assert -1 not in positions and positions == sorted(positions), dict(zip(steps, positions, strict=True))
    body = re.search(r"-d '(\{.*?\})'", deploy)
    assert body is not None
    msgspec.json.decode(body[1].encode(), type=NewAnnouncement)  # the example is an announcement the API accepts
    assert "fine-grained" in deploy and "heroku config:set GITHUB_TOKEN=" in deploy
