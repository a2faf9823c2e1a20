"""PostgreSQL stopped or frozen under load: once the service knows, 503 + Retry-After at once, a write it gave
up on is never saved later, and it finds the database again by itself. A cluster of its own, to stop and freeze."""

from __future__ import annotations

import asyncio
import contextlib
import glob
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import httpx
import pytest

from service.app import create_app
from service.database import CALL_TIMEOUT, open_database
from service.settings import Settings
from tests.support import ROOT, running

TOKEN = "faults-admin-token-0123456789"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}


class Cluster:
    """A throw-away PostgreSQL server (.ci/postgres) that a test may stop, start, freeze and thaw."""

    def __init__(self, directory: Path, port: int, url: str) -> None:
        self.directory, self.port, self.url = directory, port, url
        self.bin = Path(max(glob.glob("/usr/lib/postgresql/*/bin")))
        self.frozen: list[int] = []

    def _pg_ctl(self, *args: str) -> None:
        command = [str(self.bin / "pg_ctl"), "-D", str(self.directory / "data"), "-w", *args]
        if os.getuid() == 0:  # as .ci/postgres does: PostgreSQL refuses to run as root
            command = ["runuser", "-u", "postgres", "--", *command]
        subprocess.run(command, check=True, capture_output=True, timeout=60)

    def stop(self) -> None:
        self._pg_ctl("-m", "fast", "stop")

    def start(self) -> None:
        self._pg_ctl("-l", str(self.directory / "server.log"), "restart")  # with the options it last ran with

    def freeze(self) -> None:
        """SIGSTOP the server and every backend: connections stay open, nothing answers."""
        postmaster = int((self.directory / "data" / "postmaster.pid").read_text().split()[0])
        self.frozen = [postmaster, *_children(postmaster)]
        for pid in self.frozen:
            os.kill(pid, signal.SIGSTOP)

    def thaw(self) -> None:
        for pid in self.frozen:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        self.frozen = []


def _children(parent: int) -> list[int]:
    children = []
    for stat in glob.glob("/proc/[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = Path(stat).read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == parent:
                children.append(int(Path(stat).parent.name))
    return children


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    if not glob.glob("/usr/lib/postgresql/*/bin/postgres"):
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true but no PostgreSQL server: the PostgreSQL tests must run in CI (.ci/postgres install)")
        pytest.skip("no PostgreSQL server installed")
    directory = Path(tempfile.mkdtemp(prefix="website-api-faults-pg-"))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "PGPORT_TEST": str(port)}
    script = str(ROOT / ".ci" / "postgres")
    started = subprocess.run(
        ["bash", script, "start", str(directory)], check=False, env=env, capture_output=True, text=True, timeout=120
    )
    if started.returncode != 0:
        pytest.fail(f"could not start PostgreSQL: {started.stderr[-2000:]}")
    cluster = Cluster(directory, port, started.stdout.strip())
    try:
        yield cluster
    finally:
        cluster.thaw()
        subprocess.run(["bash", script, "stop", str(directory)], check=False, env=env, capture_output=True, timeout=60)
        shutil.rmtree(directory, ignore_errors=True)


@contextlib.asynccontextmanager
async def api_on(cluster: Cluster, make_settings: Callable[..., Settings]) -> AsyncIterator[httpx.AsyncClient]:
    import psycopg

    with psycopg.connect(cluster.url, autocommit=True) as conn:
        conn.execute("DROP SCHEMA public CASCADE")
        conn.execute("CREATE SCHEMA public")
    database = open_database(cluster.url, pool_size=1)
    database.open()
    database.migrate()
    database.close()
    async with running(create_app(make_settings(ADMIN_TOKEN=TOKEN, DATABASE_URL=cluster.url))) as client:
        yield client


async def burst(api: httpx.AsyncClient, n: int = 20) -> list[tuple[int, float, str | None]]:
    """n reads at once: (status, seconds, Retry-After) each. Admin reads, which always go to the database
    (public reads may be answered from the read cache for up to a second)."""

    async def one() -> tuple[int, float, str | None]:
        started = time.perf_counter()
        response = await api.get("/announcements?status=all", headers={"Authorization": f"Bearer {TOKEN}"})
        return response.status_code, time.perf_counter() - started, response.headers.get("retry-after")

    return list(await asyncio.gather(*(one() for _ in range(n))))


