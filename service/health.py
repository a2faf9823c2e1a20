"""Liveness (`/health`) and readiness (`/health/ready`) endpoints."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Literal

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from service import API_NAME, API_VERSION


class HealthResponse(msgspec.Struct):
    api: str
    version: int
    status: Literal["ok"] = "ok"


class Check(msgspec.Struct, omit_defaults=True):
    status: Literal["ok", "failing"]
    detail: str | None = None


class Readiness(msgspec.Struct):
    status: Literal["ready", "unavailable"]
    checks: dict[str, Check]


# A dependency's readiness, answered from what it already knows: no upstream call per probe.
ReadinessProbe = Callable[[], Awaitable[Check]]

_encoder = msgspec.json.Encoder()
_HEALTH_BODY = _encoder.encode(HealthResponse(api=API_NAME, version=API_VERSION))
_NO_STORE = {"Cache-Control": "no-store"}


class HealthEndpoint:
    """Liveness as fixed bytes, answered as a bare ASGI app: probes and load balancers call it often."""

    _headers = (
        (b"content-type", b"application/json"),
        (b"content-length", str(len(_HEALTH_BODY)).encode()),
        (b"cache-control", b"no-store"),
    )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": list(self._headers)})
        await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else _HEALTH_BODY})


async def ready(request: Request) -> Response:
    probes: dict[str, ReadinessProbe] = request.app.state.readiness
    checks = {name: await probe() for name, probe in probes.items()}
    ok = all(check.status == "ok" for check in checks.values())
    body = Readiness(status="ready" if ok else "unavailable", checks=checks)
    return Response(_encoder.encode(body), status_code=200 if ok else 503, headers=_NO_STORE, media_type="application/json")


routes = [
    Route("/health", HealthEndpoint(), methods=["GET"]),
    Route("/health/ready", ready, methods=["GET"]),
]
