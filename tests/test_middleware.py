from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import anyio
import httpx
import pytest
from starlette.middleware.body_limit import RequestBodyLimitMiddleware
from starlette.middleware.exceptions import ExceptionMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.app import create_app
from service.errors import EXCEPTION_HANDLERS
from service.logs import AccessLog
from service.middleware import AccessMiddleware, FallbackMiddleware, RequestContextMiddleware
from service.settings import Settings
from service.telemetry import Telemetry
from tests.support import ROOT, app_with_test_routes, assert_problem, eventually, running

pytestmark = pytest.mark.anyio


def stacked(app: ASGIApp, *, access_log: AccessLog | None = None, timeout: float = 10.0) -> ASGIApp:
    """`app` inside the service's own middleware, in the order service.app stacks them."""
    telemetry = Telemetry()
    inner = FallbackMiddleware(app, seconds=timeout, max_body_size=1_000_000)
    return RequestContextMiddleware(AccessMiddleware(inner, telemetry=telemetry, access_log=access_log), telemetry=telemetry)


@contextlib.asynccontextmanager
async def running_raw(app: ASGIApp) -> AsyncIterator[httpx.AsyncClient]:
    """A client for a bare ASGI app (no lifespan), from the same client address as `running`."""
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        yield client


# -- request ids -----------------------------------------------------------------------------


@pytest.mark.parametrize("incoming", ["abc.DEF_123-x", "x", "x" * 200])
async def test_valid_incoming_request_id_is_echoed(client: httpx.AsyncClient, incoming: str) -> None:
    response = await client.get("/health", headers={"X-Request-ID": incoming})
    assert response.headers["x-request-id"] == incoming


@pytest.mark.parametrize("incoming", ["", "has space", "x" * 201, "bad\u00e9", "a;b", "a:b", "a/b", "a=b", "a+b", "a\tb", "a,b"])
async def test_invalid_incoming_request_id_is_replaced(client: httpx.AsyncClient, incoming: str) -> None:
    response = await client.get("/health", headers={"X-Request-ID": incoming.encode()})
    generated = response.headers["x-request-id"]
    assert generated != incoming and re.fullmatch("[0-9a-f]{16}", generated)


async def test_generated_request_ids_differ(client: httpx.AsyncClient) -> None:
    ids = {(await client.get("/health")).headers["x-request-id"] for _ in range(20)}
    assert len(ids) == 20


async def test_nosniff_on_success_and_error(client: httpx.AsyncClient) -> None:
    for path in ("/health", "/nope"):
        assert (await client.get(path)).headers["x-content-type-options"] == "nosniff"


async def test_an_app_sending_the_same_prepared_messages_each_time_gets_the_headers_once() -> None:
    start = {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]}
    body = {"type": "http.response.body", "body": b"ok"}

    async def fixed(scope: Scope, receive: Receive, send: Send) -> None:
        await send(start)
        await send(body)

    async with running_raw(stacked(fixed)) as client:
        responses = [await client.get("/") for _ in range(3)]
    for response in responses:
        assert [name for name, _ in response.headers.multi_items()].count("x-request-id") == 1
    assert start["headers"] == [(b"content-length", b"2")]


async def test_exception_handlers_added_to_the_app_answer_as_starlette_documents(
    make_settings: Callable[..., Settings], caplog: pytest.LogCaptureFixture
) -> None:
    """`app.add_exception_handler` and `app.add_route` work as Starlette documents: a KeyError handler answers
    418; an exception no handler takes is the generic 500 problem, logged once; too late to answer (the
    response began), it is only logged."""

    async def teapot(request: Request, exc: Exception) -> Response:
        return Response(f"handled {type(exc).__name__} at {request.url.path}", status_code=418)

    async def raises_key(request: Request) -> Response:
        raise KeyError("boom")

    async def raises_type(request: Request) -> Response:
        raise TypeError("boom")

    class Late:  # a bare ASGI app as a route
        async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"4")]})
            await send({"type": "http.response.body", "body": b"sent"})
            raise ValueError("after the start")

    app = create_app(make_settings())
    app.add_exception_handler(KeyError, teapot)
    app.add_route("/key", raises_key)
    app.add_route("/type", raises_type)
    app.router.routes.append(Route("/late", Late()))
    async with running(app) as client:
        key, other = [await client.get(path) for path in ("/key", "/type")]
        assert (key.status_code, key.text) == (418, "handled KeyError at /key")
        assert key.headers["x-request-id"] and key.headers["x-content-type-options"] == "nosniff"
        assert_problem(other, 500)
        with pytest.raises(ValueError):  # the in-process transport re-raises what a server would log and close on
            await client.get("/late")
    errors = [record for record in caplog.records if record.levelname == "ERROR" and record.exc_info]
    assert [str(record.exc_info[1]) for record in errors][:1] == ["boom"]
    assert sum(str(record.exc_info[1]) == "boom" for record in errors) == 1  # logged once


