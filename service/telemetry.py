"""`Telemetry`: the app's metric series (when METRICS_TOKEN is set) and its OpenTelemetry exporter (when the OTEL_*
variables ask for one), built once in `create_app` and handed to everything that records. Nothing here is
global: two apps in one process record apart, and an app without either records nothing and pays nothing."""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import AsyncIterator, Hashable
from typing import TYPE_CHECKING

import anyio
import httpx
from starlette.concurrency import run_in_threadpool

from service import tracing
from service.metrics import GITHUB_OUTCOMES, GITHUB_RATE_LIMIT_RESOURCES, MAX_WEBHOOK_EVENTS, Series
from service.tracing import OpenTelemetry

if TYPE_CHECKING:
    from service.middleware import RequestContext

_LABEL_WORD = re.compile(r"[a-z0-9_.]{1,64}")


class Telemetry:
    """What the service records about itself. `series` is None with metrics off, `otel` None without export."""

    def __init__(self, *, metrics: bool = False, otel: OpenTelemetry | None = None) -> None:
        self.series = Series() if metrics else None
        self.otel = otel
        self.records_requests = metrics or otel is not None  # else `request_done` has nothing to do

    # -- requests --------------------------------------------------------------------------------

    def request_done(self, context: RequestContext, method: str, route: str | None, status: int, seconds: float) -> None:
        """A request answered (or cut off): its metrics, and the end of its server span."""
        if self.otel is not None:
            self.otel.end_server_span(context.span, context.token, method, route, status, context.ids.request_id)
        if self.series is not None:
            self.series.observe_request(method, route, status, seconds)

    # -- GitHub ----------------------------------------------------------------------------------

    def instrument(self, http: httpx.AsyncClient) -> None:
        """GitHub calls carry the request's trace (as OpenTelemetry client spans when exporting) and report
        the rate limit left."""
        if self.otel is not None:
            self.otel.instrument(http)
        else:
            http.event_hooks["request"].append(tracing.send_traceparent)
        if self.series is not None:
            http.event_hooks["response"].append(self.github_response)

    def cache_lookup(self, key: Hashable, state: str) -> None:
        """A GitHub cache lookup; the resource is the key's kind ("repository" of "owner/repository/name"),
        never a name from a URL."""
        if (series := self.series) is not None:
            parts = str(key).split("/", 2)
            series.count_lookup(parts[1] if len(parts) > 1 else parts[0], state)

    def github_outcome(self, detail: str) -> None:
        """The outcome of one GitHub call, as GitHubClient records it for readiness."""
        if (series := self.series) is not None and detail != "malformed answer":  # already counted as its 200
            series.child(series.github, GITHUB_OUTCOMES.get(detail, "error")).inc()

    async def github_response(self, response: httpx.Response) -> None:
        """An httpx response hook: the rate limit GitHub says is left, by its resource."""
        if (series := self.series) is not None:
            remaining = response.headers.get("x-ratelimit-remaining", "")
            if remaining.isdigit():
                resource = response.headers.get("x-ratelimit-resource", "core")
                resource = resource if resource in GITHUB_RATE_LIMIT_RESOURCES else "other"
                series.child(series.github_remaining, resource).set(int(remaining))

    def webhook_delivery(self, event: str, outcome: str, *, verified: bool) -> None:
        """One webhook delivery. Only a verified delivery names its event (an unsigned request cannot spend
        the label budget: it counts as "unverified"); names outside [a-z0-9_.]{1,64}, and names beyond the
        first 64 seen, count as "other", so no caller can grow the number of series."""
        if (series := self.series) is None:
            return
        if not verified:
            event = "unverified"
        elif not _LABEL_WORD.fullmatch(event):
            event = "other"
        elif event not in series.webhook_events:
            if len(series.webhook_events) >= MAX_WEBHOOK_EVENTS:
                event = "other"
            else:
                series.webhook_events.add(event)
        outcome = outcome if _LABEL_WORD.fullmatch(outcome) else "other"
        series.child(series.webhooks, event, outcome).inc()

    # -- deploy hooks ----------------------------------------------------------------------------

    def deploy_hook_outcome(self, outcome: str) -> None:
        """One deploy-hook POST's outcome: delivered, retried or given_up."""
        if (series := self.series) is not None:
            series.child(series.deploy_hooks, outcome).inc()

    # -- the database ----------------------------------------------------------------------------

    def store_call(self, operation: str, limiter: anyio.CapacityLimiter) -> contextlib.AbstractAsyncContextManager[None]:
        """Around every store call (service.database): its duration, waiting for a pool slot included, the
        number waiting, and a span when exporting traces."""
        if self.series is None and self.otel is None:
            return contextlib.nullcontext()
        return self._store_call(operation, limiter)

    @contextlib.asynccontextmanager
    async def _store_call(self, operation: str, limiter: anyio.CapacityLimiter) -> AsyncIterator[None]:
        series, started = self.series, time.perf_counter()
        if series is not None and limiter.available_tokens < 1:  # this call will wait
            series.set_waiting(limiter.statistics().tasks_waiting + 1)
        with self.otel.span(f"store {operation}", **{"db.operation.name": operation}) if self.otel else contextlib.nullcontext():
            try:
                yield
            finally:
                if series is not None:
                    series.child(series.store, operation).observe(time.perf_counter() - started)
                    series.set_waiting(limiter.statistics().tasks_waiting)  # its slot went to the next in line

    # -- lifecycle -------------------------------------------------------------------------------

    async def close(self) -> None:
        """Write what is buffered: the last counts, and every span (the shutdown's included)."""
        if self.series is not None:
            self.series.flush()
        if self.otel is not None:
            await run_in_threadpool(self.otel.shutdown)
