"""Pure-ASGI middleware on every request: request id, access log, security headers, timeouts, body limit."""

from __future__ import annotations

import os
import re
import sys
import time
from typing import IO

import anyio
import msgspec
from starlette.datastructures import Headers, MutableHeaders
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import PayloadTooLarge, problem_response

_VALID_REQUEST_ID = re.compile(rb"[A-Za-z0-9._-]{1,200}")


class AccessLine(msgspec.Struct):
    ts: float
    level: str
    msg: str
    method: str
    path: str
    status: int
    duration_ms: float
    request_id: str
    client: str | None
    pid: int


class RequestContextMiddleware:
    """Gives each request an id, echoes it, adds nosniff, and writes one JSON access line."""

    def __init__(self, app: ASGIApp, *, access_log: bool = True, stream: IO[str] | None = None) -> None:
        self.app = app
        self.access_log = access_log
        self.stream = stream if stream is not None else sys.stdout
        self.encoder = msgspec.json.Encoder()
        self.pid = os.getpid()  # tells the workers of one dyno apart

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _incoming_request_id(scope) or _new_request_id()
        scope.setdefault("state", {})["request_id"] = request_id
        started = time.perf_counter()
        status = 500  # what the client gets if the app raises before answering

        async def send_with_headers(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = MutableHeaders(scope=message)
                headers.append("X-Request-ID", request_id)
                headers.append("X-Content-Type-Options", "nosniff")
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        finally:
            if self.access_log:
                self._log(scope, status, started, request_id)

    def _log(self, scope: Scope, status: int, started: float, request_id: str) -> None:
        client = scope.get("client")
        line = AccessLine(
            ts=round(time.time(), 3),
            level="info",
            msg="request",
            method=scope["method"],
            path=scope["path"],
            status=status,
            duration_ms=round((time.perf_counter() - started) * 1000, 3),
            request_id=request_id,
            client=f"{client[0]}:{client[1]}" if client else None,
            pid=self.pid,
        )
        self.stream.write(self.encoder.encode(line).decode() + "\n")
        self.stream.flush()


def _incoming_request_id(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == b"x-request-id":
            return value.decode("ascii") if _VALID_REQUEST_ID.fullmatch(value) else None
    return None


def _new_request_id() -> str:
    return os.urandom(12).hex()


class RequestTimeoutMiddleware:
    """Answers a request not answered within `timeout` seconds: 408 if the client was still sending
    its body (a slow or stalled upload), 504 if the service itself was too slow."""

    def __init__(self, app: ASGIApp, *, timeout: float) -> None:
        self.app = app
        self.timeout = timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False
        receiving = False

        async def receive_tracking() -> Message:
            nonlocal receiving
            receiving = True
            message = await receive()
            receiving = message.get("more_body", False)
            return message

        async def send_tracking(message: Message) -> None:
            nonlocal started
            started = True
            await send(message)

        with anyio.move_on_after(self.timeout) as cancel_scope:
            await self.app(scope, receive_tracking, send_tracking)
        if cancel_scope.cancelled_caught and not started:
            if receiving:
                response = problem_response(
                    scope, 408, slug="request-body-timeout", headers={"Connection": "close"},
                    detail=f"The request body did not arrive within {self.timeout:g} s.",
                )  # fmt: skip
            else:
                response = problem_response(
                    scope, 504, title="Request timed out", slug="request-timeout",
                    detail=f"The request was not answered within {self.timeout:g} s.",
                )  # fmt: skip
            await response(scope, receive, send)


class BodyLimitMiddleware:
    """Refuses bodies over `max_bytes` without buffering them: by Content-Length up front, else while streaming."""

    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await problem_response(scope, 413, slug="payload-too-large", detail=self._detail())(scope, receive, send)
            return
        received = 0

        async def receive_limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise PayloadTooLarge(self._detail())
            return message

        await self.app(scope, receive_limited, send)

    def _detail(self) -> str:
        return f"The request body exceeds the limit of {self.max_bytes} bytes."


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


class CorsMiddleware(CORSMiddleware):
    """Starlette's CORS, with refused preflights answered as problems like every other error."""

    def preflight_response(self, request_headers: Headers) -> Response:
        response = super().preflight_response(request_headers)
        if response.status_code < 400:
            return response
        keep = {k: v for k, v in response.headers.items() if k.lower().startswith("access-control-") or k.lower() == "vary"}
        return problem_response(
            {"path": "*"}, response.status_code, title="CORS preflight refused", detail=response.body.decode(), headers=keep
        )