async def test_two_apps_in_one_process_record_apart(make_settings: Callable[..., Settings]) -> None:
    """Telemetry belongs to an app: one with metrics on and one with metrics off, side by side, and neither
    sees the other's requests."""
    on = create_app(make_settings(METRICS_TOKEN="m" * 32))
    off = create_app(make_settings())
    other_on = create_app(make_settings(METRICS_TOKEN="n" * 32))
    async with running(on) as a, running(off) as b, running(other_on) as c:
        for _ in range(3):
            await b.get("/health")
        await a.get("/health")
        assert (await b.get("/metrics", headers={"Authorization": "Bearer " + "m" * 32})).status_code == 404
        scrape = (await a.get("/metrics", headers={"Authorization": "Bearer " + "m" * 32})).text
        other = (await c.get("/metrics", headers={"Authorization": "Bearer " + "n" * 32})).text
    health = re.compile(r'website_api_http_requests_total\{method="GET",route="/health",status="200"\} (\S+)')
    assert [float(v) for v in health.findall(scrape)] == [1.0]
    assert health.findall(other) == []


# -- access log ------------------------------------------------------------------------------


async def test_access_log_is_one_json_line_per_request() -> None:
    stream = io.BytesIO()

    async def ok(request: Request) -> Response:
        return Response(b"x", status_code=201)

    app = stacked(Route("/made", ok), access_log=AccessLog(stream))
    async with running_raw(app) as client:
        await client.get("/made?q=1", headers={"X-Request-ID": "req-1"})
        await eventually(stream.getvalue, what="the batch of access lines to be written")
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

    def write(self, data: bytes | bytearray | memoryview) -> int:
        chunk = bytes(data[:100])  # a short write, as a pipe may make: the rest must follow
        self.writes.append(chunk)
        return len(chunk)


async def test_access_lines_are_written_in_batches_even_to_an_unbuffered_stream() -> None:
    stream = CountingRawStream()

    async def ok(request: Request) -> Response:
        return Response(b"x")

    access_log = AccessLog(stream)
    access_log.FLUSH_EVERY = 60.0  # so the batch surely waits while the 40 requests are made
    async with running_raw(stacked(Route("/", ok), access_log=access_log)) as client:
        for _ in range(40):
            await client.get("/")
        assert stream.writes == [], "nothing is written while the first line is younger than FLUSH_EVERY"
        access_log.flush()  # what the timer does when it fires
    lines = b"".join(stream.writes).splitlines()
    assert len(lines) == 40 and all(json.loads(line)["path"] == "/" for line in lines)
    assert len(stream.writes) <= len(b"".join(stream.writes)) // 100 + 1  # one batch, in as few writes as it takes


