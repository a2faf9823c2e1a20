"""Every log line is one JSON object with ts, level, logger, msg and pid, plus request_id and trace_id
while a request runs: the service's lines, uvicorn's and any library's. No secret in any of them."""

from __future__ import annotations

import io
import json
import logging
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from service.__main__ import uvicorn_options
from service.app import create_app
from service.logs import JsonFormatter, logging_config
from service.settings import Settings, load_settings
from tests.github_standin import GitHubStandIn, Reply
from tests.support import procfile_server, reset_postgres, running

pytestmark = pytest.mark.anyio

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
TRACEPARENT = f"00-{TRACE_ID}-b7ad6b7169203331-01"
SECRETS = {
    "GITHUB_TOKEN": "ghp_LOGsecret0123456789abcdef",
    "ADMIN_TOKEN": "admin-LOG-secret-0123456789",
    "METRICS_TOKEN": "metrics-LOG-secret-0123456789",
}
DATABASE_PASSWORD = "dbLOGsecret0123456789"


@pytest.fixture
def service_log() -> Iterator[io.StringIO]:
    """The service's log lines, formatted as in production, without reconfiguring this process's logging."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("service")
    logger.addHandler(handler)
    try:
        yield stream
    finally:
        logger.removeHandler(handler)


def rejecting_github(path: str, headers: dict[str, str]) -> Reply | None:
    return Reply(401, b'{"message": "Bad credentials"}') if "/repos" in path else None


async def test_a_line_logged_while_a_request_runs_names_its_request_and_trace(
    make_settings: Callable[..., Settings], standin: GitHubStandIn, service_log: io.StringIO
) -> None:
    standin.scenario = rejecting_github
    settings = make_settings(GITHUB_OWNER=standin.owner, GITHUB_API_URL=standin.url, GITHUB_TOKEN=SECRETS["GITHUB_TOKEN"])
    async with running(create_app(settings)) as client:
        response = await client.get("/github/repos", headers={"traceparent": TRACEPARENT, "X-Request-ID": "req-log-1"})
    assert response.status_code == 503
    lines = [json.loads(line) for line in service_log.getvalue().splitlines()]
    [error] = [line for line in lines if "GitHub answered 401" in line["msg"]]
    assert error["level"] == "error" and error["logger"] == "service.github"
    assert error["request_id"] == "req-log-1" and error["trace_id"] == TRACE_ID
    assert isinstance(error["ts"], float) and isinstance(error["pid"], int)


def test_lines_outside_a_request_have_no_ids() -> None:
    record = logging.LogRecord("service.app", logging.INFO, __file__, 1, "started: %s", ("sqlite",), None)
    line = json.loads(JsonFormatter().format(record))
    assert line.keys() == {"ts", "level", "logger", "msg", "pid"} and line["msg"] == "started: sqlite"


def test_uvicorn_is_given_the_services_json_logging_for_its_own_lines() -> None:
    options = uvicorn_options(load_settings({"LOG_LEVEL": "warning"}))
    assert options["log_config"] == logging_config("warning")
    config = logging_config("warning")
    assert config["formatters"]["json"]["()"] is JsonFormatter
    for name in ("uvicorn", "service"):
        assert config["loggers"][name]["handlers"] == ["stdout"]
    assert config["root"]["handlers"] == ["stdout"]  # libraries' warnings too
    assert config["handlers"]["stdout"]["stream"] == "ext://sys.stdout"


def _invalid_http_request(url: str) -> None:
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(b"NOT HTTP AT ALL\r\n\r\n")
        sock.recv(1024)  # uvicorn answers 400 and logs a warning


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_every_line_of_a_real_server_run_is_json_and_holds_no_secret(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    if backend == "sqlite":
        database_url = f"sqlite:///{tmp_path}/db.sqlite"
    else:  # the test cluster trusts local connections: the password is carried, never checked
        # An empty schema: a copy another test left in the shared tier would be served instead of the error.
        server = reset_postgres(request.getfixturevalue("postgres_server"))
        database_url = server.replace("postgres@", f"postgres:{DATABASE_PASSWORD}@", 1)
    stdout, stderr = tmp_path / "stdout.log", tmp_path / "stderr.log"
    with GitHubStandIn() as github:
        github.scenario = rejecting_github
        env = {"DATABASE_URL": database_url, "GITHUB_OWNER": github.owner, "GITHUB_API_URL": github.url, "WEB_CONCURRENCY": "2",
               "LOG_LEVEL": "debug", "ACCESS_LOG": "true", **SECRETS}  # fmt: skip
        with procfile_server(env, cwd=tmp_path, log=stdout, errors=stderr) as (url, _):
            assert httpx.get(f"{url}/health").status_code == 200
            assert httpx.get(f"{url}/github/repos", headers={"traceparent": TRACEPARENT}).status_code == 503  # logs an error
            auth = {"Authorization": f"Bearer {SECRETS['ADMIN_TOKEN']}"}
            assert httpx.post(f"{url}/announcements", json={"title": "t", "body": "b"}, headers=auth).status_code in (201, 503)
            assert httpx.post(f"{url}/announcements", json={}, headers={"Authorization": "Bearer wrong"}).status_code == 401
            metrics = httpx.get(f"{url}/metrics", headers={"Authorization": f"Bearer {SECRETS['METRICS_TOKEN']}"})
            assert metrics.status_code == 200
            _invalid_http_request(url)
        # procfile_server sent SIGTERM and waited for the exit
    out, err = stdout.read_text(), stderr.read_text()
    lines = [json.loads(raw) for raw in out.splitlines()]  # raises on any line that is not JSON
    assert err == "", "uvicorn and the libraries log to stdout, as JSON"
    for line in lines:
        assert {"ts", "level", "logger", "msg", "pid"} <= line.keys(), line
    messages = {(line["logger"], line["msg"]) for line in lines}
    assert ("uvicorn.error", "Application startup complete.") in messages
    assert any(logger == "uvicorn.error" and msg.startswith("Finished server process") for logger, msg in messages)
    assert any(logger == "uvicorn.error" and msg.startswith("Received SIGTERM") for logger, msg in messages)
    assert any(
        line["level"] == "warning" and line["logger"] == "uvicorn.error" and "Invalid HTTP" in line["msg"] for line in lines
    )
    [error] = [line for line in lines if "GitHub answered 401" in line["msg"]]
    [access] = [line for line in lines if line.get("path") == "/github/repos"]
    assert error["trace_id"] == access["trace_id"] == TRACE_ID and error["request_id"] == access["request_id"]
    assert len({line["pid"] for line in lines}) == 3  # the supervisor and two workers
    for secret in (*SECRETS.values(), DATABASE_PASSWORD):
        assert secret not in out and secret not in err
        assert secret not in metrics.text