async def answer_within(request: Callable[[], object], expected: int, within: float) -> httpx.Response:
    """The first answer with status `expected` within `within` seconds, else the last one (the caller asserts)."""
    deadline = time.monotonic() + within
    while True:
        response: httpx.Response = await request()  # type: ignore[misc]
        if response.status_code == expected or time.monotonic() > deadline:
            return response
        await asyncio.sleep(0.1)


def assert_answered_at_once(results: list[tuple[int, float, str | None]]) -> None:
    """The promise: 503 + Retry-After, without waiting out a pool or call timeout (5–6 s)."""
    assert [status for status, _, _ in results] == [503] * len(results)
    assert all(retry_after in ("1", "2") for _, _, retry_after in results), results
    assert max(seconds for _, seconds, _ in results) < 1, results


pytestmark = [pytest.mark.anyio, pytest.mark.postgres]


async def test_stopped_database_is_503_at_once_once_known_and_is_found_again(
    cluster: Cluster, make_settings: Callable[..., Settings]
) -> None:
    async with api_on(cluster, make_settings) as api:
        assert (await api.get("/announcements")).status_code == 200
        cluster.stop()
        try:
            first = await burst(api)  # finding out: the pool's connection timeout
            assert [status for status, _, _ in first] == [503] * 20, first  # was 10 × 503 and 10 × 504
            assert_answered_at_once(await burst(api))
            started = time.perf_counter()
            ready = await api.get("/health/ready")
            assert ready.status_code == 503 and time.perf_counter() - started < 1
            assert "postgresql" in ready.json()["checks"]["database"]["detail"]
        finally:
            cluster.start()
        assert (await answer_within(lambda: api.get("/announcements"), 200, within=15)).status_code == 200
        assert (await api.get("/health/ready")).json()["checks"]["database"]["status"] == "ok"


async def test_frozen_database_is_503_at_once_once_known_and_is_found_again(
    cluster: Cluster, make_settings: Callable[..., Settings]
) -> None:
    async with api_on(cluster, make_settings) as api:
        assert (await api.get("/announcements")).status_code == 200
        cluster.freeze()
        try:
            first = await burst(api)  # finding out: the call timeout
            assert [status for status, _, _ in first] == [503] * 20, first  # was 504s at REQUEST_TIMEOUT
            assert max(seconds for _, seconds, _ in first) < CALL_TIMEOUT + 2
            assert_answered_at_once(await burst(api))
            ready = await api.get("/health/ready")
            assert ready.status_code == 503 and f"did not answer within {CALL_TIMEOUT:g} s" in ready.text
        finally:
            cluster.thaw()
        assert (await answer_within(lambda: api.get("/announcements"), 200, within=15)).status_code == 200


async def test_a_write_given_up_on_a_frozen_database_is_not_saved_when_it_thaws(
    cluster: Cluster, make_settings: Callable[..., Settings]
) -> None:
    import psycopg

    post = {"title": "Sent while frozen", "body": "Saved at most once."}
    async with api_on(cluster, make_settings) as api:
        assert (await api.get("/announcements")).status_code == 200  # the pool holds a connection
        cluster.freeze()
        safety = threading.Timer(20, cluster.thaw)  # without a call timeout the write would wait for ever
        safety.start()
        try:
            response = await api.post("/announcements", json=post, headers=ADMIN)
        finally:
            safety.cancel()
            cluster.thaw()
        assert response.status_code == 503 and "retry-after" in response.headers
        with psycopg.connect(cluster.url, autocommit=True) as conn:
            deadline = time.monotonic() + 10
            while conn.execute(  # until the abandoned INSERT has run to its end: rolled back, or not
                "SELECT count(*) FROM pg_stat_activity WHERE pid <> pg_backend_pid() AND datname = current_database()"
                " AND (state LIKE 'idle in transaction%' OR (state = 'active' AND query ILIKE 'insert%'))"
            ).fetchone()[0]:
                assert time.monotonic() < deadline, "the abandoned write never finished"
                await asyncio.sleep(0.05)
            assert conn.execute("SELECT count(*) FROM announcements").fetchone()[0] == 0
        retried = await answer_within(lambda: api.post("/announcements", json=post, headers=ADMIN), 201, within=15)
        assert retried.status_code == 201
        listed = await api.get("/announcements")
    assert [item["title"] for item in listed.json()["items"]] == [post["title"]]  # once, not twice
