"""Bench-only variants of the service, to show the failure modes its design prevents. Never deployed."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from starlette.applications import Starlette

from service.announcements.access import Announcements
from service.app import create_app
from service.settings import load_settings

T = TypeVar("T")


class AnnouncementsOnTheEventLoop(Announcements):
    """What the service must never do: the blocking store call made directly inside async def."""

    async def call(self, method: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return method(*args, **kwargs)


def blocking_app() -> Starlette:
    return create_app(load_settings(), announcements_class=AnnouncementsOnTheEventLoop)


class AnnouncementsWithoutReadCache(Announcements):
    """Public reads go to the store every time, through the thread pool: the path the read cache spares."""

    read_cache = False


def uncached_app() -> Starlette:
    return create_app(load_settings(), announcements_class=AnnouncementsWithoutReadCache)


def edgeless_app() -> Starlette:
    """The service's routes and handlers without its own middleware (request context, access line, deadline,
    last resort and body limit): what those layers cost on a GET (scenario 11)."""
    app = create_app(load_settings())
    app.user_middleware = []
    return app


def unbudgeted_app() -> Starlette:
    """Every repository name not on the list is looked up upstream: the unknown-name budget (5 lookups,
    then one per 2 minutes, which guards the rate limit) made unlimited, so bench scenario 3 can give
    every request a key of its own, which no copy and no shared in-flight call can answer."""
    from service.github import client

    client.UNLISTED_LOOKUP_BURST = 1_000_000_000
    client.UNLISTED_LOOKUP_EVERY = 1e-6
    return create_app(load_settings())
