"""Liveness (`/health`) and readiness (`/health/ready`) endpoints."""

from __future__ import annotations

from typing import Literal

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from service import API_NAME, API_VERSION
from service.readiness import Check, ReadinessProbe
from service.responses import BytesResponse


class HealthResponse(msgspec.Struct):
    api: str
    version: int
    status: Literal["ok"] = "ok"


class Readiness(msgspec.Struct):
    status: Literal["ready", "unavailable"]
    checks: dict[str, Check]


_encoder = msgspec.json.Encoder()
_NO_STORE = {"Cache-Control": "no-store"}

# Liveness as fixed bytes made once: probes and load balancers call it often.
_HEALTH_BODY = _encoder.encode(HealthResponse(api=API_NAME, version=API_VERSION))
_HEALTH_HEADERS = [
    (b"cache-control", b"no-store"),
    (b"content-type", b"application/json"),
    (b"content-length", b"%d" % len(_HEALTH_BODY)),
]


class Health:
    """Liveness as a bare ASGI endpoint (Starlette's Route hands it the request as it is: no Request object and
    no per-request exception wrapper, which nothing here could raise into). One prepared response, sent as is."""

    response = BytesResponse(200, _HEALTH_BODY, _HEALTH_HEADERS)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.response(scope, receive, send)


async def ready(request: Request) -> Response:
    probes: dict[str, ReadinessProbe] = request.app.state.readiness
    checks = {name: await probe() for name, probe in probes.items()}
    ok = all(check.status == "ok" for check in checks.values())
    body = Readiness(status="ready" if ok else "unavailable", checks=checks)
    return Response(_encoder.encode(body), status_code=200 if ok else 503, headers=_NO_STORE, media_type="application/json")


# Paths whose answer is prepared bytes, sent as soon as the request arrives: the request deadline could never
# fire before the answer begins (after which it no longer applies), so they are spared its timer.
ANSWERED_AT_ONCE = frozenset({"/health"})

routes = [
    Route("/health", Health(), methods=["GET"]),
    Route("/health/ready", ready, methods=["GET"]),
]
