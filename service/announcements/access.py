"""`Announcements`: what the endpoints use — the store behind the thread pool and a concurrency limit,
and the admin-token check. Built once in the lifespan; routes get it, not its parts."""

from __future__ import annotations

import asyncio
import functools
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
from service.announcements.breaker import Breaker
from service.announcements.store import CALL_TIMEOUT, AnnouncementStore, Caller, StoreUnavailable, run_for
from service.errors import ApiError, Forbidden, NotFound, Unauthorized
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
        self._breaker = Breaker()

    async def call(self, method: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Every store call: blocking, so off the event loop; at most `concurrency` at once; and refused at
        once while the database is known to be down (see `Breaker`)."""
        self._breaker.check()
        async with metrics.store_call(method.__name__, self._limiter), self._limiter:
            probe = self._breaker.admit()  # again: it may have opened while this call waited for a slot
            try:
                result = await self._in_thread(method, *args, **kwargs)
            except StoreUnavailable as exc:
                self._breaker.failed(probe, exc)
                raise
            except ApiError:  # the database answered: not found, If-Match failed, …
                self._breaker.succeeded(probe)
                raise
            except BaseException:
                self._breaker.abandoned(probe)
                raise
            self._breaker.succeeded(probe)
            return result

    async def _in_thread(self, method: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """`run_in_threadpool`, but a call not back within CALL_TIMEOUT is given up: run_in_threadpool waits
        for its thread whatever happens, so a frozen database would hold every request for ever. The thread
        ends on its own; a write it was making is rolled back (`Caller`), unless its commit is under way:
        that outcome is unknown, so the request waits on and its own deadline answers 504, not a 503 that
        invites a retry."""
        caller = Caller()
        with anyio.CancelScope() as scope:

            def give_up() -> None:
                if caller.give_up():
                    scope.cancel()

            timer = asyncio.get_running_loop().call_later(CALL_TIMEOUT, give_up)
            try:
                call = functools.partial(run_for, caller, method, *args, **kwargs)
                return await anyio.to_thread.run_sync(call, abandon_on_cancel=True)
            except BaseException:  # cancelled (timed out, request deadline, shutdown) or failed
                caller.give_up()
                raise
            finally:
                timer.cancel()
        raise StoreUnavailable(f"The {self.store.kind} database did not answer within {CALL_TIMEOUT:g} s.")

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        await self.call(self.store.open)
        if self.store.kind == "sqlite":  # zero set-up locally; PostgreSQL is migrated by the release phase
            await self.call(self.store.migrate)

    async def stop(self) -> None:
        await run_in_threadpool(self.store.close)

    async def readiness(self) -> Check:
        try:
            ok, detail = await self.call(self.store.readiness)
        except StoreUnavailable as exc:
            return Check("failing", exc.detail)
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
