"""The pure-ASGI middleware of every request, one concern each, in the order `service.app` stacks them:

- `RequestContextMiddleware`: the request's id and trace (W3C trace context), echoed as X-Request-ID, and nosniff;
- `AccessMiddleware`: the access line, the request metrics and the server span, from what the client received;
- `CorsMiddleware`: Starlette's CORS, with refused preflights answered as problems;
- `FallbackMiddleware`: what the service answers when the app could not: 408 or 504 past the deadline, a
  problem+json 500 for what no exception handler took (logged once, the connection kept), and 413 for a
  body over the limit (Starlette's RequestBodyLimitMiddleware, its answer as a problem).
"""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

import msgspec
from starlette.datastructures import Headers
from starlette.middleware.body_limit import MAX_BODY_SIZE_SCOPE_KEY, RequestBodyLimitMiddleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import ClientDisconnect
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service import tracing
from service.errors import problem_response, too_large_detail, unhandled_error
from service.logs import AccessLog
from service.telemetry import Telemetry
from service.tracing import RequestIds, TraceParent, new_span_id, new_trace, parse_traceparent

_VALID_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,200}")
_NOSNIFF = (b"x-content-type-options", b"nosniff")
CONTEXT_KEY = "website_api.context"  # the scope key under which RequestContextMiddleware leaves the request's context
CLIENT_CLOSED_REQUEST = 499  # nginx's status for a client that left before it was answered; never sent


class RequestContext(msgspec.Struct):
    """One request as the middleware follow it, kept in the scope by RequestContextMiddleware, the only layer
    that wraps `send`: its ids and server span (OpenTelemetry only); whether a response head was begun
    (`started`, set before it is sent) and went out (`status`, set after); whether the body finished; and the
    request's deadline, which stops applying once an answer has begun. The other layers read it rather than
    each wrapping every message again (a wrapper per layer and message was a third of the middleware's cost).
    A struct: one is made for every request, and msgspec makes it in C, in half the time of a class."""

    ids: RequestIds
    span: Any = None
    token: Any = None
    started: bool = False
    status: int | None = None
    complete: bool = False
    deadline: asyncio.Timeout | None = None


class RequestContextMiddleware:
    """Gives every request an id and a trace: the caller's valid `X-Request-ID` and `traceparent`, else new
    ones (an invalid header is never an error; two traceparent headers are as invalid as a malformed one,
    W3C Trace Context §3.2). The ids sit in `tracing.current` for log lines and outgoing calls; the response
    carries `X-Request-ID` and `X-Content-Type-Options: nosniff`."""

    def __init__(self, app: ASGIApp, *, telemetry: Telemetry) -> None:
        self.app = app
        self.telemetry = telemetry

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming_id, parent = _incoming(scope["headers"])
        otel = self.telemetry.otel
        if otel is not None:
            span, token, ids = otel.start_server_span(scope["method"], scope["path"], parent, incoming_id)
            context = RequestContext(ids, span, token)
        else:
            # Without a valid X-Request-ID from the caller, the request's id is its span's.
            if parent is None:
                trace_id, span_id = new_trace()
                ids = RequestIds(incoming_id or span_id, trace_id, span_id, False)
            else:
                span_id = new_span_id()
                ids = RequestIds(incoming_id or span_id, parent.trace_id, span_id, parent.sampled)
            context = RequestContext(ids)
        scope[CONTEXT_KEY] = context
        tracing.current.set(ids)  # not reset: the server runs each request in a task (a context) of its own
        id_header = (b"x-request-id", ids.request_id.encode())

        async def send_followed(message: Message) -> None:
            if message["type"] == "http.response.start":
                context.started = True
                if context.deadline is not None:
                    context.deadline.reschedule(None)  # an answer under way only finishes, or the connection closes
                await send({**message, "headers": [*message.get("headers", ()), id_header, _NOSNIFF]})
                context.status = message["status"]  # once it went out: a cancelled send sent nothing
            else:
                await send(message)
                if not message.get("more_body", False):
                    context.complete = True

        await self.app(scope, receive, send_followed)


def _incoming(headers: list[tuple[bytes, bytes]]) -> tuple[str | None, TraceParent | None]:
    """The caller's valid X-Request-ID and its single valid traceparent, if any. The first of repeated
    X-Request-ID headers counts; two traceparent headers are as invalid as a malformed one."""
    request_id: str | None = None
    traceparent: bytes | None = None
    traceparents = 0
    for name, value in headers:
        if name == b"x-request-id":
            if request_id is None:
                text = value.decode("latin-1")
                request_id = text if _VALID_REQUEST_ID.fullmatch(text) else ""
        elif name == b"traceparent":
            traceparents += 1
            traceparent = value
    parent = parse_traceparent(bytes(traceparent)) if traceparents == 1 and traceparent is not None else None
    return request_id or None, parent


