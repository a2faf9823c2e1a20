"""Liveness (`/health`) and readiness (`/health/ready`) endpoints."""

from __future__ import annotations

from typing import Literal

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from service import API_NAME, API_VERSION
from service.http import BytesResponse
from service.readiness import Check, ReadinessProbe


class HealthResponse(msgspec.Struct):
    api: str
    version: int
    status: Literal["ok"] = "ok"


class Readiness(msgspec.Struct):
    status: Literal["ready", "unavailable"]
    checks: dict[str, Check]


_encoder = msgspec.json.Encoder()
_NO_STORE = {"Cache-Control": "no-store"}

# Liveness as fixed bytes, answered as a bare ASGI app: probes and load balancers call it often.
_health = BytesResponse.of(_encoder.encode(HealthResponse(api=API_NAME, version=API_VERSION)), [(b"cache-control", b"no-store")])


async def ready(request: Request) -> Response:
    probes: dict[str, ReadinessProbe] = request.scope["app"].readiness  # service.app.Service
    checks = {name: await probe() for name, probe in probes.items()}
    ok = all(check.status == "ok" for check in checks.values())
    body = Readiness(status="ready" if ok else "unavailable", checks=checks)
    return Response(_encoder.encode(body), status_code=200 if ok else 503, headers=_NO_STORE, media_type="application/json")


routes = [
    Route("/health", _health, methods=["GET"]),
    Route("/health/ready", ready, methods=["GET"]),
]
