"""Per-key cache of upstream answers: freshness, single-flight refresh, stale-if-error, encoded views.

Knows nothing of GitHub or HTTP: a fetcher gets the current entry (to revalidate it) and returns
new data, NOT_MODIFIED, or raises. `UpstreamFailure`s are covered by the last good copy.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

from service.github.errors import UpstreamFailure
from service.http import EncodedBody

MAX_VIEWS_PER_ENTRY = 256

class NotModified:
    """The upstream confirmed the cached copy (HTTP 304)."""


NOT_MODIFIED = NotModified()


class Fetched(NamedTuple):
    value: Any
    validators: Any  # whatever the fetcher needs next time to revalidate, e.g. ETags


class EncodedView(EncodedBody):
    """One encoded answer kept with its entry. Its br and gzip forms are made the first time a client
    asks for each (lazily: a form nobody asks for costs nothing) and are dropped with the view."""

    __slots__ = ()


@dataclass(eq=False)
class Entry:
    value: Any
    validators: Any
    validated_at: float  # clock time of the last upstream confirmation
    views: dict[Hashable, EncodedView] = field(default_factory=dict)

    def view(self, key: Hashable, render: Callable[[], bytes]) -> EncodedView:
        """The encoded answer for one view of this entry, rendered once and kept with it."""
        found = self.views.get(key)
        if found is None:
            if len(self.views) >= MAX_VIEWS_PER_ENTRY:
                self.views.clear()
            body = render()
            found = self.views[key] = EncodedView(body)
        return found


CacheState = Literal["hit", "miss", "revalidated", "stale"]


class Lookup(NamedTuple):
    """A cached entry as one request sees it: how it was obtained, how old it is, and how long
    browsers and CDNs may keep it (the Cache-Control value)."""

    entry: Entry
    state: CacheState
    age: float
    cache_control: bytes


Fetcher = Callable[[Entry | None], Awaitable[Fetched | NotModified]]


class UpstreamCache:
    def __init__(self, *, ttl: float, stale_ttl: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self.stale_ttl = stale_ttl
        self.clock = clock
        # Browsers and CDNs may keep an answer a minute, and use it while we refresh or while the upstream fails.
        self.cache_control = f"public, max-age={min(60, int(ttl))}, stale-while-revalidate={int(ttl)}, stale-if-error={int(stale_ttl)}".encode()
        self._entries: dict[Hashable, Entry] = {}
        self._inflight: dict[Hashable, asyncio.Future[Lookup]] = {}

    def peek(self, key: Hashable) -> Entry | None:
        return self._entries.get(key)

    def age(self, entry: Entry) -> float:
        return self.clock() - entry.validated_at

    async def get(self, key: Hashable, fetch: Fetcher) -> Lookup:
        entry = self._entries.get(key)
        if entry is not None and (age := self.clock() - entry.validated_at) < self.ttl:
            return Lookup(entry, "hit", age, self.cache_control)
        refresh = self._inflight.get(key)
        if refresh is None:
            # One upstream call per key however many requests miss at once; it runs as its own
            # task so a caller that gives up (timeout, disconnect) does not cancel it for the others.
            refresh = asyncio.ensure_future(self._refresh(key, entry, fetch))
            self._inflight[key] = refresh
            refresh.add_done_callback(lambda done: self._settled(key, done))
        return await asyncio.shield(refresh)

    def _settled(self, key: Hashable, done: asyncio.Future[Lookup]) -> None:
        self._inflight.pop(key, None)
        if not done.cancelled():
            done.exception()  # retrieved here too, so an unawaited failure is not reported as lost

    async def _refresh(self, key: Hashable, entry: Entry | None, fetch: Fetcher) -> Lookup:
        try:
            result = await fetch(entry)
        except UpstreamFailure:
            if entry is not None and self.age(entry) < self.stale_ttl:
                return self._lookup(entry, "stale")
            raise
        except Exception:
            self._entries.pop(key, None)  # e.g. the resource is gone upstream: forget it
            raise
        if isinstance(result, NotModified):
            assert entry is not None
            entry.validated_at = self.clock()
            return self._lookup(entry, "revalidated")
        fresh = self._entries[key] = Entry(result.value, result.validators, self.clock())
        return self._lookup(fresh, "miss")

    def _lookup(self, entry: Entry, state: CacheState) -> Lookup:
        return Lookup(entry, state, self.age(entry), self.cache_control)
