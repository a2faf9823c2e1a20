"""`Announcements`: what the endpoints use — the store behind the thread pool and a concurrency limit,
the read cache of public answers, and the admin-token check. Built once in the lifespan; routes get
it, not its parts."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Callable, Collection, Hashable
from datetime import UTC, datetime
from typing import Any, TypeVar

import anyio.to_thread
import msgspec

from service.announcements.cache import ReadCache
from service.announcements.feeds import ATOM_TYPE, FEED_SIZE, JSON_FEED_TYPE, FeedSite, Kind, render_feed
from service.announcements.models import (
    Announcement,
    AnnouncementPage,
    AnnouncementPatch,
    ListQuery,
    NewAnnouncement,
    decode_cursor,
    encode_cursor,
    search_words,
)
from service.announcements.store import AnnouncementStore
from service.auth import BearerToken, is_bearer
from service.database import BlockingRunner, DatabaseUnavailable, StoreObserver
from service.encoding import EncodedBody, held_bytes
from service.errors import FieldError, Forbidden, InvalidInput, NotFound, Unauthorized
from service.readiness import Check

T = TypeVar("T")
logger = logging.getLogger("service.announcements")
_encoder = msgspec.json.Encoder()


def _now() -> datetime:
    return datetime.now(UTC)


class Announcements:
    read_cache = True  # public reads from memory; the bench turns it off to measure the thread-pool path
    poll_interval = 1.0  # seconds between reads of the change counter; also how late another process's write may be seen

    def __init__(
        self,
        store: AnnouncementStore,
        *,
        admin_token: str | None,
        concurrency: int,
        clock: Callable[[], datetime] = _now,
        telemetry: StoreObserver | None = None,
        site: FeedSite | None = None,
    ) -> None:
        self.store = store
        self.site = site  # None: SITE_URL is not set, so the feeds have nothing to link to
        self.clock = clock
        self._admin = BearerToken(admin_token) if admin_token else None
        # At most the pool's size of store calls at once; callers beyond wait in the runner, not in a worker thread.
        self._runner = BlockingRunner(store.kind, concurrency=concurrency, observer=telemetry)
        self.views: ReadCache[EncodedBody] = ReadCache(max_age=self.poll_interval, budget=READ_CACHE_BYTES, cost=_view_cost)
        self._poller: asyncio.Task[None] | None = None  # polls once a second
        self._poll: asyncio.Task[None] | None = None  # the latest poll, maybe in flight
        self._poll_started = float("-inf")
        self._poll_failing = False
        self._stopping = asyncio.Event()

    async def call(self, method: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Every store call: blocking, so off the event loop; at most `concurrency` at once; given up after
        the call timeout; refused at once while the database is known to be down (`service.database`)."""
        return await self._runner.run(method, *args, **kwargs)

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        await self.call(self.store.open)
        if self.store.kind == "sqlite":  # zero set-up locally; PostgreSQL is migrated by the release phase
            await self.call(self.store.migrate)
        if self.read_cache:
            self._poller = asyncio.create_task(self._poll_changes(), name="announcements-change-counter")

    async def stop(self) -> None:
        if self._poller is not None:
            # Not cancelled: a cancelled task would leave its store call running in a worker thread,
            # and closing the store under it crashes SQLite. The poll in flight finishes first.
            self._stopping.set()
            await self._poller
        if self._poll is not None:
            await self._poll
        await anyio.to_thread.run_sync(self.store.close)

    async def _poll_changes(self) -> None:
        """Polls once a second until stopped, beside the requests."""
        while not self._stopping.is_set():
            await asyncio.shield(self._start_poll())
            with contextlib.suppress(TimeoutError):
                wait = self._poll_started + self.poll_interval - self.views.monotonic()
                await asyncio.wait_for(self._stopping.wait(), max(0.0, wait))

    def _start_poll(self) -> asyncio.Task[None]:
        """The poll in flight, or a new one if none is and the last started a second ago or more."""
        if (self._poll is None or self._poll.done()) and self.views.monotonic() - self._poll_started >= self.poll_interval:
            self._poll = asyncio.create_task(self._read_changes(), name="announcements-change-counter")
        assert self._poll is not None
        return self._poll

    async def _read_changes(self) -> None:
        """One read of the change counter and the next publish/expiry time. Straight to the thread pool,
        not through the limiter: requests may be waiting for this poll, so it must not queue behind them."""
        self._poll_started = started = self.views.monotonic()
        self.views.poll_started()
        try:
            # Bounded like every store call (a frozen database must not hold the poll, nor the requests
            # waiting for it, for ever); not through the limiter or the breaker, see above.
            changes = await self._runner.look(functools.partial(self.store.changes, now=self.clock()), queue=False)
        except Exception as exc:  # noqa: BLE001 -- whatever the failure, the read cache goes off and says why
            if not self._poll_failing:  # once per outage, not once a second
                logger.warning("announcements read cache off: change counter unreadable (%s)", _reason(exc))
            self._poll_failing = True  # reads go to the database, where a dead one opens the breaker
        else:
            if self._poll_failing:
                logger.info("announcements read cache on again: change counter readable")
            self._poll_failing = False  # and the runner's breaker closed: the database answered, no need for a probe
            self.views.polled(started, changes.counter, changes.next_boundary)

    async def _cached(self, key: Hashable) -> tuple[EncodedBody | None, datetime]:
        """The cached answer for `key` (None if there is none to trust) and the time to read at if not.
        When the last poll's second is over, the request waits for the next poll (about a millisecond;
        started now if the timer is late) rather than reading the database."""
        now = self.clock()
        if not self.read_cache:
            return None, now
        found = self.views.get(key, now)
        if (
            found is None
            and not self._poll_failing
            and not self.views.vouched()
            and not self._stopping.is_set()
            and self._runner.breaker.closed
        ):
            await asyncio.shield(self._start_poll())
            now = self.clock()
            found = self.views.get(key, now)
        return found, now

    async def readiness(self) -> Check:
        """At once while the database is known to be down; otherwise one look at the schema. A failure here
        does not open the breaker: the look waits only 1 s for a pooled connection, and a busy pool is not a
        dead database. A success closes it."""
        try:
            ok, detail = await self._runner.look(self.store.readiness)
        except DatabaseUnavailable as exc:
            return Check("failing", exc.detail)
        return Check("ok" if ok else "failing", detail)

    # -- who is asking -----------------------------------------------------------------------

    def is_admin(self, authorization: str | None) -> bool:
        """For reads: True for the admin token, False for anonymous. Credentials of another scheme
        (Basic from a password-protected preview, a proxy's) are not an admin attempt; a wrong Bearer
        token is refused outright (401), so a typo is not silently served the public view."""
        if not is_bearer(authorization):
            return False
        self._require_admin(authorization, disabled="Admin access is disabled")
        return True

    def require_writer(self, authorization: str | None) -> None:
        self._require_admin(authorization, disabled="Writes are disabled")

    def require_admin_reader(self, authorization: str | None) -> None:
        self._require_admin(authorization, disabled="Admin reads are disabled")

    def _require_admin(self, authorization: str | None, *, disabled: str) -> None:
        if self._admin is None:
            raise Forbidden(f"{disabled}: ADMIN_TOKEN is not configured on the server.")
        if not self._admin.matches(authorization):
            raise Unauthorized("A valid admin token is required: Authorization: Bearer <ADMIN_TOKEN>.")

    # -- reads and writes --------------------------------------------------------------------

    async def page(self, query: ListQuery, *, include_all: bool, now: datetime | None = None) -> AnnouncementPage:
        if query.q is not None:
            if query.cursor is not None:
                raise InvalidInput([FieldError("cursor", "a search answers one page, best matches first: no cursor")])
            found = await self.call(
                self.store.search, search_words(query.q), now=now or self.clock(), limit=query.limit, tag=query.tag,
                include_all=include_all,
            )  # fmt: skip
            return AnnouncementPage(found, None)
        after = decode_cursor(query.cursor) if query.cursor is not None else None
        rows = await self.call(
            self.store.list, now=now or self.clock(), limit=query.limit + 1, tag=query.tag, include_all=include_all, after=after
        )
        items = rows[: query.limit]
        return AnnouncementPage(items, encode_cursor(items[-1]) if len(rows) > query.limit else None)

    async def get(self, key: int | str, *, admin: bool, now: datetime | None = None) -> Announcement:
        """By id (an int) or by slug (a str)."""
        found = await self.call(self.store.get, key) if isinstance(key, int) else await self.call(self.store.get_by_slug, key)
        if found is None or not (admin or found.is_public(now or self.clock())):
            raise NotFound(f"No announcement {key}." if isinstance(key, int) else f"No announcement with the slug {key}.")
        return found

    async def public_page(self, query: ListQuery) -> EncodedBody:
        """A page of the public list, encoded: from the read cache, or read and then kept there. A page after a
        cursor this process did not hand out (another worker's, or a forged one) is read and answered, not kept:
        a client cannot fill the cache with pages of its own making."""
        if query.cursor is not None and not self.views.issued(query.cursor):
            return EncodedBody(_encoder.encode(await self.page(query, include_all=False)))
        cached, now = await self._cached(query)
        if cached is not None:
            return cached
        ticket = self.views.ticket()
        page = await self.page(query, include_all=False, now=now)
        view = EncodedBody(_encoder.encode(page))
        if self.read_cache and query.q is None:  # not a search: distinct queries would push the lists out
            self.views.put(query, view, ticket, now, issues=page.next_cursor)
        return view

    async def public_item(self, key: int | str) -> EncodedBody:
        """One public announcement by id or slug, encoded, with its ETag: from the read cache, or read and then kept."""
        cached, now = await self._cached(key)
        if cached is not None:
            return cached
        ticket = self.views.ticket()
        found = await self.get(key, admin=False, now=now)
        view = EncodedBody(_encoder.encode(found), found.etag)
        if self.read_cache:
            self.views.put(key, view, ticket, now)
        return view

    async def feed(self, kind: Kind, tag: str | None) -> EncodedBody:
        """The newest public announcements as a feed, encoded: from the read cache, or read and then kept."""
        if self.site is None:
            raise NotFound("The feeds link to the website's pages: set SITE_URL (e.g. https://example.com) to serve them.")
        key = ("feed", kind, tag)
        cached, now = await self._cached(key)
        if cached is not None:
            return cached
        ticket = self.views.ticket()
        items = await self.call(self.store.newest, now=now, limit=FEED_SIZE, tag=tag)
        view = EncodedBody(render_feed(kind, self.site, items, tag), media_type=ATOM_TYPE if kind == "atom" else JSON_FEED_TYPE)
        if self.read_cache:
            self.views.put(key, view, ticket, now)
        return view

    async def create(self, data: NewAnnouncement) -> Announcement:
        created = await self.call(self.store.create, data, now=self.clock())
        self.views.invalidate(created.published_at, created.expires_at, now=self.clock())
        return created

    async def update(self, id: int, patch: AnnouncementPatch, *, if_match: Collection[str] | None) -> Announcement:
        updated = await self.call(self.store.update, id, patch, now=self.clock(), if_match=if_match)
        self.views.invalidate(updated.published_at, updated.expires_at, now=self.clock())
        return updated

    async def record_scheduled(self, now: datetime) -> int:
        """Deploy hooks: record announcements whose scheduled time passed (the sender asks once a second)."""
        return await self.call(self.store.record_scheduled, now=now)

    async def delete(self, id: int, *, if_match: Collection[str] | None) -> None:
        now = self.clock()
        await self.call(self.store.delete, id, if_match=if_match, now=now)
        self.views.invalidate(now=now)


READ_CACHE_BYTES = 16 * 1024 * 1024  # a worker's budget for cached public answers, encoded forms included


def _view_cost(view: EncodedBody) -> int:
    return held_bytes(view.body)


def _reason(exc: Exception) -> str:
    return str(exc.detail) if isinstance(exc, DatabaseUnavailable) else type(exc).__name__
