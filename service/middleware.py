"""The pure-ASGI middleware of every request, one concern each, in the order `service.app` stacks them:

- `RequestContextMiddleware`: the request's id and trace (W3C trace context), echoed as X-Request-ID, and nosniff;
- `AccessMiddleware`: the access line, the request metrics and the server span, from what the client received;
- `CorsMiddleware`: Starlette's CORS, with refused preflights answered as problems;
- `DeadlineMiddleware`: a request not answered in time gets 408 (its body was still arriving) or 504;
- `LastResortMiddleware`: what no exception handler took gets a problem+json 500, logged once, the
  connection kept; Starlette's plain-text 413 (a declared body over `max_body_size`) becomes problem+json.
"""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

from starlette.datastructures import Headers
from starlette.middleware.body_limit import MAX_BODY_SIZE_SCOPE_KEY
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import ClientDisconnect
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service import tracing
from service.errors import problem_response, too_large_detail, unhandled_error
from service.logs import AccessLog
from service.telemetry import Telemetry
from service.tracing import RequestIds, new_span_id, new_trace, parse_traceparent

_VALID_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,200}")
_NOSNIFF = (b"x-content-type-options", b"nosniff")
CONTEXT_KEY = "website_api.context"  # the scope key under which RequestContextMiddleware leaves the request's context
CLIENT_CLOSED_REQUEST = 499  # nginx's status for a client that left before it was answered; never sent


class RequestContext:
    """What the outer middleware know of one request: its ids, its server span (OpenTelemetry only), and
    what was sent back: the status once the response head went out, and whether the body was finished."""

    __slots__ = ("ids", "span", "token", "status", "complete")

    def __init__(self, ids: RequestIds, span: Any = None, token: Any = None) -> None:
        self.ids = ids
        self.span = span
        self.token = token
        self.status: int | None = None
        self.complete = False


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
        headers = Headers(scope=scope)
        given = headers.get("x-request-id")
        incoming_id = given if given is not None and _VALID_REQUEST_ID.fullmatch(given) else None
        traceparents = headers.getlist("traceparent")
        parent = parse_traceparent(traceparents[0].encode("latin-1")) if len(traceparents) == 1 else None
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

        async def send_with_ids(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()), id_header, _NOSNIFF]}
            await send(message)

        await self.app(scope, receive, send_with_ids)


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

        async def send_observed(message: Message) -> None:
            await send(message)
            if message["type"] == "http.response.start":
                context.status = message["status"]  # once it went out: a cancelled send sent nothing
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                context.complete = True

        try:
            await self.app(scope, receive, send_observed)
        finally:
            seconds = (time.perf_counter_ns() - started) / 1e9
            status = CLIENT_CLOSED_REQUEST if context.status is None else context.status
            cut_off = context.status is not None and not context.complete
            route = getattr(scope.get("route"), "path", None)  # the template the router matched, if any
            self.telemetry.request_done(context, scope["method"], route, status, seconds)
            if self.access_log is not None:
                self.access_log.write(scope, status, seconds, context.ids, cut_off=cut_off)


class DeadlineMiddleware:
    """A request not answered within `seconds` is cancelled (asyncio.timeout) and answered 408 if its body
    was still arriving (a slow or stalled upload), else 504. Once the response head is being sent the deadline
    no longer applies: an answer under way only finishes, at the client's pace, or the connection closes."""

    def __init__(self, app: ASGIApp, *, seconds: float) -> None:
        self.app = app
        self.seconds = seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        receiving = responding = False

        async def receive_tracked() -> Message:
            nonlocal receiving
            receiving = True
            message = await receive()
            receiving = message["type"] == "http.request" and message.get("more_body", False)
            return message

        try:
            async with asyncio.timeout(self.seconds) as deadline:

                async def send_tracked(message: Message) -> None:
                    nonlocal responding
                    if not responding and message["type"] == "http.response.start":
                        responding = True
                        deadline.reschedule(None)
                    await send(message)

                await self.app(scope, receive_tracked, send_tracked)
        except TimeoutError:
            if responding:  # cannot happen (rescheduled), but never answer twice
                raise
            if receiving:
                response = problem_response(
                    scope, 408, slug="request-body-timeout", headers={"Connection": "close"},
                    detail=f"The request body did not arrive within {self.seconds:g} s.",
                )  # fmt: skip
            else:
                response = problem_response(
                    scope, 504, title="Request timed out", slug="request-timeout",
                    detail=f"The request was not answered within {self.seconds:g} s.",
                )  # fmt: skip
            await response(scope, receive, send)


class LastResortMiddleware:
    """Inside the others, just outside Starlette's exception handlers: an exception no handler took is logged
    once (service.errors.unhandled_error) and answered 500 problem+json, and the keep-alive connection stays
    (Starlette's ServerErrorMiddleware would re-raise, so uvicorn logs it again and drops the connection). A
    client gone before its body arrived (ClientDisconnect) is left alone. Starlette's `max_body_size` answers a
    declared body over the limit with a text/plain 413 of its own; that answer is sent as a problem here."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = replacing = False

        async def send_checked(message: Message) -> None:
            nonlocal started, replacing
            if message["type"] == "http.response.start":
                started = True
                if message["status"] == 413 and _is_plain_text(message):
                    replacing = True
                    return
            elif replacing:
                if not message.get("more_body", False):
                    limit = scope.get(MAX_BODY_SIZE_SCOPE_KEY)
                    await problem_response(scope, 413, slug="payload-too-large", detail=too_large_detail(limit))(
                        scope, receive, send
                    )
                return
            await send(message)

        try:
            await self.app(scope, receive, send_checked)
        except ClientDisconnect:
            return  # nobody is left to answer
        except Exception as exc:
            if started:
                raise  # the server closes the connection on the unfinished response
            await unhandled_error(scope, exc)(scope, receive, send)


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
