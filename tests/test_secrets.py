"""GITHUB_TOKEN and ADMIN_TOKEN never show in logs, errors or responses, whatever fails."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import hypothesis
import pytest
import schemathesis
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.app import create_app
from service.docs import load_spec, spec_path
from service.settings import Settings
from tests.github_standin import GitHubStandIn, Reply
from tests.support import contract_config, procfile_server, running

pytestmark = pytest.mark.anyio

GITHUB_TOKEN = "ghp_KNOWNgithubSECRET0123456789"
ADMIN_TOKEN = "KNOWN-admin-SECRET-0123456789"
SECRETS = (GITHUB_TOKEN, ADMIN_TOKEN)


class ResponseRecorder:
    """Pure ASGI: keeps every response's headers and body for inspection."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.seen: list[bytes] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def record(message: Message) -> None:
            if message["type"] == "http.response.start":
                self.seen.append(b"\n".join(k + b": " + v for k, v in message.get("headers", [])))
            elif message["type"] == "http.response.body":
                self.seen.append(message.get("body", b""))
            await send(message)

        await self.app(scope, receive, record)


def assert_no_secret(*texts: str | bytes) -> None:
    for text in texts:
        blob = text.decode("utf-8", "replace") if isinstance(text, bytes) else text
        for secret in SECRETS:
            assert secret not in blob, f"secret leaked: {blob[:200]!r}"


def failing_github(path: str, headers: dict[str, str]) -> Reply | None:
    if "/repos/" in path and "project-001" in path:
        return Reply(500, b"oops")
    if "/repos/" in path and "project-002" in path:
        return Reply(403, b"{}", {"x-ratelimit-remaining": "0", "x-ratelimit-reset": "9999999999"})
    if path.startswith("/users/") and path.endswith("/repos?type=owner&per_page=100"):
        return Reply(401, b'{"message": "Bad credentials"}')
    return None


async def test_secrets_stay_out_of_responses_and_logs_in_process(
    make_settings: Callable[..., Settings],
    standin: GitHubStandIn,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.DEBUG)
    standin.scenario = failing_github
    settings = make_settings(GITHUB_OWNER=standin.owner, GITHUB_API_URL=standin.url, GITHUB_TOKEN=GITHUB_TOKEN,
                             ADMIN_TOKEN=ADMIN_TOKEN, ACCESS_LOG="true", GITHUB_TIMEOUT="1")  # fmt: skip
    app = create_app(settings)
    recorder = ResponseRecorder(app)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=recorder, client=("127.0.0.1", 1))
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            for path in ("/github/repos", "/github/repos/project-001", "/github/repos/project-002", "/github/owner",
                         "/health/ready"):  # fmt: skip
                await client.get(path)
            for header in (f"Bearer {ADMIN_TOKEN}x", f"Basic {ADMIN_TOKEN}", f"Bearer {ADMIN_TOKEN[:-1]}", "Bearer"):
                response = await client.post(
                    "/announcements", json={"title": "t", "body": "b"}, headers={"Authorization": header}
                )
                assert response.status_code == 401
            await client.get("/boom-" + ADMIN_TOKEN[:4])
    assert len(recorder.seen) == 2 * 10  # headers and body of each response
    out = capsys.readouterr()
    assert_no_secret(*recorder.seen, caplog.text, out.out, out.err)
    assert any("401" in r.getMessage() for r in caplog.records), "the rejected GitHub token was logged (without itself)"


def test_secrets_stay_out_during_the_contract_run(
    make_settings: Callable[..., Settings],
    standin: GitHubStandIn,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.DEBUG)
    settings = make_settings(GITHUB_OWNER=standin.owner, GITHUB_API_URL=standin.url, GITHUB_TOKEN=GITHUB_TOKEN,
                             ADMIN_TOKEN=ADMIN_TOKEN, ACCESS_LOG="true")  # fmt: skip
    recorder = ResponseRecorder(create_app(settings))
    schema = schemathesis.openapi.from_path(str(spec_path()), config=contract_config(admin_token=ADMIN_TOKEN))
    schema.app = recorder
    machine = schema.as_state_machine().TestCase
    machine.settings = hypothesis.settings(
        machine.settings, max_examples=20, stateful_step_count=6, derandomize=True, deadline=None
    )
    machine().runTest()
    assert len(recorder.seen) > 50
    out = capsys.readouterr()
    assert_no_secret(*recorder.seen, caplog.text, out.out, out.err)


def test_secrets_stay_out_of_a_real_servers_output(tmp_path: Path) -> None:
    with GitHubStandIn() as github:
        github.scenario = failing_github
        env = {"DATABASE_URL": f"sqlite:///{tmp_path}/db.sqlite", "GITHUB_OWNER": github.owner, "GITHUB_API_URL": github.url,
               "GITHUB_TOKEN": GITHUB_TOKEN, "ADMIN_TOKEN": ADMIN_TOKEN, "LOG_LEVEL": "debug"}  # fmt: skip
        log = tmp_path / "server.log"
        with procfile_server(env, cwd=tmp_path, log=log) as (url, _):
            bodies = [httpx.get(f"{url}{p}").content for p in ("/github/repos", "/github/repos/project-001", "/health/ready")]
            bodies.append(
                httpx.post(f"{url}/announcements", json={}, headers={"Authorization": f"Bearer {ADMIN_TOKEN}!"}).content
            )
        assert github.calls, "GitHub was called with the token"
    config = subprocess.run([sys.executable, "-m", "service", "check-config"], env={**os.environ, **env},
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    assert config.returncode == 0
    assert "GitHub answered 401" in log.read_text()
    assert_no_secret(log.read_text(), config.stdout, config.stderr, *bodies)


async def test_every_write_operation_refuses_a_request_without_the_token(make_settings: Callable[..., Settings]) -> None:
    _, spec = load_spec()
    writes = [
        (method.upper(), path.replace("{id}", "1"))
        for path, item in spec["paths"].items()
        for method, operation in item.items()
        if isinstance(operation, dict)
        and {"adminToken": []} in operation.get("security", [])
        and {} not in operation.get("security", [])
    ]
    assert {m for m, _ in writes} == {"POST", "PATCH", "DELETE"}
    async with running(create_app(make_settings(ADMIN_TOKEN=ADMIN_TOKEN))) as client:
        for method, path in writes:
            for headers in ({}, {"Authorization": "Bearer nope"}):
                response = await client.request(method, path, json={"title": "t", "body": "b"}, headers=headers)
                assert response.status_code == 401, (method, path, headers)
                assert response.headers["www-authenticate"].startswith("Bearer")
