"""Bench-only variants of the service, to show the failure modes its design prevents. Never deployed."""

from __future__ import annotations

from service.announcements import routes as announcement_routes
from service.app import create_app
from service.settings import load_settings


async def _store_on_the_event_loop(request, method, *args, **kwargs):  # type: ignore[no-untyped-def]
    """What the service must never do: the blocking store call made directly inside async def."""
    return method(*args, **kwargs)


def blocking_app():  # type: ignore[no-untyped-def]
    announcement_routes.call_store = _store_on_the_event_loop  # type: ignore[assignment]
    return create_app(load_settings())
