from __future__ import annotations

import httpx
import pytest
from starlette.routing import Route

from service import health
from service.app import create_app
from service.readiness import Check
from service.settings import load_settings
from tests.support import assert_problem

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

    app.state.readiness = {"fine": fine}
    ok = await client.get("/health/ready")
    assert ok.status_code == 200
    assert ok.json() == {"status": "ready", "checks": {"fine": {"status": "ok", "detail": "all good"}}}

    app.state.readiness = {"fine": fine, "database": broken}
    failing = await client.get("/health/ready")
    assert failing.status_code == 503
    assert failing.json()["status"] == "unavailable"
    assert failing.json()["checks"]["database"] == {"status": "failing", "detail": "connection refused"}


async def test_a_trailing_slash_is_a_404_problem_never_a_redirect_built_from_host(client: httpx.AsyncClient) -> None:
    response = await client.get("/health/", headers={"Host": "evil.example"})
    assert_problem(response, 404)
    assert "location" not in response.headers


def test_the_paths_spared_the_request_deadline_answer_prepared_bytes() -> None:
    """FallbackMiddleware spares ANSWERED_AT_ONCE the deadline's timer because their endpoint sends prepared
    bytes before awaiting anything; a path pointed at another endpoint would keep the exemption silently."""
    app = create_app(load_settings({"DATABASE_URL": "sqlite:///:memory:"}))
    routes = {route.path: route for route in app.routes if isinstance(route, Route)}
    assert health.ANSWERED_AT_ONCE
    for path in health.ANSWERED_AT_ONCE:
        assert isinstance(routes[path].endpoint, health.Health), path
