"""W3C trace context on every request, and optional OpenTelemetry export of its spans.

Every request runs in a trace: the caller's when it sends a valid `traceparent`, a new one otherwise
(an invalid header is never an error). The request's ids sit in a context variable, so every log line
written while it runs names them and GitHub calls made for it send `traceparent` on.

OpenTelemetry is used only when OTEL_EXPORTER_OTLP_ENDPOINT (or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT)
is set; without it nothing here imports it, and the request path runs none of its code.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import sys
from collections.abc import Iterator, Mapping
from contextvars import ContextVar, Token
from typing import TYPE_CHECKING, Any, NamedTuple

import msgspec

if TYPE_CHECKING:
    import httpx
    from opentelemetry.context import Context
    from opentelemetry.trace import Span

OTEL_EXTRA = "otel"


class TraceParent(NamedTuple):
    """A valid incoming `traceparent`: the caller's trace and span."""

    trace_id: str
    parent_id: str
    sampled: bool


class RequestIds(msgspec.Struct, frozen=True, gc=False):
    """What log lines and outgoing calls need to know about the request being served. (A struct, not a
    named tuple: one is made for every request, and a struct is made in C, four times faster.)"""

    request_id: str
    trace_id: str
    span_id: str  # this service's span: the parent of the calls it makes
    sampled: bool

    def traceparent(self) -> str:
        return f"00-{self.trace_id}-{self.span_id}-{'01' if self.sampled else '00'}"


# Set by the request middleware for the request's task (and the tasks and threads it starts).
current: ContextVar[RequestIds | None] = ContextVar("current_request", default=None)

# version "-" trace-id "-" parent-id "-" trace-flags, lower-case hex (W3C Trace Context §3.2).
_TRACEPARENT = re.compile(rb"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?", re.DOTALL)
_ZERO_TRACE = b"0" * 32
_ZERO_SPAN = b"0" * 16


def parse_traceparent(value: bytes | None) -> TraceParent | None:
    """The caller's trace, or None for a missing or invalid header (the request then starts a new trace)."""
    if value is None:
        return None
    match = _TRACEPARENT.fullmatch(value)
    if match is None:
        return None
    version, trace_id, parent_id, flags, rest = match.groups()
    # Version ff is forbidden; version 00 has nothing after the flags; a later version may add fields.
    if version == b"ff" or (version == b"00" and rest is not None) or trace_id == _ZERO_TRACE or parent_id == _ZERO_SPAN:
        return None
    return TraceParent(trace_id.decode(), parent_id.decode(), bool(int(flags, 16) & 1))


# Ids need to be unique and random, not secret: the Mersenne Twister (seeded per process from the
# system, and again in each forked worker) costs no system call per request, unlike os.urandom.
def new_span_id() -> str:
    return f"{random.getrandbits(64) or 1:016x}"


def new_trace() -> tuple[str, str]:
    """A new trace id and its first span id, from one draw (what every request without a caller's trace
    needs). All zeros is invalid for either (W3C Trace Context §3.2.2.3): drawn again, a 2⁻⁶⁴ chance."""
    ids = random.getrandbits(192).to_bytes(24).hex()  # twice as fast as formatting the int as hex
    trace_id, span_id = ids[:32], ids[32:]
    if trace_id == _ZERO_TRACE_TEXT or span_id == _ZERO_SPAN_TEXT:
        return new_trace()
    return trace_id, span_id


_ZERO_TRACE_TEXT, _ZERO_SPAN_TEXT = "0" * 32, "0" * 16


async def send_traceparent(request: httpx.Request) -> None:
    """An httpx request hook: a call made while serving a request continues that request's trace."""
    ids = current.get()
    if ids is not None and "traceparent" not in request.headers:
        request.headers["traceparent"] = ids.traceparent()


# -- OpenTelemetry ---------------------------------------------------------------------------


class OpenTelemetryUnavailable(RuntimeError):
    """OTLP export is configured but the `otel` extra is not installed; the message is one line."""


