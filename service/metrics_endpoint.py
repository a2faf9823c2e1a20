"""`GET /metrics` for Prometheus, behind `Authorization: Bearer <METRICS_TOKEN>`; off (404) without the token."""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from service.auth import BearerToken
from service.errors import NotFound, Unauthorized
from service.metrics import TEXT_FORMAT, Series
from service.responses import BytesResponse


def metrics_route(token: BearerToken | None, series: Series | None) -> Route:
    """The route; with no token or no series it answers 404 (metrics are off)."""

    async def metrics(request: Request) -> Response:
        if token is None or series is None:
            raise NotFound("Metrics are off: METRICS_TOKEN is not configured on the server.")
        if not token.matches(request.headers.get("authorization")):
            raise Unauthorized("A valid metrics token is required: Authorization: Bearer <METRICS_TOKEN>.")
        series.flush()  # this worker's latest counts; the others' are at most FLUSH_EVERY old
        body = await run_in_threadpool(series.exposition)
        return BytesResponse.of(body, [(b"cache-control", b"no-store")], media_type=TEXT_FORMAT)

    return Route("/metrics", metrics, methods=["GET"])
