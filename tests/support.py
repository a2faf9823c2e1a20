"""What the tests share: the app in process, the service as a real process, problem assertions, the
contract's configuration. Test modules import from here (and from github_standin), never from each other."""

from __future__ import annotations

import contextlib
import os
import shlex
import socket
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import AsyncIterator, Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Annotated, Any, Self

import anyio
import httpx
import msgspec
import schemathesis
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from service.app import create_app
from service.database import open_database
from service.json_body import read_json
from service.settings import Settings

ROOT = Path(__file__).resolve().parent.parent

# The `github_client` fixture (tests/github/conftest.py): opens an app whose GitHub is the given stand-in.
OpenClient = Callable[..., contextlib.AbstractAsyncContextManager[httpx.AsyncClient]]


# -- the app in process ----------------------------------------------------------------------


@contextlib.asynccontextmanager
async def running(app: Starlette) -> AsyncIterator[httpx.AsyncClient]:
    """Start the app's lifespan and talk to it through ASGI, as a server would."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            yield client


class Note(msgspec.Struct, forbid_unknown_fields=True):
    title: Annotated[str, msgspec.Meta(min_length=1, max_length=10)]
    count: int = 0
    tags: list[Annotated[str, msgspec.Meta(pattern="^[a-z]+$")]] = []


_note_decoder = msgspec.json.Decoder(Note)


async def _echo_note(request: Request) -> Response:
    note = await read_json(request, _note_decoder)
    return Response(msgspec.json.encode(note), media_type="application/json")


async def _boom(request: Request) -> Response:
    raise RuntimeError("database password is hunter2")


def app_with_test_routes(settings: Settings) -> Starlette:
    """The service plus POST /_test/notes (a JSON body decoded into `Note`, echoed) and /_test/boom (raises)."""
    app = create_app(settings)
    app.router.routes += [Route("/_test/notes", _echo_note, methods=["POST"]), Route("/_test/boom", _boom)]
    return app


def assert_problem(response: httpx.Response, status: int) -> dict[str, Any]:
    """An RFC 9457 problem with this status, carrying the response's request id; returns its fields."""
    assert response.status_code == status, response.text[:300]
    assert response.headers["content-type"] == "application/problem+json"
    problem: dict[str, Any] = response.json()
    assert problem["status"] == status
    assert {"type", "title", "status", "instance", "request_id"} <= problem.keys()
    assert problem["request_id"] == response.headers["x-request-id"]
    return problem


# -- waiting on conditions -------------------------------------------------------------------


# The suite's only two: both fail the test on time-out, so a forgotten `assert` cannot let a wait pass.


def wait_until(condition: Callable[[], object], *, timeout: float = 10, what: str = "the condition", every: float = 0.01) -> None:
    """Poll `condition` until it is true; fail after `timeout` seconds (a bound against hanging, not a speed)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout:g} s waiting for {what}"
        time.sleep(every)


async def eventually(
    condition: Callable[[], object], *, timeout: float = 10, what: str = "the condition", every: float = 0.01
) -> None:
    """`wait_until` for tests on the event loop."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout:g} s waiting for {what}"
        await anyio.sleep(every)


# -- stand-ins on loopback ------------------------------------------------------------------


class LoopbackServer:
    """A real HTTP server on 127.0.0.1, in a thread, for the stand-ins (GitHub, build hooks, an OTLP receiver).
    A subclass sets what its handler reads before calling `__init__`, and gives `_handler_class`."""

    def __init__(self) -> None:
        self.lock = threading.Lock()  # what the handler's threads record, and the test reads, is taken under it
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        raise NotImplementedError


class QuietHandler(BaseHTTPRequestHandler):
    """The stand-ins' request handler: HTTP/1.1 keep-alive, and no line on stderr for each request."""

    protocol_version = "HTTP/1.1"

    def body(self) -> bytes:
        """The request body, as long as its Content-Length says."""
        return self.rfile.read(int(self.headers.get("Content-Length", "0")))

    def log_message(self, format: str, *args: object) -> None:
        pass


# -- databases -------------------------------------------------------------------------------


def migrated(database_url: str) -> str:
    """What the release phase does on PostgreSQL (SQLite is migrated at start-up), in this process."""
    database = open_database(database_url, pool_size=1)
    database.open()
    try:
        database.migrate()
    finally:
        database.close()
    return database_url


def release_phase(database_url: str, cwd: Path) -> None:
    """`python -m service migrate`, as Heroku's release phase runs it before the servers start."""
    env = {**os.environ, "DATABASE_URL": database_url}
    subprocess.run([sys.executable, "-m", "service", "migrate"], cwd=cwd, env=env, check=True, capture_output=True, timeout=60)


# -- PostgreSQL ------------------------------------------------------------------------------