def test_lines_still_waiting_are_written_when_the_process_exits(tmp_path: Path) -> None:
    script = (
        "import asyncio\n"
        "from starlette.responses import Response\n"
        "from starlette.routing import Route\n"
        "from service.logs import AccessLog\n"
        "from service.middleware import AccessMiddleware, RequestContextMiddleware\n"
        "from service.telemetry import Telemetry\n"
        "async def ok(scope, receive, send):\n"
        "    await Response(b'x')(scope, receive, send)\n"
        "telemetry = Telemetry()\n"
        "app = RequestContextMiddleware(AccessMiddleware(ok, telemetry=telemetry, access_log=AccessLog()), telemetry=telemetry)\n"
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


@pytest.mark.parametrize(("access_log", "lines"), [(True, 1), (False, 0)])
async def test_access_log_can_be_switched_off(access_log: bool, lines: int) -> None:
    stream = io.BytesIO()

    async def ok(request: Request) -> Response:
        return Response(b"x")

    log = AccessLog(stream)
    async with running_raw(stacked(Route("/", ok), access_log=log if access_log else None)) as client:
        await client.get("/")
        log.flush()  # whatever is waiting for the next batch is written now
    assert len(stream.getvalue().splitlines()) == lines


async def test_access_log_setting_switches_the_lines_on_stdout(
    make_settings: Callable[..., Settings], capsys: pytest.CaptureFixture[str]
) -> None:
    out: list[str] = []

    def lines_so_far() -> list[dict[str, object]]:
        out.append(capsys.readouterr().out)
        return [json.loads(line) for line in "".join(out).splitlines() if line.startswith("{")]

    quiet_app, loud_app = create_app(make_settings(ACCESS_LOG="false")), create_app(make_settings(ACCESS_LOG="true"))
    async with running(quiet_app) as quiet, running(loud_app) as loud:
        await quiet.get("/from-the-quiet-app")
        await loud.get("/from-the-loud-app")
        # Batches are written in the order they were started: once the loud app's line is out, a line the
        # quiet app had gathered (if it wrongly did) would be out too.
        await eventually(lambda: any(line["path"] == "/from-the-loud-app" for line in lines_so_far()))
    assert [(line["path"], line["status"]) for line in lines_so_far() if "path" in line] == [("/from-the-loud-app", 404)]


# -- size limits -----------------------------------------------------------------------------


async def test_body_over_limit_by_content_length_is_413_without_reading(make_settings: Callable[..., Settings]) -> None:
    started_reading: list[bool] = []

    async def body() -> AsyncIterator[bytes]:
        started_reading.append(True)
        yield b"x" * 101

    async with running(app_with_test_routes(make_settings(MAX_BODY_BYTES="100"))) as client:
        response = await client.post("/_test/notes", content=body(),
                                     headers={"content-type": "application/json", "content-length": "101"})  # fmt: skip
    assert response.request.headers["content-length"] == "101" and "transfer-encoding" not in response.request.headers
    assert_problem(response, 413)
    assert started_reading == [], "the body was read although its declared length is over the limit"


def padded(size: int) -> bytes:
    """A valid note of exactly `size` bytes."""
    body = b'{"title": "hi"}'
    return body + b" " * (size - len(body))


async def streamed(body: bytes) -> AsyncIterator[bytes]:
    """Without a Content-Length, in 7-byte chunks: only the bytes counted as they arrive can stop it."""
    for i in range(0, len(body), 7):
        yield body[i : i + 7]


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "streamed"])
@pytest.mark.parametrize(("size", "status"), [(100, 200), (101, 413)], ids=["at-limit", "one-over"])
async def test_body_limit_is_exact(make_settings: Callable[..., Settings], declared: bool, size: int, status: int) -> None:
    async with running(app_with_test_routes(make_settings(MAX_BODY_BYTES="100"))) as client:
        content = padded(size) if declared else streamed(padded(size))
        response = await client.post("/_test/notes", content=content, headers={"content-type": "application/json"})
    assert ("content-length" in response.request.headers) is declared
    if status == 200:
        assert response.status_code == 200 and response.json()["title"] == "hi"
    else:
        assert_problem(response, 413)


async def test_streamed_body_far_over_limit_is_413(make_settings: Callable[..., Settings]) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(10):
            yield b'{"title": "' + b"x" * 30

    async with running(app_with_test_routes(make_settings(MAX_BODY_BYTES="100"))) as client:
        response = await client.post("/_test/notes", content=chunks(), headers={"content-type": "application/json"})
    assert "content-length" not in response.request.headers
    assert_problem(response, 413)


