"""Per-key cache of upstream answers in two tiers: each process's memory, and the shared tier in the
database (service.github.shared) that every worker and dyno of the deployment sees.

- A copy younger than the TTL is answered from memory at once, with no database call (`hit`).
- An older copy (or one a webhook marked changed) still within the stale TTL is also answered at once
  (`stale`) while one refresh per key runs in the background: once a copy exists, no visitor waits.
- A refresh first looks at the shared row: a copy another process had confirmed within the TTL is
  adopted without an upstream call. Otherwise the process takes the key's lease and fetches; while
  another process holds the lease it waits for that process's copy. A lease lapses after the timeout.
- With no copy to serve, a visitor waits for the refresh, at most the timeout in all; if the refresh
  fails with an `UpstreamFailure`, a copy younger than the stale TTL is served (`stale`).

Knows nothing of GitHub or HTTP: a `Source` fetches (given the current entry, to revalidate it),
returns new data, NOT_MODIFIED, or raises, and says how its data is stored in the shared tier.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import math
import time
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple, TypeVar

import msgspec

from service.encoding import EncodedBody, held_bytes
from service.github.errors import UpstreamFailure, UpstreamTimeout
from service.github.shared import SharedRow, SharedTier
from service.telemetry import Telemetry

logger = logging.getLogger("service.github")
T = TypeVar("T")

MAX_VIEWS_PER_ENTRY = 256
MAX_VIEW_BYTES_PER_ENTRY = 4 * 1024 * 1024  # an entry's views, encoded forms included: a worker's memory budget
LEASE_POLL = 0.1  # seconds between looks at a row whose lease another process holds
WATCH_EVERY = 1.0  # seconds between looks at the shared change counter (webhooks)
NEVER = -math.inf


class NotModified:
    """The upstream confirmed the cached copy (HTTP 304)."""


NOT_MODIFIED = NotModified()


class Fetched(NamedTuple):
    value: Any
    validators: Any  # whatever the fetcher needs next time to revalidate, e.g. ETags


class Codec:
    """How one kind of data and its validators are written to the shared tier and read back."""

    _encoder = msgspec.json.Encoder()

    def __init__(self, value_type: Any, validators_type: Any) -> None:
        self._values = msgspec.json.Decoder(value_type)
        self._validators = msgspec.json.Decoder(validators_type)

    def encode(self, data: Any) -> bytes:
        return self._encoder.encode(data)

    def decode_value(self, raw: bytes) -> Any:
        return self._values.decode(raw)

    def decode_validators(self, raw: bytes) -> Any:
        return self._validators.decode(raw)


class EncodedView(EncodedBody):
    """One encoded answer kept with its entry. Its br and gzip forms are made the first time a client
    asks for each (lazily: a form nobody asks for costs nothing) and are dropped with the view."""

    __slots__ = ()


@dataclass(eq=False)
class Entry:
    value: Any
    validators: Any
    validated_at: float  # clock time of the last upstream confirmation, by whichever process
    fresh_until: float  # answered as a hit until then; NEVER once a webhook says the data changed
    digest: str = ""  # of the stored value: tells whether a shared copy holds this same data
    retry_at: float = NEVER  # no background refresh before then (one just failed)
    views: dict[Hashable, EncodedView] = field(default_factory=dict)
    view_bytes: int = 0  # what the views hold, as `held_bytes` counts it

    def view(self, key: Hashable, render: Callable[[], bytes]) -> EncodedView:
        """The encoded answer for one view of this entry, rendered once and kept with it. The views of an entry
        are bounded in number and in bytes (queries are the client's choice): past either, they start over."""
        found = self.views.get(key)
        if found is None:
            body = render()
            cost = held_bytes(body)
            if len(self.views) >= MAX_VIEWS_PER_ENTRY or self.view_bytes + cost > MAX_VIEW_BYTES_PER_ENTRY:
                self.views.clear()
                self.view_bytes = 0
            found = self.views[key] = EncodedView(body)
            self.view_bytes += cost
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


class Source(NamedTuple):
    fetch: Fetcher
    codec: Codec


def _digest(raw: bytes) -> str:
    return hashlib.blake2b(raw, digest_size=16).hexdigest()


class UpstreamCache:
    def __init__(
        self,
        *,
        ttl: float,
        stale_ttl: float,
        timeout: float,
        shared: SharedTier | None = None,
        clock: Callable[[], float] = time.time,
        telemetry: Telemetry | None = None,
    ) -> None:
        self.ttl = ttl
        self.telemetry = telemetry if telemetry is not None else Telemetry()
        self.stale_ttl = stale_ttl
        self.timeout = timeout  # a visitor's whole wait, and a refresh lease's length
        self.shared = shared
        self.clock = clock  # wall-clock time: processes compare it through the shared tier
        # Browsers and CDNs may keep an answer a minute, and use it while we refresh or while the upstream fails.
        self.cache_control = (
            f"public, max-age={min(60, int(ttl))}, stale-while-revalidate={int(ttl)}, stale-if-error={int(stale_ttl)}".encode()
        )
        # After a failed refresh, the stale copy is served this long before the next try.
        self.retry_after = min(max(ttl, 1.0), 30.0)
        self._entries: dict[str, Entry] = {}
        self._sources: dict[str, Source] = {}
        self._refreshing: dict[str, asyncio.Task[Lookup]] = {}
        self._loading: dict[str, asyncio.Task[Entry | None]] = {}
        self._changed: dict[str, float] = {}  # the latest change a webhook reported, per key
        self._watcher: asyncio.Task[None] | None = None
        self._closed = False  # the lifespan has ended: no refresh is started any more
        self._changes: int | None = None

    def peek(self, key: str) -> Entry | None:
        return self._entries.get(key)

    def age(self, entry: Entry) -> float:
        return self.clock() - entry.validated_at

    async def get(self, key: str, source: Source, *, since: float | None = None) -> Lookup:
        """The key's entry. `since`: when the visitor's wait began (a request that looks up several
        keys one after another gets one timeout for all of them)."""
        entry = self._entries.get(key)
        now = self.clock()
        if entry is not None and now < entry.fresh_until:
            self.telemetry.cache_lookup(key, "hit")
            return Lookup(entry, "hit", now - entry.validated_at, self.cache_control)
        lookup = await self._get_unfresh(key, source, now if since is None else since)
        self.telemetry.cache_lookup(key, lookup.state)
        return lookup

    async def _get_unfresh(self, key: str, source: Source, since: float) -> Lookup:
        self._sources[key] = source
        entry = self._entries.get(key)
        if entry is None and self.shared is not None and key not in self._refreshing:
            # A new process: another one may have stored a copy.
            entry = await self._wait(self._single_flight(self._loading, key, lambda: self._load(key, source)), since)
        if entry is not None:
            now = self.clock()
            age = now - entry.validated_at
            if now < entry.fresh_until:
                return Lookup(entry, "hit", age, self.cache_control)
            if age < self.stale_ttl:
                if now >= entry.retry_at:
                    self._refresh(key, source)
                return Lookup(entry, "stale", age, self.cache_control)
        return await self._wait(self._refresh(key, source), since)

    async def _wait(self, task: asyncio.Task[T], since: float) -> T:
        """A visitor's wait for shared work, which goes on for the others if this one gives up."""
        remaining = since + self.timeout - self.clock()
        try:
            return await asyncio.wait_for(asyncio.shield(task), max(remaining, 0.0))
        except TimeoutError:
            raise UpstreamTimeout(f"GitHub did not answer within {self.timeout:g} s.") from None

    def _single_flight(self, running: dict[str, asyncio.Task[T]], key: str, work: Callable[[], Awaitable[T]]) -> asyncio.Task[T]:
        """One task per key however many requests want it; it runs on its own, so a caller that gives
        up (timeout, disconnect) does not cancel it for the others."""
        task = running.get(key)
        if task is None:
            task = running[key] = asyncio.ensure_future(work())

            def settled(done: asyncio.Task[T]) -> None:
                if running.get(key) is done:
                    del running[key]
                if not done.cancelled():
                    done.exception()  # retrieved here too, so an unawaited failure is not reported as lost

            task.add_done_callback(settled)
        return task

    def _refresh(self, key: str, source: Source) -> asyncio.Task[Lookup]:
        return self._single_flight(self._refreshing, key, lambda: self._refreshed(key, source))

    # -- one refresh ----------------------------------------------------------------------------

    async def _load(self, key: str, source: Source) -> Entry | None:
        assert self.shared is not None
        return self._adopt(key, source, await self.shared.read(key))

    async def _refreshed(self, key: str, source: Source) -> Lookup:
        adopted = await self._claim(key, source)
        if adopted is not None:
            return adopted
        entry = self._entries.get(key)
        started = self.clock()
        try:
            result = await source.fetch(entry)
        except UpstreamFailure:
            await self._shared_call(lambda shared: shared.release(key))
            if entry is not None:
                entry.retry_at = self.clock() + self.retry_after
                if self.age(entry) < self.stale_ttl:
                    return self._lookup(entry, "stale")
            raise
        except Exception:
            self._entries.pop(key, None)  # e.g. the resource is gone upstream: forget it, everywhere
            await self._shared_call(lambda shared: shared.forget(key))
            raise
        if isinstance(result, NotModified):
            assert entry is not None
            entry.validated_at, entry.fresh_until, entry.retry_at = started, self._fresh_until(key, started), NEVER
            validators = source.codec.encode(entry.validators)
            await self._shared_call(
                lambda shared: shared.confirm(key, digest=entry.digest, validators=validators, validated_at=started)
            )
            return self._lookup(entry, "revalidated")
        raw = source.codec.encode(result.value)
        fresh = self._entries[key] = Entry(
            result.value, result.validators, started, self._fresh_until(key, started), _digest(raw)
        )
        validators = source.codec.encode(result.validators)
        await self._shared_call(
            lambda shared: shared.publish(key, value=raw, validators=validators, digest=fresh.digest, validated_at=started)
        )
        return self._lookup(fresh, "miss")

    async def _claim(self, key: str, source: Source) -> Lookup | None:
        """Take the key's lease, or adopt the copy another process refreshed; None when this process
        is to fetch (it holds the lease, or the shared tier cannot be used)."""
        if self.shared is None:
            return None
        give_up_at = self.clock() + 2 * self.timeout  # a lease lapses after one timeout; never wait for ever
        while True:
            claim = await self.shared.claim(key, ttl=self.ttl, lease=self.timeout)
            if claim is None:
                return None
            entry = self._adopt(key, source, claim.row)
            now = self.clock()
            if entry is not None and now < entry.fresh_until:
                return self._lookup(entry, "hit")
            # A fresh row this process could not adopt (written by another release?) is replaced, not waited on.
            if claim.claimed or claim.row.is_fresh(now, self.ttl) or now >= give_up_at:
                return None
            await asyncio.sleep(LEASE_POLL)  # another process is fetching: wait for its copy

    def _adopt(self, key: str, source: Source, row: SharedRow | None) -> Entry | None:
        """This process's entry, brought up to date with the shared row."""
        entry = self._entries.get(key)
        if row is None:
            return entry
        if entry is not None and row.changed_at is not None and row.changed_at >= entry.validated_at:
            entry.fresh_until = NEVER  # a webhook says it changed since
        if row.value is None or row.validated_at is None or row.digest is None:
            return entry
        if entry is not None and row.validated_at <= entry.validated_at:
            return entry
        changed = row.changed_at is not None and row.changed_at >= row.validated_at
        validated_at = min(row.validated_at, self.clock())  # another dyno's clock may run ahead: no negative Age
        fresh_until = NEVER if changed else self._fresh_until(key, validated_at)
        validators = None
        assert self.shared is not None
        try:
            if row.validators is not None and row.scope == self.shared.scope:  # validators of another token are not ours to use
                validators = source.codec.decode_validators(row.validators)
            if entry is not None and entry.digest == row.digest:
                value = entry.value
                validators = validators if validators is not None else entry.validators
            else:
                value = source.codec.decode_value(row.value)
        except (msgspec.DecodeError, msgspec.ValidationError):
            logger.warning("GitHub shared tier: the stored copy of %s cannot be read; ignoring it", key)
            return entry
        if entry is not None and entry.digest == row.digest:
            entry.validators, entry.validated_at, entry.fresh_until, entry.retry_at = (
                validators,
                validated_at,
                fresh_until,
                NEVER,
            )
            return entry  # the same data: keep its rendered views
        adopted = self._entries[key] = Entry(value, validators, validated_at, fresh_until, row.digest)
        return adopted

    def _fresh_until(self, key: str, confirmed_at: float) -> float:
        """A copy fetched before a change a webhook reported is stale already (a refresh follows)."""
        return NEVER if self._changed.get(key, NEVER) >= confirmed_at else confirmed_at + self.ttl

    async def _shared_call(self, call: Callable[[SharedTier], Awaitable[None]]) -> None:
        if self.shared is not None:
            await call(self.shared)

    def _lookup(self, entry: Entry, state: CacheState) -> Lookup:
        return Lookup(entry, state, self.age(entry), self.cache_control)

    # -- changes reported by webhooks -----------------------------------------------------------

    async def mark_changed(self, delivery: str | None, keys: list[str]) -> bool | None:
        """A webhook says `keys` changed upstream: every process refreshes them. False for a delivery
        acted on before; None if the change could not be shared (this process still refreshes)."""
        shared = await self.shared.mark_changed(delivery, keys) if self.shared is not None else True
        if shared is not False:
            self._revalidate({key: self.clock() for key in keys})
        return shared

    def start(self) -> None:
        """Watch the shared change counter (webhooks, rate-limit blocks) from the lifespan."""
        if self.shared is not None and self._watcher is None:
            self._watcher = asyncio.ensure_future(self._watch(self.shared))

    async def close(self) -> None:
        """Stop the watcher and any refresh still running (the lifespan ends); start none after this, and
        let the shared tier's threads finish before the store under them is closed."""
        self._closed = True
        tasks = [*self._refreshing.values(), *self._loading.values(), *([self._watcher] if self._watcher else [])]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task
        self._watcher = None
        if self.shared is not None:
            await self.shared.drain()

    async def _watch(self, shared: SharedTier) -> None:
        while True:
            await asyncio.sleep(WATCH_EVERY)
            try:
                changes = await shared.changes()
                if changes is not None and changes != self._changes:
                    self._changes = changes  # (the first look too: a change may have come since this process started)
                    self._revalidate(dict(await shared.changed_keys()))
            except Exception:  # the watcher must outlive any one bad round
                logger.exception("GitHub shared tier: watching for changes failed")

    def _revalidate(self, changed: dict[str, float]) -> None:
        """Entries confirmed before their key changed stop being fresh, and are refreshed now, so the
        next answer already has the new data."""
        for key, changed_at in changed.items():
            self._changed[key] = max(changed_at, self._changed.get(key, NEVER))
            entry = self._entries.get(key)
            source = self._sources.get(key)
            if entry is None or source is None or entry.validated_at > changed_at:
                continue
            entry.fresh_until = NEVER
            if self._closed:
                continue
            running = self._refreshing.get(key)
            if running is None:
                self._refresh(key, source)
            else:  # it may have fetched before the change: refresh again once it is done
                running.add_done_callback(functools.partial(self._refresh_after, key, source))

    def _refresh_after(self, key: str, source: Source, done: asyncio.Task[Lookup]) -> None:
        if not self._closed:
            self._refresh(key, source)
