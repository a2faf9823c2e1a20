"""The pure-ASGI layer on every request (request id and trace, security headers, time and size limits, the
last-resort 500, metrics, access log) and the CORS it may run."""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import functools
import os
import re
import sys
import time
import weakref
from asyncio import current_task
from collections.abc import Awaitable, Callable, Mapping
from operator import countOf, itemgetter
from threading import get_ident
from typing import IO, Any

import msgspec
from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service import tracing
from service.errors import PayloadTooLarge, problem_response, unhandled_error
from service.http import raw_header
from service.metrics import Series
from service.tracing import OpenTelemetry, RequestIds, TraceParent, new_span_id, new_trace, parse_traceparent

_VALID_REQUEST_ID = re.compile(rb"[A-Za-z0-9._-]{1,200}")
ErrorHandler = Callable[[Request, Exception], Awaitable[Response]]
CLIENT_CLOSED_REQUEST = 499  # nginx's status for a client that left before it was answered; never sent


class AccessLine(msgspec.Struct, gc=False):
    ts: float
    level: str
    logger: str
    msg: str
    method: str
    path: str
    status: int
    duration_ms: float
    request_id: str
    trace_id: str
    client: str | None
    pid: int


class EdgeMiddleware:
    """The one layer every request passes, outermost. It

    - gives the request an id and a trace (W3C trace context), echoes the id and adds nosniff;
    - bounds the request in time and size: not answered within `timeout` seconds, 408 if the client was
      still sending its body (a slow or stalled upload), 504 if the service itself was too slow; a body
      over `max_body_bytes` (or the limit `body_limits` sets for its path), 413, by Content-Length up front
      or while streaming, never buffered;
    - answers what no handler took with a generic 500 (service.errors.unhandled_error), logged once, the
      connection kept; a client that left before its body arrived (ClientDisconnect) gets its access line
      (status 499) and nothing else;
    - records the request's metrics and server span when those are on, and writes one JSON access line.

    With `cors` options it runs Starlette's CORS (CorsMiddleware) inside itself, and its own answers (413,
    408, 504, 500) carry the CORS headers too.

    One layer rather than one per concern: every layer costs a coroutine and a wrapper around each
    message on every request, and on /health that was a third of the time this service spends beyond bare
    Starlette (bench/, scenario 1). Deadlines are checked by one sweeper every 100 ms rather than a timer
    per request: a request costs a dict entry, not a timer.
    """

    FLUSH_EVERY = 0.05  # seconds a line may wait in the buffer
    FLUSH_AT = 64 * 1024  # bytes that are written at once, however recent
    SWEEP_EVERY = 0.1

    def __init__(
        self,
        app: ASGIApp,
        *,
        access_log: bool = True,
        stream: IO[bytes] | None = None,
        metrics: Series | None = None,
        otel: OpenTelemetry | None = None,
        timeout: float = 10.0,
        max_body_bytes: int = 65536,
        body_limits: Mapping[str, int] | None = None,
        cors: Mapping[str, Any] | None = None,
        handlers: Mapping[type[Exception], ErrorHandler] | None = None,
    ) -> None:
        self.cors = CorsMiddleware(app, **cors) if cors else None
        self.app: ASGIApp = self.cors or app
        self.access_log = access_log
        self.metrics = metrics
        self.otel = otel
        self.timeout = timeout
        self.max_body_bytes = max_body_bytes
        self.body_limits = dict(body_limits or {})  # exact path -> its own limit (GitHub's webhook deliveries)
        self.handlers = dict(handlers or {})  # exception class -> the handler that answers it (Starlette's signature)
        self._exchanges: dict[asyncio.Task[Any], _Exchange] = {}
        self._loops: dict[int, asyncio.AbstractEventLoop] = {}  # by thread (see __call__)
        self._sweeping: asyncio.AbstractEventLoop | None = None  # the loop the sweeper is armed on
        # With PYTHONUNBUFFERED (Heroku's default) sys.stdout.buffer is the raw file: every write is a
        # system call. Lines are therefore gathered here and written together, at most 50 ms apart.
        self.stream = stream if stream is not None else sys.stdout.buffer
        self.encoder = msgspec.json.Encoder()
        self.pid = os.getpid()  # tells the workers of one dyno apart
        self._pending = bytearray()
        self._clients: dict[tuple[str, int], str] = {}  # client address -> its "host:port" in access lines
        _unflushed.add(self)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming_id, parent, declared, body = _incoming(scope)
        # Without a valid X-Request-ID from the caller, the request's id is its span's: random, 64 bits,
        # drawn anyway, and it ties the access line to the trace.
        otel = self.otel
        if otel is None:
            if parent is None:
                trace_id, span_id = new_trace()
                ids = RequestIds(incoming_id or span_id, trace_id, span_id, False)
            else:
                span_id = new_span_id()
                ids = RequestIds(incoming_id or span_id, parent.trace_id, span_id, parent.sampled)
        else:
            span, token, ids = otel.start_server_span(scope["method"], scope["path"], parent, incoming_id)
        request_id = ids.request_id
        # Not reset when the request ends: the server gives each request a task (a context) of its own.
        tracing.current.set(ids)
        started = time.perf_counter_ns()
        # The running loop and the request's task. On Python 3.11 asyncio.get_running_loop() makes a
        # getpid() system call each time (its check against a fork): strace counted 1.06 a request under
        # load, none since. The loop is therefore remembered per thread and trusted only while it runs a
        # task in this thread; a loop that is not running has no current task (a new loop, as in tests).
        thread = get_ident()
        loop = self._loops.get(thread)
        task = current_task(loop) if loop is not None else None
        if task is None:
            loop = self._loops[thread] = asyncio.get_running_loop()
            task = current_task(loop)
        assert loop is not None and task is not None
        exchange = self._exchanges[task] = _Exchange(loop.time() + self.timeout)
        if self._sweeping is not loop:  # not armed, or armed on a loop that has ended (tests run several)
            self._sweeping = loop
            loop.call_later(self.SWEEP_EVERY, self._sweep, loop)
        id_header = (b"x-request-id", request_id.encode())

        # A function that returns send's awaitable, not a coroutine of its own: it runs for every message.
        def send_with_headers(message: Message) -> Awaitable[None]:
            if message["type"] == "http.response.start":
                exchange.status = message["status"]
                # A new message and list: an app may send the same prepared ones on every request.
                message = dict(message)
                message["headers"] = [*message.get("headers", ()), id_header, _NOSNIFF]
            return send(message)

        try:
            if not body:  # nothing can arrive: `receive` is passed as it is (a closure fewer per request)
                await self.app(scope, receive, send_with_headers)
            else:
                limit = self.body_limits.get(scope["path"], self.max_body_bytes)
                if declared is not None and declared > limit:
                    response = problem_response(scope, 413, slug="payload-too-large", detail=_too_large(limit))
                    await self._answer(response, scope, receive, send_with_headers)
                else:
                    await self.app(scope, _limited(receive, exchange, limit), send_with_headers)
        except ClientDisconnect:
            exchange.status = CLIENT_CLOSED_REQUEST  # nobody is left to answer
        except asyncio.CancelledError:
            if not exchange.expired or task.uncancel() > 0:
                raise  # not (only) ours: the server is shutting down or the client went away
            if exchange.status is None:
                await self._answer(self._timed_out(exchange, scope), scope, receive, send_with_headers)
        except Exception as exc:
            if exchange.status is None:  # otherwise the server closes the connection on the unfinished response
                await self._answer(await self._handle(exc, scope, receive), scope, receive, send_with_headers)
            else:
                unhandled_error(scope, exc)
        finally:
            del self._exchanges[task]
            elapsed_ns = time.perf_counter_ns() - started
            status = 500 if exchange.status is None else exchange.status
            if self.metrics is not None or otel is not None:
                route = getattr(scope.get("route"), "path", None)  # the template the router matched, if any
                if otel is not None:
                    otel.end_server_span(span, token, scope["method"], route, status, request_id)
                if self.metrics is not None:
                    self.metrics.observe_request(scope["method"], route, status, elapsed_ns / 1e9)
            if self.access_log:
                self._log(scope, status, elapsed_ns, ids)

    async def _answer(self, response: Response, scope: Scope, receive: Receive, send: Send) -> None:
        """One of this layer's own answers, with the CORS headers the routes' answers get."""
        if self.cors is not None and raw_header(scope, b"origin") is not None:
            send = functools.partial(self.cors.send, send=send, request_headers=Headers(scope=scope))
        await response(scope, receive, send)

    async def _handle(self, exc: Exception, scope: Scope, receive: Receive) -> Response:
        """The answer to what the app raised: its handler's (the first for the exception's class or a base
        class), else the generic 500. This layer does Starlette's ExceptionMiddleware's work, so that one
        is not built (service.app.Service): one coroutine and one send wrapper fewer on every request."""
        handler = next((self.handlers[cls] for cls in type(exc).__mro__ if cls in self.handlers), None)
        if handler is None:
            return unhandled_error(scope, exc)
        try:
            response = await handler(Request(scope, receive), exc)
        except Exception as failed:
            return unhandled_error(scope, failed)
        exc.__traceback__ = None  # an exception instance raised again would keep growing its traceback
        return response

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        now = loop.time()
        for task, exchange in list(self._exchanges.items()):
            if exchange.at <= now and not exchange.expired:
                exchange.expired = True
                task.cancel()
        if self._exchanges:
            loop.call_later(self.SWEEP_EVERY, self._sweep, loop)
        else:
            self._sweeping = None

    def _timed_out(self, exchange: _Exchange, scope: Scope) -> Response:
        if exchange.receiving:
            return problem_response(
                scope, 408, slug="request-body-timeout", headers={"Connection": "close"},
                detail=f"The request body did not arrive within {self.timeout:g} s.",
            )  # fmt: skip
        return problem_response(
            scope, 504, title="Request timed out", slug="request-timeout",
            detail=f"The request was not answered within {self.timeout:g} s.",
        )  # fmt: skip

    def _log(self, scope: Scope, status: int, elapsed_ns: int, ids: RequestIds) -> None:
        client = scope.get("client")
        address = None
        if client:
            # A keep-alive connection asks many times: its "host:port" is made once (a third of the cost).
            # Only a tuple is kept: the ASGI spec allows any pair, and a list is no dict key.
            cacheable = type(client) is tuple
            address = self._clients.get(client) if cacheable else None
            if address is None:
                address = f"{client[0]}:{client[1]}"
                if cacheable:
                    if len(self._clients) >= 4096:
                        self._clients.clear()
                    self._clients[client] = address
        line = AccessLine(
            time.time_ns() // 1_000_000 / 1000,  # to the millisecond, as round(t, 3) but a third of its cost
            "info",
            "service.access",
            "request",
            scope["method"],
            scope["path"],
            status,
            elapsed_ns // 1000 / 1000,  # milliseconds to the microsecond
            ids.request_id,
            ids.trace_id,
            address,
            self.pid,
        )
        pending = self._pending
        was_empty = not pending
        self.encoder.encode_into(line, pending, -1)
        pending += b"\n"
        if len(pending) >= self.FLUSH_AT:
            self.flush()
        elif was_empty:
            asyncio.get_running_loop().call_later(self.FLUSH_EVERY, self.flush)

    def flush(self) -> None:
        """Write the gathered lines in one go (also at exit, so a graceful stop loses none)."""
        if not self._pending:
            return
        data = memoryview(bytes(self._pending))
        self._pending.clear()
        with contextlib.suppress(OSError, ValueError):  # stdout closed or gone: nothing to do about it here
            while data:
                written = self.stream.write(data)
                if written is None:  # a non-blocking stream that is full: drop rather than block the loop
                    break
                data = data[written:]
            self.stream.flush()