async def test_a_body_is_bounded_without_length_or_chunking_where_http_2_frames_it() -> None:
    """HTTP/2 frames a body without Content-Length or Transfer-Encoding: the limit still counts its bytes."""
    received: list[bytes] = []

    async def reader(scope: Scope, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            received.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def answer(http_version: str, chunks: list[bytes]) -> int:
        inbox = [{"type": "http.request", "body": chunk, "more_body": n < len(chunks) - 1} for n, chunk in enumerate(chunks)]
        sent: list[Message] = []

        async def receive() -> Message:
            return inbox.pop(0)

        async def send(message: Message) -> None:
            sent.append(message)

        scope = {"type": "http", "http_version": http_version, "method": "POST", "path": "/", "raw_path": b"/",
                 "query_string": b"", "headers": [], "client": ("127.0.0.1", 40000), "server": ("127.0.0.1", 80)}  # fmt: skip
        limited = RequestBodyLimitMiddleware(ExceptionMiddleware(reader, handlers=EXCEPTION_HANDLERS), max_body_size=10)
        await stacked(limited)(scope, receive, send)
        return int(sent[0]["status"])

    assert await answer("2", [b"x" * 8, b"x" * 8, b""]) == 413
    assert await answer("1.1", [b""]) == 200 and received[-1] == b""


# -- time limits -----------------------------------------------------------------------------


async def test_slow_request_gets_504_problem(make_settings: Callable[..., Settings]) -> None:
    async def slow(request: Request) -> Response:
        await anyio.sleep(30)
        return Response(b"late")

    app = create_app(make_settings(REQUEST_TIMEOUT="0.2"))
    app.router.routes.append(Route("/_test/slow", slow))
    async with running(app) as client:
        with anyio.fail_after(10):  # a bound against hanging; the promise itself is the 504 naming 0.2 s
            response = await client.get("/_test/slow")
    problem = assert_problem(response, 504)
    assert "0.2 s" in problem["detail"]


async def test_stalled_request_body_gets_408_problem(make_settings: Callable[..., Settings]) -> None:
    async def trickle() -> AsyncIterator[bytes]:
        yield b'{"title": '
        await anyio.sleep(30)
        yield b'"late"}'

    async with running(app_with_test_routes(make_settings(REQUEST_TIMEOUT="0.3"))) as client:
        with anyio.fail_after(10):
            response = await client.post("/_test/notes", content=trickle(), headers={"content-type": "application/json"})
    assert "did not arrive within 0.3 s" in assert_problem(response, 408)["detail"]


# -- CORS ------------------------------------------------------------------------------------


async def test_cors_allows_configured_origin_only(make_settings: Callable[..., Settings]) -> None:
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


async def test_answers_of_the_edge_itself_carry_cors_headers_too(make_settings: Callable[..., Settings]) -> None:
    """413 (by Content-Length), 504 and 500 are answered by the outermost layer, not a route: a browser
    script on an allowed origin can still read them (and their request id)."""

    async def slow(request: Request) -> Response:
        await anyio.sleep(30)
        return Response("never")

    # REQUEST_TIMEOUT bounds every request, the 413 and 500 too: 1 s, so a stall on a loaded machine does not
    # turn them into 504s; the slow route still times out (after 1 s).
    app = app_with_test_routes(make_settings(CORS_ORIGINS="https://site.example", REQUEST_TIMEOUT="1", MAX_BODY_BYTES="100"))
    app.router.routes.append(Route("/_test/slow", slow))
    origin = {"Origin": "https://site.example"}
    async with running(app) as client:
        with anyio.fail_after(10):
            answers = [
                await client.post("/_test/notes", content=b"x" * 101, headers={**origin, "content-type": "application/json"}),
                await client.get("/_test/slow", headers=origin),
                await client.get("/_test/boom", headers=origin),
                await client.get("/nope", headers=origin),  # a route's error, answered through its handler
            ]
            elsewhere = await client.get("/_test/boom", headers={"Origin": "https://evil.example"})
    for response, status in zip(answers, (413, 504, 500, 404), strict=True):
        assert_problem(response, status)
        assert response.headers["access-control-allow-origin"] == "https://site.example"
        assert "x-request-id" in response.headers["access-control-expose-headers"].lower()
    assert_problem(elsewhere, 500)
    assert "access-control-allow-origin" not in elsewhere.headers


async def test_no_cors_headers_without_cors_origins(client: httpx.AsyncClient) -> None:
    response = await client.get("/health", headers={"Origin": "https://site.example"})
    assert "access-control-allow-origin" not in response.headers


async def test_a_deadline_reached_while_the_answer_is_being_sent_lets_it_finish() -> None:
    """A slow reader: the server's send waits for the client (flow control) past the deadline. The answer
    under way finishes (or the connection closes); it never becomes uvicorn's plain-text 500, and the access
    line says what the client got."""
    sent: list[Message] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})

    async def slow_client_send(message: Message) -> None:
        if message["type"] == "http.response.start":
            await asyncio.sleep(0.5)  # the transport's buffer is full: the head waits for the client to read
        sent.append(message)

    async def receive() -> Message:
        await asyncio.Event().wait()
        raise AssertionError("not reached")

    stream = io.BytesIO()
    log = AccessLog(stream)
    scope = {"type": "http", "method": "GET", "path": "/slow-reader", "headers": [], "client": ("127.0.0.1", 1)}
    await stacked(app, access_log=log, timeout=0.1)(scope, receive, slow_client_send)
    log.flush()
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
    assert sent[0]["status"] == 200 and sent[1]["body"] == b"ok"
    line = json.loads(stream.getvalue())
    assert line["status"] == 200 and "cut_off" not in line
