from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import anyio
import pytest
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from service.app import create_app
from service.middleware import RequestContextMiddleware
from tests.support import ROOT, app_with_test_routes, assert_problem, running

pytestmark = pytest.mark.anyio


async def test_valid_incoming_request_id_is_echoed(client) -> None:  # type: ignore[no-untyped-def]
    response = await client.get("/health", headers={"X-Request-ID": "abc.DEF_123-x"})
    assert response.headers["x-request-id"] == "abc.DEF_123-x"


@pytest.mark.parametrize("incoming", ["", "has space", "x" * 201, "bad\u00e9", "a;b"])
async def test_invalid_incoming_request_id_is_replaced(client, incoming: str) -> None:  # type: ignore[no-untyped-def]
    response = await client.get("/health", headers={"X-Request-ID": incoming.encode()})
    generated = response.headers["x-request-id"]
    assert generated != incoming and len(generated) == 24


async def test_generated_request_ids_differ(client) -> None:  # type: ignore[no-untyped-def]
    ids = {(await client.get("/health")).headers["x-request-id"] for _ in range(20)}
    assert len(ids) == 20


async def test_nosniff_on_success_and_error(client) -> None:  # type: ignore[no-untyped-def]
    for path in ("/health", "/nope"):
        assert (await client.get(path)).headers["x-content-type-options"] == "nosniff"


async def test_access_log_is_one_json_line_per_request() -> None:
    stream = io.BytesIO()

    async def ok(request: Request) -> Response:
        return Response(b"x", status_code=201)

    app = RequestContextMiddleware(Route("/made", ok), stream=stream)
    async with running_raw(app) as client:
        await client.get("/made?q=1", headers={"X-Request-ID": "req-1"})
    await anyio.sleep(0.1)  # lines are flushed in batches
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    line = json.loads(lines[0])
    assert line["method"] == "GET" and line["path"] == "/made" and line["status"] == 201
    assert line["request_id"] == "req-1" and line["client"] == "127.0.0.1:40000" and line["pid"] == os.getpid()
    assert isinstance(line["duration_ms"], float) and line["duration_ms"] >= 0


