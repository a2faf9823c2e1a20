"""The real server process, started as the Procfile starts it: SIGTERM, kill -9, several workers."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.github_standin import GitHubStandIn
from tests.support import procfile_server, release_phase, reset_postgres, wait_until

TOKEN = "lifecycle-admin-token-0123456789"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}


def log_lines(path: Path) -> list[dict[str, Any]]:
    lines = []
    for raw in path.read_text().splitlines():
        if raw.startswith("{"):
            lines.append(json.loads(raw))
    return lines


def server_side_connections(port: int) -> tuple[int, int]:
    """(established, holding unread bytes) among the kernel's IPv4 sockets whose local port is `port`.
    A connection whose request the server has read, or that it has not even accepted yet, tells apart."""
    established = unread = 0
    for row in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = row.split()
        local_port = int(fields[1].rsplit(":", 1)[1], 16)
        if local_port == port and fields[3] == "01":  # 01: ESTABLISHED
            established += 1
            unread += int(fields[4].split(":")[1], 16) > 0  # rx_queue
    return established, unread


def refuses_connections(url: str) -> bool:
    try:
        httpx.get(f"{url}/health", timeout=2)
    except httpx.ConnectError:
        return True
    except httpx.TransportError:
        pass  # accepted just before the listening socket closed, then dropped: not yet a refusal
    return False


def test_sigterm_finishes_in_flight_requests_refuses_new_ones_and_exits_0(tmp_path: Path) -> None:
    with GitHubStandIn(count=30) as github:
        github.hold = threading.Event()  # upstream answers wait until after SIGTERM: the requests are surely in flight
        env = {"DATABASE_URL": f"sqlite:///{tmp_path}/db.sqlite", "GITHUB_OWNER": github.owner,
               "GITHUB_API_URL": github.url, "GITHUB_TIMEOUT": "20", "ACCESS_LOG": "true"}  # fmt: skip
        log = tmp_path / "server.log"
        with procfile_server(env, cwd=tmp_path, log=log) as (url, process):
            port = int(url.rsplit(":", 1)[1])
            results: list[int | str] = []
            sent = threading.Semaphore(0)

            def trace(event: str, info: dict[str, Any]) -> None:
                if event == "http11.send_request_body.complete":
                    sent.release()

            def one() -> None:
                try:
                    with httpx.Client(timeout=30) as client:  # a connection of its own
                        response = client.get(f"{url}/github/repos", extensions={"trace": trace})
                        results.append(response.status_code)
                except httpx.HTTPError as exc:
                    results.append(type(exc).__name__)

            clients = [threading.Thread(target=one) for _ in range(50)]
            for thread in clients:
                thread.start()
            for _ in clients:  # every request is on the wire …
                assert sent.acquire(timeout=20), "a client could not send its request"
            # … and accepted and read by the server.
            wait_until(lambda: server_side_connections(port) == (50, 0), what="the server to read all 50 requests")
            assert github.calls and results == [], "requests must still be in flight when SIGTERM arrives"
            terminated_at = time.monotonic()
            process.send_signal(signal.SIGTERM)
            wait_until(lambda: refuses_connections(url), what="new connections to be refused after SIGTERM")
            github.hold.set()  # upstream answers only now, with the shutdown under way
            exit_code = process.wait(timeout=25)
            stopped_after = time.monotonic() - terminated_at
            for thread in clients:
                thread.join(timeout=10)
    assert results == [200] * 50
    assert exit_code == 0 and stopped_after < 20  # the promised deadline: uvicorn's timeout_graceful_shutdown
    messages = [line.get("msg", "") for line in log_lines(log)]
    assert "stopped: GitHub client and database connections closed" in messages
    assert sum(1 for line in log_lines(log) if line.get("path") == "/github/repos" and line.get("status") == 200) == 50


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_kill_9_mid_stream_loses_no_acknowledged_announcement(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    if backend == "sqlite":
        database_url = f"sqlite:///{tmp_path}/crash.db"
    else:
        database_url = reset_postgres(request.getfixturevalue("postgres_server"))
        release_phase(database_url, tmp_path)
    env = {"DATABASE_URL": database_url, "ADMIN_TOKEN": TOKEN, "ACCESS_LOG": "false"}
    acknowledged: dict[int, dict[str, Any]] = {}
    with procfile_server(env, cwd=tmp_path) as (url, process):
        stop = threading.Event()

        def writer() -> None:
            with httpx.Client(base_url=url, headers=ADMIN, timeout=5) as client:
                n = 0
                while not stop.is_set():
                    body = {"title": f"crash test {n}", "body": "x" * (n % 50 + 1), "tags": [f"t{n % 3}"]}
                    try:
                        response = client.post("/announcements", json=body)
                    except httpx.HTTPError:
                        return  # the server is gone: this write's fate is unknown, so it is not counted
                    if response.status_code == 201:
                        acknowledged[response.json()["id"]] = response.json()
                    n += 1

        thread = threading.Thread(target=writer)
        thread.start()
        wait_until(lambda: len(acknowledged) > 20, timeout=30, what="the writer to be mid-stream")
        os.killpg(process.pid, signal.SIGKILL)
        thread.join(timeout=10)
        stop.set()
    assert len(acknowledged) > 20, "the writer should have been mid-stream"
    with procfile_server(env, cwd=tmp_path) as (url, _):
        with httpx.Client(base_url=url, headers=ADMIN, timeout=10) as client:
            for id, expected in acknowledged.items():
                response = client.get(f"/announcements/{id}")
                assert response.status_code == 200 and response.json() == expected
    if backend == "sqlite":
        with sqlite3.connect(tmp_path / "crash.db") as conn:
            assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    else:
        import psycopg

        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS amcheck")
            for index in ("announcements_pkey", "announcements_listing"):
                conn.execute("SELECT bt_index_check(%s::regclass, true)", (index,))  # raises on corruption


def readers_of(log: Path, path: str) -> set[int]:
    """The pids of the workers whose access lines show a GET of `path` (complete lines only: the server
    may be writing one)."""
    written = log.read_text()
    complete = written[: written.rfind("\n") + 1]
    return {
        line["pid"]
        for line in map(json.loads, filter(lambda raw: raw.startswith("{"), complete.splitlines()))
        if line.get("path") == path and line.get("method") == "GET"
    }


@pytest.mark.postgres
def test_two_workers_share_one_postgres_database(postgres_server: str, tmp_path: Path) -> None:
    database_url = reset_postgres(postgres_server)
    release_phase(database_url, tmp_path)
    env = {"DATABASE_URL": database_url, "ADMIN_TOKEN": TOKEN, "WEB_CONCURRENCY": "2", "ACCESS_LOG": "true"}
    log = tmp_path / "server.log"
    with procfile_server(env, cwd=tmp_path, log=log) as (url, _):
        created = httpx.post(f"{url}/announcements", json={"title": "Seen by both", "body": "b"}, headers=ADMIN, timeout=10)
        assert created.status_code == 201
        location, etag = created.headers["location"], created.headers["etag"]
        reads: list[httpx.Response] = []
        # A new connection each; which worker takes one is the kernel's choice: read on until both have served.
        while len(reads) < 40 or len(readers_of(log, location)) < 2:
            reads.append(httpx.get(f"{url}{location}", timeout=10))
            assert len(reads) < 2000, "the reads never reached both workers"
        assert all(r.status_code == 200 and r.json() == created.json() for r in reads)

        outcomes: list[int] = []
        start = threading.Barrier(10)

        def editor(n: int) -> None:
            start.wait()
            response = httpx.patch(
                f"{url}{location}", json={"title": f"editor {n}"}, headers={**ADMIN, "If-Match": etag}, timeout=10
            )
            outcomes.append(response.status_code)

        editors = [threading.Thread(target=editor, args=(n,)) for n in range(10)]
        for thread in editors:
            thread.start()
        for thread in editors:
            thread.join(timeout=30)
        # An admin read goes to the database (a public one may come from a worker's read cache for up to 1 s).
        final = httpx.get(f"{url}{location}", headers=ADMIN, timeout=10).json()
    assert sorted(outcomes) == [200] + [412] * 9
    assert final["title"].startswith("editor ")
    read_pids = readers_of(log, location)
    write_pids = {line["pid"] for line in log_lines(log) if line.get("method") in ("POST", "PATCH")}
    assert len(read_pids) == 2, "reads were served by both workers"
    assert len(read_pids | write_pids) == 2
