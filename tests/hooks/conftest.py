"""Fixtures of the deploy-hook tests: a loopback build-hook receiver, and an app in process sending to it."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import pytest

from service.app import create_app
from service.database import open_database
from service.settings import Settings, load_settings
from tests.hook_receiver import HookReceiver
from tests.support import migrated, running

ADMIN_TOKEN = "admin-token-0123456789abcdef"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
HOOK_SECRET = "deploy-hook-secret-0123456789"

OpenHooked = Callable[..., contextlib.AbstractAsyncContextManager[httpx.AsyncClient]]


@pytest.fixture
def receiver() -> Iterator[HookReceiver]:
    with HookReceiver() as server:
        yield server


@pytest.fixture
def hook_settings(database_url: str) -> Callable[..., Settings]:
    """Settings with deploy hooks sent to `receiver` (None: DEPLOY_HOOK_URLS unset) on the test's database."""

    def make(receiver: HookReceiver | None, **env: str) -> Settings:
        base = {"DATABASE_URL": database_url, "ACCESS_LOG": "false", "ADMIN_TOKEN": ADMIN_TOKEN}
        if receiver is not None:
            base |= {"DEPLOY_HOOK_URLS": receiver.url, "DEPLOY_HOOK_SECRET": HOOK_SECRET, "DEPLOY_HOOK_DEBOUNCE": "1"}
        return load_settings({**base, **env})

    return make


@pytest.fixture
def hooked(hook_settings: Callable[..., Settings], database_url: str) -> OpenHooked:
    """An app in process (its lifespan run, so its sender runs) whose deploy hooks go to the given receiver."""

    @contextlib.asynccontextmanager
    async def open_client(receiver: HookReceiver | None, **env: str) -> AsyncIterator[httpx.AsyncClient]:
        if not database_url.startswith("sqlite"):
            migrated(database_url)  # PostgreSQL is migrated by the release phase, not by the app
        async with running(create_app(hook_settings(receiver, **env))) as client:
            yield client

    return open_client


def rows(database_url: str, statement: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """What the outbox's tables hold, read straight from the database."""
    database = open_database(database_url, pool_size=1)
    database.open()
    try:
        with database.transaction(write=False) as conn:
            return [tuple(row) for row in database.execute(conn, statement, params).fetchall()]
    finally:
        database.close()
