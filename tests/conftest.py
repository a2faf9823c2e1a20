"""Shared fixtures: settings for a throw-away app, and an in-process client that runs the app's lifespan."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette

from service.app import create_app
from service.settings import Settings, load_settings
from tests.github_standin import GitHubStandIn


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def make_settings(tmp_path: Path) -> Callable[..., Settings]:
    """Settings as the environment would give them, with a private SQLite file and no access log."""

    def make(**env: str) -> Settings:
        base = {"DATABASE_URL": f"sqlite:///{tmp_path}/test.db", "ACCESS_LOG": "false"}
        return load_settings({**base, **env})

    return make


@contextlib.asynccontextmanager
async def running(app: Starlette) -> AsyncIterator[httpx.AsyncClient]:
    """Start the app's lifespan and talk to it through ASGI, as a server would."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            yield client


@pytest.fixture
async def client(make_settings: Callable[..., Settings]) -> AsyncIterator[httpx.AsyncClient]:
    async with running(create_app(make_settings())) as client:
        yield client


@pytest.fixture
def standin() -> Iterator[GitHubStandIn]:
    """A real HTTP server on 127.0.0.1 playing GitHub for owner octo-dev with 30 repositories."""
    with GitHubStandIn(count=30) as server:
        yield server