class CountingRawStream(io.RawIOBase):
    """Like sys.stdout.buffer under PYTHONUNBUFFERED (Heroku's default): each write is a system call."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:  # type: ignore[no-untyped-def,override]
        chunk = bytes(data[:100])  # a short write, as a pipe may make: the rest must follow
        self.writes.append(chunk)
        return len(chunk)


async def test_access_lines_are_written_in_batches_even_to_an_unbuffered_stream() -> None:
    stream = CountingRawStream()

    async def ok(request: Request) -> Response:
        return Response(b"x")

    app = RequestContextMiddleware(Route("/", ok), stream=stream)  # type: ignore[arg-type]
    async with running_raw(app) as client:
        for _ in range(40):
            await client.get("/")
        assert stream.writes == [], "nothing is written while the first line is younger than 50 ms"
        await anyio.sleep(0.1)
    lines = b"".join(stream.writes).splitlines()
    assert len(lines) == 40 and all(json.loads(line)["path"] == "/" for line in lines)
    assert len(stream.writes) <= len(b"".join(stream.writes)) // 100 + 1  # one batch, in as few writes as it takes


def test_lines_still_waiting_are_written_when_the_process_exits(tmp_path: Path) -> None:
    script = (
        "import asyncio\n"
        "from starlette.responses import Response\n"
        "from starlette.routing import Route\n"
        "from service.middleware import RequestContextMiddleware\n"
        "async def ok(scope, receive, send):\n"
        "    await Response(b'x')(scope, receive, send)\n"
        "app = RequestContextMiddleware(ok)\n"
        "async def main():\n"
        "    async def receive(): return {'type': 'http.request', 'body': b''}\n"
        "    async def send(message): pass\n"
        "    scope = {'type': 'http', 'method': 'GET', 'path': '/last', 'headers': [], 'client': None}\n"
        "    await app(scope, receive, send)\n"
        "asyncio.run(main())\n"  # the loop ends at once: the 50 ms flush never runs, the exit hook must
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=30, cwd=ROOT,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["path"] == "/last"


async def test_access_log_can_be_switched_off() -> None:
    stream = io.BytesIO()

    async def ok(request: Request) -> Response:
        return Response(b"x")

    app = RequestContextMiddleware(Route("/", ok), access_log=False, stream=stream)
    async with running_raw(app) as client:
        await client.get("/")
    assert stream.getvalue() == b""


async def test_settings_access_log_reaches_stdout(make_settings, capsys) -> None:  # type: ignore[no-untyped-def]
    async with running(create_app(make_settings(ACCESS_LOG="true"))) as client:
        await client.get("/nope")
        await anyio.sleep(0.1)  # lines are flushed in batches, at most 50 ms apart
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["path"] == "/nope" and line["status"] == 404


async def test_body_over_limit_by_content_length_is_413_without_reading(make_settings) -> None:  # type: ignore[no-untyped-def]
    async with running(app_with_test_routes(make_settings(MAX_BODY_BYTES="100"))) as client:
        response = await client.post("/_test/notes", content=b"x" * 101, headers={"content-type": "application/json"})
    assert_problem(response, 413)


async def test_streamed_body_over_limit_is_413(make_settings) -> None:  # type: ignore[no-untyped-def]
    async def chunks():  # type: ignore[no-untyped-def]
        for _ in range(10):
            yield b'{"title": "' + b"x" * 30

    async with running(app_with_test_routes(make_settings(MAX_BODY_BYTES="100"))) as client:
        response = await client.post("/_test/notes", content=chunks(), headers={"content-type": "application/json"})
    assert "content-length" not in response.request.headers
    assert_problem(response, 413)


async def test_body_at_limit_is_accepted(make_settings) -> None:  # type: ignore[no-untyped-def]
    body = b'{"title": "hi"}'
    async with running(app_with_test_routes(make_settings(MAX_BODY_BYTES=str(len(body))))) as client:
        response = await client.post("/_test/notes", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 200


async def test_slow_request_gets_504_problem(make_settings) -> None:  # type: ignore[no-untyped-def]
    async def slow(request: Request) -> Response:
        await anyio.sleep(5)
        return Response(b"late")

    app = create_app(make_settings(REQUEST_TIMEOUT="0.2"))
    app.router.routes.append(Route("/_test/slow", slow))
    async with running(app) as client:
        with anyio.fail_after(2):
            response = await client.get("/_test/slow")
    problem = assert_problem(response, 504)
    assert "0.2 s" in problem["detail"]


async def test_stalled_request_body_gets_408_problem(make_settings) -> None:  # type: ignore[no-untyped-def]
    async def trickle():  # type: ignore[no-untyped-def]
        yield b'{"title": '
        await anyio.sleep(5)
        yield b'"late"}'

    async with running(app_with_test_routes(make_settings(REQUEST_TIMEOUT="0.3"))) as client:
        with anyio.fail_after(3):
            response = await client.post("/_test/notes", content=trickle(), headers={"content-type": "application/json"})
    assert "did not arrive" in assert_problem(response, 408)["detail"]


async def test_cors_allows_configured_origin_only(make_settings) -> None:  # type: ignore[no-untyped-def]
    async with running(create_app(make_settings(CORS_ORIGINS="https://site.example"))) as client:
        allowed = await client.get("/health", headers={"Origin": "https://site.example"})
        other = await client.get("/health", headers={"Origin": "https://evil.example"})
        preflight = await client.options(
            "/health", headers={"Origin": "https://site.example", "Access-Control-Request-Method": "GET"}
        )
        refused = await client.options(
            "/health", headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "GET"}
        )
    assert allowed.headers["access-control-allow-origin"] == "https://site.example"
    assert "x-request-id" in allowed.headers["access-control-expose-headers"].lower()
    assert "access-control-allow-origin" not in other.headers
    assert preflight.status_code == 200
    assert refused.status_code == 400 and refused.headers["content-type"] == "application/problem+json"


async def test_no_cors_headers_without_cors_origins(client) -> None:  # type: ignore[no-untyped-def]
    response = await client.get("/health", headers={"Origin": "https://site.example"})
    assert "access-control-allow-origin" not in response.headers


def running_raw(app):  # type: ignore[no-untyped-def]
    import contextlib

    import httpx

    @contextlib.asynccontextmanager
    async def open_client():  # type: ignore[no-untyped-def]
        transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            yield client

    return open_client()
