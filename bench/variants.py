"""Bench-only variants of the service, to show the failure modes its design prevents. Never deployed."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from starlette.applications import Starlette
from starlette.requests import Request

from service.announcements import routes as announcement_routes
from service.app import create_app
from service.settings import load_settings

T = TypeVar("T")


async def _store_on_the_event_loop(request: Request, method: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """What the service must never do: the blocking store call made directly inside async def."""
    return method(*args, **kwargs)


def blocking_app() -> Starlette:
    announcement_routes.call_store = _store_on_the_event_loop
    return create_app(load_settings())
