"""`Announcements`: what the endpoints use — the store behind the thread pool and a concurrency limit,
and the admin-token check. Built once in the lifespan; routes get it, not its parts."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import anyio
from starlette.concurrency import run_in_threadpool

from service import metrics
from service.announcements.models import Announcement, AnnouncementPage, AnnouncementPatch, ListQuery, NewAnnouncement
from service.announcements.models import decode_cursor, encode_cursor
from service.announcements.store import AnnouncementStore
from service.errors import Forbidden, NotFound, Unauthorized
from service.http import EntityTags
from service.readiness import Check

T = TypeVar("T")


def _now() -> datetime:
    return datetime.now(UTC)


def _digest(value: str) -> bytes:
    return hashlib.sha256(value.encode("utf-8", "surrogateescape")).digest()


class Announcements:
    def __init__(
        self,
        store: AnnouncementStore,
        *,
        admin_token: str | None,
        concurrency: int,
        clock: Callable[[], datetime] = _now,
    ) -> None:
        self.store = store
        self.clock = clock
        # Compare digests so neither the content nor the length of the token leaks through timing.
        self._admin_digest = _digest(admin_token) if admin_token else None
        # At most the pool's size of store calls at once; callers beyond wait here, not in a worker thread.
        self._limiter = anyio.CapacityLimiter(concurrency)

    async def call(self, method: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Every store call: blocking, so off the event loop, and at most `concurrency` at once."""
        async with metrics.store_call(method.__name__, self._limiter), self._limiter:
            return await run_in_threadpool(method, *args, **kwargs)

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        await self.call(self.store.open)
        if self.store.kind == "sqlite":  # zero set-up locally; PostgreSQL is migrated by the release phase
            await self.call(self.store.migrate)

    async def stop(self) -> None:
        await run_in_threadpool(self.store.close)

    async def readiness(self) -> Check:
        ok, detail = await self.call(self.store.readiness)
        return Check("ok" if ok else "failing", detail)

    # -- who is asking -----------------------------------------------------------------------

    def is_admin(self, authorization: str | None) -> bool:
        """For reads: True for the admin token, False for anonymous. Credentials of another scheme
        (Basic from a password-protected preview, a proxy's) are not an admin attempt; a wrong Bearer
        token is refused outright (401), so a typo is not silently served the public view."""
        if authorization is None or authorization.partition(" ")[0].lower() != "bearer":
            return False
        self._require_admin(authorization, disabled="Admin access is disabled")
        return True

    def require_writer(self, authorization: str | None) -> None:
        self._require_admin(authorization, disabled="Writes are disabled")

    def require_admin_reader(self, authorization: str | None) -> None:
        self._require_admin(authorization, disabled="Admin reads are disabled")

    def _require_admin(self, authorization: str | None, *, disabled: str) -> None:
        if self._admin_digest is None:
            raise Forbidden(f"{disabled}: ADMIN_TOKEN is not configured on the server.")
        scheme, _, given = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(_digest(given.strip()), self._admin_digest):
            raise Unauthorized("A valid admin token is required: Authorization: Bearer <ADMIN_TOKEN>.")

    # -- reads and writes --------------------------------------------------------------------

    async def page(self, query: ListQuery, *, include_all: bool) -> AnnouncementPage:
        after = decode_cursor(query.cursor) if query.cursor is not None else None
        rows = await self.call(
            self.store.list, now=self.clock(), limit=query.limit + 1, tag=query.tag, include_all=include_all, after=after
        )
        items = rows[: query.limit]
        return AnnouncementPage(items, encode_cursor(items[-1]) if len(rows) > query.limit else None)

    async def get(self, id: int, *, admin: bool) -> Announcement:
        found = await self.call(self.store.get, id)
        if found is None or not (admin or found.is_public(self.clock())):
            raise NotFound(f"No announcement {id}.")
        return found

    async def create(self, data: NewAnnouncement) -> Announcement:
        return await self.call(self.store.create, data, now=self.clock())

    async def update(self, id: int, patch: AnnouncementPatch, *, if_match: EntityTags | None) -> Announcement:
        return await self.call(self.store.update, id, patch, now=self.clock(), if_match=if_match)

    async def delete(self, id: int, *, if_match: EntityTags | None) -> None:
        await self.call(self.store.delete, id, if_match=if_match)