class AccessMiddleware:
    """Writes one access line per request and records its metrics and server span, all from what the client
    received: the status of the response head that went out, 499 if none did (the client left first), and
    `cut_off` when the body did not finish (the connection was closed under it)."""

    def __init__(self, app: ASGIApp, *, telemetry: Telemetry, access_log: AccessLog | None) -> None:
        self.app = app
        self.telemetry = telemetry
        self.access_log = access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        context: RequestContext = scope[CONTEXT_KEY]
        started = time.perf_counter_ns()
        try:
            await self.app(scope, receive, send)
        finally:
            nanoseconds = time.perf_counter_ns() - started
            status = CLIENT_CLOSED_REQUEST if context.status is None else context.status
            if self.telemetry.records_requests:
                route = getattr(scope.get("route"), "path", None)  # the template the router matched, if any
                self.telemetry.request_done(context, scope["method"], route, status, nanoseconds / 1e9)
            if self.access_log is not None:
                cut_off = context.status is not None and not context.complete
                self.access_log.write(scope, status, nanoseconds, context.ids, cut_off=cut_off)


class FallbackMiddleware:
    """The answers of last resort, innermost of the service's layers, just outside Starlette's exception handlers:

    - the deadline: a request not answered within `seconds` is cancelled (asyncio.timeout) and answered 408 if
      its body was still arriving (a slow or stalled upload), else 504. Once the response head is being sent
      the deadline no longer applies (RequestContext reschedules it): an answer under way only finishes, at the
      client's pace, or the connection closes; it never becomes uvicorn's plain-text 500. Paths in
      `answered_at_once` (liveness: prepared bytes, sent before anything is awaited) are spared its timer,
      which could never fire before their answer begins (asyncio.timeout's timer was a tenth of a /health);
    - an exception no handler took: logged once (service.errors.unhandled_error) and answered 500 problem+json,
      the keep-alive connection kept (Starlette's ServerErrorMiddleware would re-raise, so uvicorn logs it again
      and drops the connection); a client gone before its body arrived (ClientDisconnect) is left alone;
    - the body limit, with Starlette's own RequestBodyLimitMiddleware (what `max_body_size` on an app installs),
      for methods that carry a body, so a GET pays nothing for it; a route's own `max_body_size` (the webhook's)
      overrides it. Starlette answers a declared body over the limit with a text/plain 413; that answer leaves
      as a problem.

    One layer for the three: each is what the service answers when the app could not, and every layer costs a
    coroutine on every request."""

    def __init__(
        self, app: ASGIApp, *, seconds: float, max_body_size: int, answered_at_once: frozenset[str] = frozenset()
    ) -> None:
        self.app = app
        self.seconds = seconds
        self.answered_at_once = answered_at_once
        self.limited = RequestBodyLimitMiddleware(app, max_body_size=max_body_size)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        context: RequestContext = scope[CONTEXT_KEY]
        receiving = False
        app = self.app
        if scope["method"] not in _BODILESS:
            receive_from = receive

            async def receive_followed() -> Message:
                nonlocal receiving
                receiving = True
                message = await receive_from()
                receiving = message["type"] == "http.request" and message.get("more_body", False)
                return message

            app, receive, send = self.limited, receive_followed, _problem_413(scope, receive, send)
        try:
            if scope["path"] in self.answered_at_once:
                await app(scope, receive, send)
            else:
                try:
                    async with asyncio.timeout(self.seconds) as context.deadline:
                        await app(scope, receive, send)
                finally:
                    context.deadline = None  # over: the answers below are not the app's, and have no deadline
        except TimeoutError:
            if context.started:  # cannot happen (rescheduled), but never answer twice
                raise
            await self._timed_out(scope, receiving)(scope, receive, send)
        except ClientDisconnect:
            return  # nobody is left to answer
        except Exception as exc:
            if context.started:
                raise  # the server closes the connection on the unfinished response
            await unhandled_error(scope, exc)(scope, receive, send)

    def _timed_out(self, scope: Scope, receiving: bool) -> Response:
        if receiving:
            return problem_response(
                scope, 408, slug="request-body-timeout", headers={"Connection": "close"},
                detail=f"The request body did not arrive within {self.seconds:g} s.",
            )  # fmt: skip
        return problem_response(
            scope, 504, title="Request timed out", slug="request-timeout",
            detail=f"The request was not answered within {self.seconds:g} s.",
        )  # fmt: skip


_BODILESS = frozenset(("GET", "HEAD", "OPTIONS"))  # methods whose body, if any, no route reads


def _problem_413(scope: Scope, receive: Receive, send: Send) -> Send:
    """`send`, with Starlette's text/plain 413 (RequestBodyLimitMiddleware) replaced by a problem."""
    replacing = False

    async def send_checked(message: Message) -> None:
        nonlocal replacing
        if message["type"] == "http.response.start" and message["status"] == 413 and _is_plain_text(message):
            replacing = True
        elif not replacing:
            await send(message)
        elif not message.get("more_body", False):
            limit = scope.get(MAX_BODY_SIZE_SCOPE_KEY)
            await problem_response(scope, 413, slug="payload-too-large", detail=too_large_detail(limit))(scope, receive, send)

    return send_checked


def _is_plain_text(message: Message) -> bool:
    return any(name == b"content-type" and value.startswith(b"text/plain") for name, value in message.get("headers", ()))


class CorsMiddleware(CORSMiddleware):
    """Starlette's CORS, with refused preflights answered as problems like every other error."""

    def preflight_response(self, request_headers: Headers) -> Response:
        response = super().preflight_response(request_headers)
        if response.status_code < 400:
            return response
        keep = {k: v for k, v in response.headers.items() if k.lower().startswith("access-control-") or k.lower() == "vary"}
        return problem_response(
            {"path": "*"},
            response.status_code,
            title="CORS preflight refused",
            detail=bytes(response.body).decode(),
            headers=keep,
        )