def otel_wanted(environ: Mapping[str, str]) -> bool:
    """Whether the standard variables ask for OTLP trace export."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    return any(environ.get(name, "").strip() for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))


def otel_or_exit(environ: Mapping[str, str] | None = None, *, check_only: bool = False) -> OpenTelemetry | None:
    """The exporter the OTEL_* variables ask for (None if they ask for none), or, if the packages are
    missing, one readable line on stderr and exit status 2. `check_only`: check, build nothing."""
    environ = os.environ if environ is None else environ
    if not otel_wanted(environ):
        return None
    try:
        if check_only:
            _import_otel()
            return None
        return OpenTelemetry(environ)
    except OpenTelemetryUnavailable as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def _import_otel() -> Any:
    try:
        from opentelemetry import context, trace
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError as exc:
        raise OpenTelemetryUnavailable(
            f"OTEL_EXPORTER_OTLP_ENDPOINT is set but OpenTelemetry is not installed ({exc.name}): "
            f"install the '{OTEL_EXTRA}' extra (pip install 'website-api[{OTEL_EXTRA}]', or add "
            f"'-r requirements-otel.txt' to requirements.txt on Heroku), or unset the variable"
        ) from None
    return context, trace, OTLPSpanExporter, HTTPXClientInstrumentor, Resource, TracerProvider, BatchSpanProcessor


class OpenTelemetry:
    """Spans exported over OTLP/HTTP: a server span per request named by its route template, a client
    span per GitHub call (httpx instrumentation), a span per store call. The exporter reads the
    standard OTEL_* variables (endpoint, headers, timeout, sampler, resource attributes) itself."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        context, trace, OTLPSpanExporter, HTTPXClientInstrumentor, Resource, TracerProvider, BatchSpanProcessor = _import_otel()
        named = environ.get("OTEL_SERVICE_NAME") or "service.name=" in environ.get("OTEL_RESOURCE_ATTRIBUTES", "")
        self.provider = TracerProvider(resource=Resource.create({} if named else {"service.name": "website-api"}))
        self.provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        self.tracer = self.provider.get_tracer("service")
        self._trace = trace
        self._context = context
        self._instrumentor = HTTPXClientInstrumentor

    def instrument(self, http: httpx.AsyncClient) -> None:
        """Client spans for every call `http` makes; they also send `traceparent` with their own span id."""
        self._instrumentor.instrument_client(http, tracer_provider=self.provider)

    def start_server_span(
        self, method: str, path: str, parent: TraceParent | None, request_id: str | None
    ) -> tuple[Span, Token[Context], RequestIds]:
        """The request's server span, made current; without `request_id` the span id serves as one."""
        trace = self._trace
        if parent is not None:
            remote = trace.SpanContext(
                int(parent.trace_id, 16), int(parent.parent_id, 16), is_remote=True,
                trace_flags=trace.TraceFlags(trace.TraceFlags.SAMPLED if parent.sampled else trace.TraceFlags.DEFAULT),
            )  # fmt: skip
            parent_context = trace.set_span_in_context(trace.NonRecordingSpan(remote))
        else:
            parent_context = None
        attributes = {"http.request.method": method, "url.path": path}
        span = self.tracer.start_span(method, context=parent_context, kind=trace.SpanKind.SERVER, attributes=attributes)
        token = self._context.attach(trace.set_span_in_context(span))
        ids = span.get_span_context()
        span_id = f"{ids.span_id:016x}"
        return span, token, RequestIds(request_id or span_id, f"{ids.trace_id:032x}", span_id, ids.trace_flags.sampled)

    def end_server_span(
        self, span: Span, token: Token[Context], method: str, route: str | None, status: int, request_id: str
    ) -> None:
        if route is not None:
            span.update_name(f"{method} {route}")
            span.set_attribute("http.route", route)
        span.set_attribute("http.response.status_code", status)
        span.set_attribute("website_api.request_id", request_id)
        if status >= 500:
            span.set_status(self._trace.Status(self._trace.StatusCode.ERROR))
        self._context.detach(token)
        span.end()

    @contextlib.contextmanager
    def span(self, name: str, **attributes: Any) -> Iterator[None]:
        with self.tracer.start_as_current_span(name, kind=self._trace.SpanKind.CLIENT, attributes=attributes):
            yield

    def shutdown(self) -> None:
        """Export what is still buffered (the lifespan's end: a graceful stop loses no span)."""
        self.provider.shutdown()
