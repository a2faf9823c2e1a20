"""Faults seen only by a real server process: what happens to the connection and the log after an
unexpected error or a client that leaves mid-body."""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import signal
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest

from service.connections import HEAD_TIMEOUT
from tests.github_standin import GitHubStandIn
from tests.support import ROOT, procfile_server, wait_until

TOKEN = "faults-admin-token-0123456789"


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response with a Content-Length body, read from a socket that stays open."""
    received = b""
    while b"\r\n\r\n" not in received:
        part = sock.recv(65536)
        if not part:
            raise ConnectionError(f"the server closed the connection; received {received[:200]!r}")
        received += part
    head, _, body = received.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    while len(body) < int(headers.get("content-length", "0")):
        part = sock.recv(65536)
        if not part:
            raise ConnectionError("the server closed the connection mid-body")
        body += part
    return int(lines[0].split()[1]), headers, body


def json_lines(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]


def plain_lines(log: Path) -> list[str]:
    return [line for line in log.read_text().splitlines() if not line.startswith("{")]


def test_an_unexpected_error_is_answered_logged_once_as_json_and_keeps_the_connection(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    env = {"DATABASE_URL": f"sqlite:///{tmp_path}/db.sqlite", "PYTHONPATH": str(ROOT)}
    with procfile_server(env, cwd=tmp_path, log=log, command="python -m tests.faulty_app") as (url, _):
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(b"GET /_test/boom HTTP/1.1\r\nHost: x\r\nX-Request-ID: boom-1\r\n\r\n")
            status, headers, body = read_response(sock)
            assert status == 500 and headers["content-type"] == "application/problem+json"
            assert headers["x-request-id"] == "boom-1" and "boom-1" in json.loads(body)["detail"]
            assert headers.get("connection") != "close"
            assert "server" not in headers and "date" in headers  # the production options: no software banner
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")  # the same keep-alive connection
            assert read_response(sock)[0] == 200
        wait_until(lambda: any(line.get("path") == "/_test/boom" for line in json_lines(log)))
    errors = [line for line in json_lines(log) if line["level"] == "error"]
    assert len(errors) == 1, errors
    assert errors[0]["request_id"] == "boom-1" and "RuntimeError: a bug the service did not foresee" in errors[0]["exc"]
    assert [line["status"] for line in json_lines(log) if line.get("path") == "/_test/boom"] == [500]
    assert not [line for line in plain_lines(log) if "Traceback" in line or "Exception" in line or "Error" in line]


def test_a_client_leaving_mid_body_is_logged_as_its_doing_not_as_a_server_error(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    env = {"DATABASE_URL": f"sqlite:///{tmp_path}/db.sqlite", "ADMIN_TOKEN": TOKEN}
    with procfile_server(env, cwd=tmp_path, log=log) as (url, _):
        host, port = url.removeprefix("http://").split(":")
        head = (f"POST /announcements HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nX-Request-ID: gone-1\r\n"
                "Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n")  # fmt: skip
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(head.encode() + b'{"title": "half')
            time.sleep(0.3)  # the server is reading the body when the client goes
        wait_until(lambda: any(line.get("request_id") == "gone-1" for line in json_lines(log)))
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            assert read_response(sock)[0] == 200
    about_it = [line for line in json_lines(log) if line.get("request_id") == "gone-1"]
    assert [(line["level"], line.get("status")) for line in about_it] == [("info", 499)]
    assert not [line for line in json_lines(log) if line["level"] in ("error", "critical")]
    assert not [line for line in plain_lines(log) if "Traceback" in line or "Exception" in line or "Error" in line]


def test_connections_that_never_finish_a_request_head_are_closed_and_idle_keep_alive_is_not(tmp_path: Path) -> None:
    """Slowloris: connections that send nothing, or trickle a head a byte a second, are closed soon after
    HEAD_TIMEOUT; a keep-alive connection idle after its response keeps uvicorn's longer keep-alive."""
    env = {"DATABASE_URL": f"sqlite:///{tmp_path}/db.sqlite", "ACCESS_LOG": "false"}
    with procfile_server(env, cwd=tmp_path) as (url, _):
        host, port = url.removeprefix("http://").split(":")
        address = (host, int(port))
        kept_alive = socket.create_connection(address, timeout=10)
        kept_alive.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(kept_alive)[0] == 200
        opened = time.monotonic()
        selector = selectors.DefaultSelector()
        held: dict[socket.socket, bool] = {}  # socket -> trickling
        for n in range(200):
            sock = socket.create_connection(address, timeout=10)
            if n % 2:
                sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
            sock.setblocking(False)
            selector.register(sock, selectors.EVENT_READ)
            held[sock] = bool(n % 2)
        next_byte = time.monotonic() + 1
        while held and time.monotonic() < opened + HEAD_TIMEOUT + 5:
            for key, _ in selector.select(timeout=0.1):
                sock = key.fileobj
                with contextlib.suppress(BlockingIOError):
                    try:
                        closed = sock.recv(1024) == b""  # closed by the server, without an answer
                    except ConnectionResetError:  # closed while a trickled byte was on its way: reset, not FIN
                        closed = True
                    if closed:
                        selector.unregister(sock)
                        del held[sock]
                        sock.close()
            if time.monotonic() >= next_byte:
                for sock, trickling in held.items():
                    if trickling:
                        with contextlib.suppress(OSError):
                            sock.send(b"X")
                next_byte += 1
                with socket.create_connection(address, timeout=10) as probe:  # the service keeps answering
                    probe.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
                    assert read_response(probe)[0] == 200
        still_held = len(held)
        assert still_held == 0, f"{still_held} connections still held {time.monotonic() - opened:.1f} s after opening"
        kept_alive.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")  # idle for longer than HEAD_TIMEOUT
        assert read_response(kept_alive)[0] == 200
        kept_alive.close()