# Middleware instances with lines that may still be waiting; flushed when the process exits.
_unflushed: weakref.WeakSet[EdgeMiddleware] = weakref.WeakSet()


@atexit.register
def _flush_at_exit() -> None:
    for middleware in list(_unflushed):
        middleware.flush()


_NOSNIFF = (b"x-content-type-options", b"nosniff")


def _incoming(scope: Scope) -> tuple[str | None, TraceParent | None, int | None, bool]:
    """The caller's valid X-Request-ID and traceparent, the declared Content-Length, and whether a body
    may follow: in HTTP/1 only with Content-Length or Transfer-Encoding (RFC 9112 §6.3); HTTP/2 and 3
    frame a body without either. The first of repeated headers counts; two traceparent headers are as
    invalid as a malformed one (W3C Trace Context §3.2).

    The headers go into a dict in C rather than through a loop in Python: behind Heroku's router a
    request has twenty or so, and the loop cost about 1,000 instructions a header (callgrind)."""
    headers = scope["headers"]
    found = dict(reversed(headers))
    request_id = found.get(b"x-request-id")
    valid_id = request_id.decode("ascii") if request_id is not None and _VALID_REQUEST_ID.fullmatch(request_id) else None
    traceparent = found.get(b"traceparent")
    parent = None
    if traceparent is not None and countOf(map(_NAME, headers), b"traceparent") == 1:  # counted in C
        parent = parse_traceparent(bytes(traceparent))
    length = found.get(b"content-length")
    declared = None
    if length is not None:
        with contextlib.suppress(ValueError):
            declared = int(length)
    body = length is not None or b"transfer-encoding" in found or scope.get("http_version", "1.1") not in _HTTP1
    return valid_id, parent, declared, body


