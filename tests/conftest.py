"""Shared fixtures: settings for a throw-away app, an in-process client that runs the app's lifespan, the
GitHub stand-in, PostgreSQL. Helpers that tests call directly live in tests/support.py."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import httpx
import pytest

from service.app import create_app
from service.settings import Settings, load_settings
from tests.github_standin import GitHubStandIn
from tests.support import ROOT, free_port, reset_postgres, running


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Slow tests (real load, minutes) run in CI, or locally with SLOW_TESTS=1."""
    if os.environ.get("CI") == "true" or os.environ.get("SLOW_TESTS") == "1":
        return
    skip = pytest.mark.skip(reason="slow: runs in CI, or with SLOW_TESTS=1")
    for item in items:
        if item.get_closest_marker("slow"):
            item.add_marker(skip)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def make_settings(tmp_path: Path) -> Callable[..., Settings]:
    """Settings as the environment would give them, with a private SQLite file and no access log."""

    def make(**env: str) -> Settings:
        base = {"DATABASE_URL": f"sqlite:///{tmp_path}/test.db", "ACCESS_LOG": "false"}
        return load_settings({**base, **env})

    return make


@pytest.fixture
async def client(make_settings: Callable[..., Settings]) -> AsyncIterator[httpx.AsyncClient]:
    async with running(create_app(make_settings())) as client:
        yield client


@pytest.fixture
def standin() -> Iterator[GitHubStandIn]:
    """A real HTTP server on 127.0.0.1 playing GitHub for owner octo-dev with 30 repositories."""
    with GitHubStandIn(count=30) as server:
        yield server


# -- PostgreSQL ------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """A PostgreSQL server for the session: TEST_DATABASE_URL if given, else a throw-away cluster started
    here when PostgreSQL is installed. Skipped locally without one; with CI=true, missing it fails."""
    url = os.environ.get("TEST_DATABASE_URL")
    if url:
        yield url
        return
    if not glob.glob("/usr/lib/postgresql/*/bin/postgres"):
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true but no PostgreSQL server: the PostgreSQL tests must run in CI (.ci/postgres install)")
        pytest.skip("no PostgreSQL server installed and TEST_DATABASE_URL not set")
    script = str(ROOT / ".ci" / "postgres")
    for _ in range(3):  # the port is free when chosen; another process may take it before postgres binds
        cluster = tempfile.mkdtemp(prefix="website-api-pg-")
        env = {**os.environ, "PGPORT_TEST": str(free_port())}
        started = subprocess.run(["bash", script, "start", cluster], env=env, capture_output=True, text=True, timeout=120)
        if started.returncode == 0:
            break
        server_log = Path(cluster, "server.log")
        port_taken = "Address already in use" in (server_log.read_text() if server_log.exists() else "")
        subprocess.run(["bash", script, "stop", cluster], env=env, capture_output=True, timeout=60)
        shutil.rmtree(cluster, ignore_errors=True)
        if not port_taken:
            break
    if started.returncode != 0:
        pytest.fail(f"could not start PostgreSQL: {started.stderr[-2000:]}")
    try:
        yield started.stdout.strip()
    finally:
        subprocess.run(["bash", script, "stop", cluster], env=env, capture_output=True, timeout=60)
        shutil.rmtree(cluster, ignore_errors=True)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each test using this runs twice: on an SQLite file and on a real PostgreSQL server."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/announcements.db"
    return reset_postgres(request.getfixturevalue("postgres_server"))
