from __future__ import annotations

import httpx
import pytest

from service.readiness import Check

pytestmark = pytest.mark.anyio


async def test_health_reports_api_name_and_major_version(client: httpx.AsyncClient) -> None:
    response = await client.get("/health")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"api": "website-api", "version": 1, "status": "ok"}
    assert response.headers["cache-control"] == "no-store"


async def test_head_health_has_no_body(client: httpx.AsyncClient) -> None:
    response = await client.head("/health")
    assert response.status_code == 200 and response.content == b""


async def test_ready_lists_each_dependency_and_fails_when_one_fails(client: httpx.AsyncClient) -> None:
    app = client._transport.app

    async def fine() -> Check:
        return Check("ok", "all good")

    async def broken() -> Check:
        return Check("failing", "connection refused")

    app.readiness = {"fine": fine}
    ok = await client.get("/health/ready")
    assert ok.status_code == 200
    assert ok.json() == {"status": "ready", "checks": {"fine": {"status": "ok", "detail": "all good"}}}

    app.readiness = {"fine": fine, "database": broken}
    failing = await client.get("/health/ready")
    assert failing.status_code == 503
    assert failing.json()["status"] == "unavailable"
    assert failing.json()["checks"]["database"] == {"status": "failing", "detail": "connection refused"}
