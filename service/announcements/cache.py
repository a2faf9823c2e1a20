"""The read cache of public announcements: encoded answers kept in memory until they may be wrong.

A cached answer is served only while all three hold:
- no write since it was read: a write in this process clears the cache at once; one in another process
  bumps the database's change counter, which a poll reads at most once a second, and answers are
  served only within 1 s of the start of the last poll that succeeded (so never more than 1 s late);
- the wall clock is before the next time any announcement is published or expires (the boundary the
  poll reads), as it stood when the answer was read: a scheduled announcement appears, and an expired
  one disappears, on the first request after its time;
- the database answered the last poll within that second (while it fails, every read goes to it).
Knows nothing of HTTP or of the store; `Announcements` feeds it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable
from datetime import UTC, datetime
from typing import Generic, NamedTuple, TypeVar

V = TypeVar("V")

_NEVER = datetime.max.replace(tzinfo=UTC)


class _View(NamedTuple, Generic[V]):
    value: V
    until: datetime  # the boundary known when it was read: served only before it
    cost: int


class Ticket(NamedTuple):
    """Taken before a read that may be cached: what the cache knew when the read started."""

    generation: int
    boundary: datetime


class ReadCache(Generic[V]):
    """Bounded in bytes: `cost` tells what a value holds, and past `budget` the oldest answers go first. A
    page reached by a cursor is kept only for a cursor this cache issued with a page it holds (`issued`):
    a forged cursor is answered from the database, never kept."""

    def __init__(
        self,
        *,
        max_age: float = 1.0,
        budget: int = 16 * 1024 * 1024,
        cost: Callable[[V], int] = lambda value: 0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_age = max_age  # seconds after a poll's start that it still vouches for the cache
        self.budget = budget
        self.cost = cost
        self.monotonic = monotonic
        self._views: dict[Hashable, _View[V]] = {}
        self._used = 0  # bytes the views hold, as `cost` counts them
        self._issued: set[Hashable] = set()  # cursors of the pages kept: at most one per view
        self._generation = 0  # bumped whenever cached answers may have become wrong
        self._counter: int | None = None  # the database's change counter at the last poll
        self._boundary = datetime.min.replace(tzinfo=UTC)  # nothing is cacheable before the first poll
        self._vouched_until = float("-inf")  # monotonic time until which the last poll vouches
        self._written_boundary = _NEVER  # the earliest future time written here since the poll started

    def vouched(self) -> bool:
        """Whether a poll that started less than `max_age` ago vouches for the cache."""
        return self.monotonic() < self._vouched_until

    def get(self, key: Hashable, now: datetime) -> V | None:
        """The cached answer for `key`, or None if there is none that is certainly right at `now`."""
        if self.monotonic() >= self._vouched_until:
            return None
        view = self._views.get(key)
        if view is None or now >= view.until:
            return None
        return view.value

    def ticket(self) -> Ticket:
        return Ticket(self._generation, self._boundary)

    def issued(self, cursor: Hashable) -> bool:
        """Whether `cursor` came with a page this cache holds (so the page after it may be kept too)."""
        return cursor in self._issued

    def put(self, key: Hashable, value: V, ticket: Ticket, read_at: datetime, *, issues: Hashable | None = None) -> None:
        """Keep what a read that started with `ticket`, at wall time `read_at`, found, and the cursor it
        `issues` for the next page. Dropped if a write was seen since the read started, or the boundary had
        already passed when it read; the oldest views make room when the budget would be passed."""
        if ticket.generation != self._generation or read_at >= ticket.boundary:
            return
        cost = self.cost(value)
        if cost > self.budget:
            return
        old = self._views.pop(key, None)
        if old is not None:
            self._used -= old.cost
        while self._views and self._used + cost > self.budget:
            oldest = next(iter(self._views))
            self._used -= self._views.pop(oldest).cost
        self._views[key] = _View(value, ticket.boundary, cost)
        self._used += cost
        if issues is not None:
            if len(self._issued) >= max(len(self._views), 1) * 2:  # bounded by the views, whatever was evicted
                self._issued.clear()
            self._issued.add(issues)

    @property
    def used(self) -> int:
        return self._used

    def invalidate(self, *times: datetime | None, now: datetime) -> None:
        """A write in this process committed; `times` are the publish and expiry times it wrote: one may
        be the next boundary."""
        self._drop()
        for moment in times:
            if moment is not None and moment > now:
                self._boundary = min(self._boundary, moment)
                self._written_boundary = min(self._written_boundary, moment)

    def poll_started(self) -> None:
        self._written_boundary = _NEVER

    def polled(self, started: float, counter: int, boundary: datetime | None) -> None:
        """The poll that started at monotonic time `started` read the database's change counter and
        its next boundary."""
        if counter != self._counter:
            self._counter = counter
            self._drop()
        # A write here while the poll ran may have set an earlier time than the poll could see.
        self._boundary = min(boundary or _NEVER, self._written_boundary)
        self._vouched_until = max(self._vouched_until, started + self.max_age)

    def _drop(self) -> None:
        self._views.clear()
        self._issued.clear()
        self._used = 0
        self._generation += 1