def reset_postgres(url: str) -> str:
    """An empty public schema, so each test starts from nothing and migrations run from scratch."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DROP SCHEMA public CASCADE")
        conn.execute("CREATE SCHEMA public")
    return url


# -- the service as a real process -----------------------------------------------------------


def free_port() -> int:
    """A port nothing listens on now. Another process may take it before ours binds: callers that start
    a server check the listener is theirs and retry (see `procfile_server`)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def refused_port() -> Iterator[int]:
    """A loopback port that refuses connections for as long as the block runs: bound, never listening,
    so no other process can start listening there meanwhile."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])


def procfile_command(process: str = "web") -> str:
    for line in (ROOT / "Procfile").read_text().splitlines():
        if line.startswith(f"{process}:"):
            return line.split(":", 1)[1].strip()
    raise LookupError(process)


def listener_inodes(port: int) -> set[str]:
    """Socket inodes listening on 127.0.0.1:`port` (or any address), from the kernel's table."""
    inodes = set()
    for row in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = row.split()
        if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "0A":  # 0A: LISTEN
            inodes.add(fields[9])
    return inodes


def owns_socket(pid: int, inodes: set[str]) -> bool:
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
                if link.startswith("socket:[") and link[8:-1] in inodes:
                    return True
    return False


class _PortTaken(Exception):
    pass


@contextlib.contextmanager
def procfile_server(
    env: dict[str, str],
    *,
    cwd: Path,
    timeout: float = 30,
    log: Path | None = None,
    errors: Path | None = None,
    command: str | None = None,
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """The Procfile's web command under bash, as Heroku runs it, with this interpreter (or `command`, run
    the same way).
    Output (JSON log lines) goes to `log`, a file, so a busy server never blocks on a full pipe;
    stderr too, unless `errors` names a file of its own for it.

    `python -m service serve` binds $PORT itself, so the port is chosen free beforehand; if another
    process takes it first, the server fails to bind (or the listener is not its own) and is started
    again on a new port."""
    log = log or cwd / "server.log"
    for attempt in range(3):
        try:
            with _procfile_server_once(env, cwd=cwd, timeout=timeout, log=log, errors=errors, command=command) as started:
                yield started
            return
        except _PortTaken:
            if attempt == 2:
                raise RuntimeError("three ports in a row were taken by other processes") from None


@contextlib.contextmanager
def _procfile_server_once(
    env: dict[str, str], *, cwd: Path, timeout: float, log: Path, errors: Path | None, command: str | None
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    port = free_port()
    bin_dir = str(Path(sys.executable).parent)
    # HOST keeps test servers on loopback; PATH puts this interpreter first, as the venv would be on a dyno.
    full_env = {**os.environ, "HOST": "127.0.0.1", "PORT": str(port), "PATH": f"{bin_dir}:{os.environ.get('PATH', '')}", **env}
    command = command or procfile_command()
    stderr_file = errors or log
    start_of_log = stderr_file.stat().st_size if stderr_file.exists() else 0
    output = log.open("ab")
    error_output = errors.open("ab") if errors is not None else None
    process = subprocess.Popen(
        ["bash", "-c", f"cd {shlex.quote(str(cwd))} && exec {command}"],
        env=full_env,
        stdout=output,
        stderr=error_output or subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                written = stderr_file.read_bytes()[start_of_log:].decode(errors="replace")
                if "address already in use" in written.lower():
                    raise _PortTaken
                raise RuntimeError(f"server exited with {process.returncode}: {written[-2000:]}")
            # Only our own listener counts: a server another process started on this port is not ours to test.
            # (With several workers, uvicorn's parent process binds the socket.)
            inodes = listener_inodes(port)
            if inodes and owns_socket(process.pid, inodes):
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                        break
            if time.monotonic() > deadline:
                raise TimeoutError("server did not answer /health in time")
            time.sleep(0.05)
        yield url, process
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        output.close()
        if error_output is not None:
            error_output.close()


def steady_traffic(urls: list[str], seconds: float, paths: list[str], *, at_least: int) -> tuple[int, float]:
    """Each server asked in turn, at most about 40 requests a second in all, for `seconds` and at least
    `at_least` requests (longer on a slow machine, up to a minute); the count sent and the seconds it took.
    Each request on a new connection, so every worker takes some."""
    sent = 0
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        clients = [stack.enter_context(httpx.Client(base_url=url, timeout=10)) for url in urls]
        while (elapsed := time.monotonic() - started) < seconds or (sent < at_least and elapsed < 60):
            response = clients[sent % len(clients)].get(paths[sent % len(paths)], headers={"Connection": "close"})
            assert response.status_code == 200, response.text
            sent += 1
            time.sleep(0.025)
    return sent, time.monotonic() - started


# -- the contract ----------------------------------------------------------------------------

CONTRACT_ADMIN_TOKEN = "contract-admin-token-0123456789"
CONTRACT_METRICS_TOKEN = "contract-metrics-token-0123456789"


def contract_config(max_examples: int = 40, admin_token: str = CONTRACT_ADMIN_TOKEN) -> schemathesis.Config:
    """schemathesis.toml (shared with the CLI), plus what only the in-process run sets."""
    config = tomllib.loads((ROOT / "schemathesis.toml").read_text())
    config.update(
        {
            "generation": {"deterministic": True, "max-examples": max_examples},
            "phases": {
                "examples": {"enabled": True},
                "coverage": {"enabled": True},
                "fuzzing": {"enabled": True},
                "stateful": {"enabled": True},
            },
            "auth": {"openapi": {"adminToken": {"bearer": admin_token}, "metricsToken": {"bearer": CONTRACT_METRICS_TOKEN}}},
        }
    )
    return schemathesis.Config.from_dict(config)