_HTTP1 = ("1.1", "1.0")
_NAME = itemgetter(0)


def _limited(receive: Receive, exchange: _Exchange, limit: int) -> Receive:
    """`receive`, raising PayloadTooLarge once the body passes `limit` bytes, and telling `exchange`
    while the body is still arriving (a timeout then is the client's: 408)."""
    received = 0

    async def receive_limited() -> Message:
        nonlocal received
        exchange.receiving = True
        message = await receive()
        exchange.receiving = message.get("more_body", False)
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > limit:
                raise PayloadTooLarge(_too_large(limit))
        return message

    return receive_limited


class _Exchange(msgspec.Struct, gc=False):
    """One request as the edge follows it (a struct: made in C, once per request)."""

    at: float  # its deadline (the loop's clock)
    expired: bool = False  # set by the sweeper when it cancels the request
    receiving: bool = False  # the body is still arriving
    status: int | None = None  # the response's, once it has begun


def _too_large(limit: int) -> str:
    return f"The request body exceeds the limit of {limit} bytes."


class CorsMiddleware(CORSMiddleware):
    """Starlette's CORS, with refused preflights answered as problems like every other error."""

    def preflight_response(self, request_headers: Headers) -> Response:
        response = super().preflight_response(request_headers)
        if response.status_code < 400:
            return response
        keep = {k: v for k, v in response.headers.items() if k.lower().startswith("access-control-") or k.lower() == "vary"}
        return problem_response(
            {"path": "*"}, response.status_code, title="CORS preflight refused", detail=bytes(response.body).decode(), headers=keep
        )