def server_side_connections(port: int) -> tuple[int, int]:
    """(established, holding unread bytes) among the kernel's IPv4 sockets whose local port is `port`."""
    established = unread = 0
    for row in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = row.split()
        if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "01":  # 01: ESTABLISHED
            established += 1
            unread += int(fields[4].split(":")[1], 16) > 0  # rx_queue
    return established, unread


def connection_refused(port: int) -> bool:
    """Whether a new connection to `port` is refused (accepted into a backlog does not count)."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


@pytest.mark.parametrize("target", ["parent", "process group"])
def test_with_two_workers_sigterm_refuses_new_connections_at_once_and_finishes_in_flight_ones(
    tmp_path: Path, target: str
) -> None:
    """As with one worker: Heroku signals the whole process group; a plain `kill` signals the parent."""
    with GitHubStandIn(count=30) as github:
        github.hold = threading.Event()  # upstream answers wait until after SIGTERM
        env = {"DATABASE_URL": f"sqlite:///{tmp_path}/db.sqlite", "GITHUB_OWNER": github.owner, "GITHUB_API_URL": github.url,
               "GITHUB_TIMEOUT": "20", "WEB_CONCURRENCY": "2", "ACCESS_LOG": "false"}  # fmt: skip
        with procfile_server(env, cwd=tmp_path) as (url, process):
            port = int(url.rsplit(":", 1)[1])
            results: list[int | str] = []

            def one() -> None:
                try:
                    results.append(httpx.get(f"{url}/github/repos", timeout=30).status_code)
                except httpx.HTTPError as exc:
                    results.append(type(exc).__name__)

            clients = [threading.Thread(target=one) for _ in range(10)]
            for thread in clients:
                thread.start()
            wait_until(lambda: server_side_connections(port) == (10, 0))  # sent, accepted and read by a worker
            assert results == [], "requests must still be in flight when SIGTERM arrives"
            if target == "parent":
                process.send_signal(signal.SIGTERM)
            else:
                os.killpg(process.pid, signal.SIGTERM)
            # Each process closes the shared listening socket at its own pace (uvicorn looks every 0.1 s);
            # the kernel refuses connections once the last one has. The held requests are still in flight.
            wait_until(lambda: connection_refused(port))
            assert results == [], "new connections must be refused before the in-flight requests finish"
            for _ in range(5):
                with pytest.raises(ConnectionRefusedError):
                    socket.create_connection(("127.0.0.1", port), timeout=2).close()
                time.sleep(0.1)
            github.hold.set()
            exit_code = process.wait(timeout=25)
            for thread in clients:
                thread.join(timeout=10)
    assert results == [200] * 10
    assert exit_code == 0
