"""The GitHub cache's shared tier: what every worker process and dyno of one deployment shares through
the service's database (the SQLite file, or PostgreSQL) — cached answers with their validators, one
refresh lease per key, the rate-limit block, the unknown-name budget, and the changes webhooks report.

`SharedSql` is the blocking SQL, in transactions of the service's `Database` (the tables are
`service.github.schema`'s migration). `SharedTier` runs it off the event loop through a `BlockingRunner` of
its own. When the database cannot be used, a shared call answers None ("nothing shared") and each process
carries on with its own copies, its own rate-limit knowledge and its own budget, as a single process would.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import socket
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, NamedTuple, TypeVar

from service.database import BlockingRunner, Breaker, CircuitOpen, Database, DatabaseUnavailable
from service.hooks.outbox import DeployOutbox, Reason, ReasonKind

logger = logging.getLogger("service.github")
T = TypeVar("T")

CONNECT_TIMEOUT = 1.0  # seconds to wait for a pooled connection: a shared read must not hold up GitHub answers
CALL_TIMEOUT = 2.0  # seconds before a shared call is given up (a hung database): the process goes on alone
PAUSE_AFTER_FAILURE = 10.0  # seconds without shared calls after one failed, so a dead database costs nothing
DELIVERY_MEMORY = 7 * 86400  # seconds a webhook delivery id is remembered (GitHub redelivers for 3 days)
WARN_EVERY = 60.0

# Deploy hooks (with `github` among DEPLOY_HOOK_EVENTS): the keys whose new data is a change of the site, by the
# part of the key after the owner ("octo-dev/repositories"); a single repository's key is not one (the list holds it).
CHANGE_KINDS: dict[str, ReasonKind] = {
    "owner": "github.profile",
    "repositories": "github.repositories",
    "pinned": "github.pinned",
    "languages": "github.languages",
}

_ROW = "value, validators, validators_scope, digest, validated_at, changed_at, lease_holder, lease_until"


def _us(seconds: float) -> int:
    return int(seconds * 1_000_000)


def _seconds(micros: int | None) -> float | None:
    return None if micros is None else micros / 1_000_000


class SharedRow(NamedTuple):
    """One key's row: the last copy any process stored, and who is refreshing it."""

    value: bytes | None
    validators: bytes | None
    scope: str | None  # hash of the token the validators belong to
    digest: str | None
    validated_at: float | None  # wall-clock seconds of the upstream confirmation
    changed_at: float | None  # a webhook said the data changed then
    lease_holder: str | None
    lease_until: float | None

    def is_fresh(self, now: float, ttl: float) -> bool:
        return (
            self.value is not None
            and self.validated_at is not None
            and now - self.validated_at < ttl
            and not (self.changed_at is not None and self.changed_at >= self.validated_at)
        )


class Claim(NamedTuple):
    row: SharedRow
    claimed: bool  # this process holds the key's refresh lease now


class Lease(NamedTuple):
    key: str
    holder: str
    until: float


class TierStatus(NamedTuple):
    """What `/health/ready` shows of the shared tier."""

    refreshed: dict[str, float]  # when any process last had each of the keys asked about confirmed by GitHub
    leases: list[Lease]
    rate_limited_until: float | None


def _row(raw: tuple[Any, ...]) -> SharedRow:
    value, validators, scope, digest, validated_at, changed_at, holder, until = raw
    return SharedRow(
        bytes(value) if value is not None else None,
        bytes(validators) if validators is not None else None,
        scope,
        digest,
        _seconds(validated_at),
        _seconds(changed_at),
        holder,
        _seconds(until),
    )


class SharedSql:
    """The shared tier's SQL (shared by SQLite and PostgreSQL). Every method blocks. With `outbox`, a copy
    stored with data different from the one it replaces records a deploy-hook change, in the same transaction."""

    def __init__(self, database: Database, *, outbox: DeployOutbox | None = None) -> None:
        self.database = database
        self.outbox = outbox if outbox is not None and outbox.wants("github") else None

    def _x(self, conn: Any, statement: str, params: tuple[Any, ...] = ()) -> Any:
        return self.database.execute(conn, statement, params)

    def read(self, key: str) -> SharedRow | None:
        with self.database.transaction(write=False, timeout=CONNECT_TIMEOUT) as conn:
            raw = self._x(conn, f"SELECT {_ROW} FROM github_cache WHERE key = ?", (key,)).fetchone()
        return _row(raw) if raw else None

    def claim(self, key: str, *, holder: str, now: float, ttl: float, lease: float) -> tuple[Claim, float]:
        """The key's row, and its lease if the copy is not fresh and nobody else holds a live lease;
        also the rate-limit block. One transaction, the row locked, so two processes never both claim."""
        with self.database.transaction(write=True, timeout=CONNECT_TIMEOUT) as conn:
            self._x(conn, "INSERT INTO github_cache (key) VALUES (?) ON CONFLICT (key) DO NOTHING", (key,))
            row = _row(
                self._x(conn, f"SELECT {_ROW} FROM github_cache WHERE key = ?{self.database.for_update}", (key,)).fetchone()
            )
            blocked = self._x(conn, "SELECT rate_limited_until FROM github_shared WHERE id = 1").fetchone()[0]
            taken = row.lease_until is not None and row.lease_until > now and row.lease_holder != holder
            if row.is_fresh(now, ttl) or taken:
                return Claim(row, False), blocked / 1_000_000
            self._x(
                conn, "UPDATE github_cache SET lease_holder = ?, lease_until = ? WHERE key = ?", (holder, _us(now + lease), key)
            )
        return Claim(row, True), blocked / 1_000_000

    def publish(
        self, key: str, *, holder: str, value: bytes, validators: bytes, scope: str, digest: str, validated_at: float
    ) -> None:
        """Store a copy (unless a newer one is there already) and give up this process's lease."""
        with self.database.transaction(write=True, timeout=CONNECT_TIMEOUT) as conn:
            # "owner/repositories" and the like; "owner/repository/<name>" is not one (a login holds no "/").
            kind = CHANGE_KINDS.get(key.partition("/")[2]) if self.outbox is not None else None
            if kind is not None and self.outbox is not None:
                before = self._x(
                    conn, f"SELECT digest, validated_at FROM github_cache WHERE key = ?{self.database.for_update}", (key,)
                ).fetchone()
                # Different data replacing a copy that is older: the site shows something new. (No copy before is
                # no change: the site was built from GitHub's data too.)
                if before is not None and before[0] is not None and before[0] != digest and (before[1] or 0) <= _us(validated_at):
                    at = datetime.fromtimestamp(validated_at, UTC)
                    self.outbox.record(conn, Reason(kind=kind, at=at))
            self._x(
                conn,
                "INSERT INTO github_cache (key, value, validators, validators_scope, digest, validated_at) VALUES (?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value, validators = excluded.validators,"
                " validators_scope = excluded.validators_scope, digest = excluded.digest, validated_at = excluded.validated_at"
                " WHERE github_cache.validated_at IS NULL OR github_cache.validated_at <= excluded.validated_at",
                (key, value, validators, scope, digest, _us(validated_at)),
            )
            self._release(conn, key, holder)

    def confirm(self, key: str, *, holder: str, digest: str, validators: bytes, scope: str, validated_at: float) -> None:
        """The upstream confirmed the copy with this digest (304): move its time on, give up the lease."""
        with self.database.transaction(write=True, timeout=CONNECT_TIMEOUT) as conn:
            self._x(
                conn,
                "UPDATE github_cache SET validated_at = ?, validators = ?, validators_scope = ?"
                " WHERE key = ? AND digest = ? AND validated_at <= ?",
                (_us(validated_at), validators, scope, key, digest, _us(validated_at)),
            )
            self._release(conn, key, holder)

    def release(self, key: str, *, holder: str) -> None:
        with self.database.transaction(write=True, timeout=CONNECT_TIMEOUT) as conn:
            self._release(conn, key, holder)

    def _release(self, conn: Any, key: str, holder: str) -> None:
        self._x(
            conn,
            "UPDATE github_cache SET lease_holder = NULL, lease_until = NULL WHERE key = ? AND lease_holder = ?",
            (key, holder),
        )

    def forget(self, key: str) -> None:
        """The upstream says the resource is gone: no process should adopt the old copy."""
        with self.database.transaction(write=True, timeout=CONNECT_TIMEOUT) as conn:
            self._x(conn, "DELETE FROM github_cache WHERE key = ?", (key,))

    def block(self, until: float) -> None:
        """A rate-limit answer: no process calls the upstream before `until`."""
        with self.database.transaction(write=True, timeout=CONNECT_TIMEOUT) as conn:
            self._x(
                conn,
                "UPDATE github_shared SET rate_limited_until = ? WHERE id = 1 AND rate_limited_until < ?",
                (_us(until), _us(until)),
            )

    def take_lookup(self, *, now: float, burst: int, every: float) -> tuple[bool, float]:
        """One token of the deployment's unknown-name budget (`burst`, one regained every `every` s):
        whether there was one, and else how long until there is."""
        with self.database.transaction(write=True, timeout=CONNECT_TIMEOUT) as conn:
            tokens, at = self._x(
                conn, f"SELECT lookup_tokens, lookups_at FROM github_shared WHERE id = 1{self.database.for_update}"
            ).fetchone()
            tokens = min(float(burst), tokens + max(0.0, now - at / 1_000_000) / every)
            taken = tokens >= 1
            if taken:
                tokens -= 1
            self._x(conn, "UPDATE github_shared SET lookup_tokens = ?, lookups_at = ? WHERE id = 1", (tokens, _us(now)))
        return taken, 0.0 if taken else (1 - tokens) * every

    def changes(self) -> tuple[int, float]:
        """The change counter webhooks move on, and the rate-limit block."""
        with self.database.transaction(write=False, timeout=CONNECT_TIMEOUT) as conn:
            changes, blocked = self._x(conn, "SELECT changes, rate_limited_until FROM github_shared WHERE id = 1").fetchone()
        return changes, blocked / 1_000_000

    def changed_keys(self) -> list[tuple[str, float]]:
        with self.database.transaction(write=False, timeout=CONNECT_TIMEOUT) as conn:
            rows = self._x(conn, "SELECT key, changed_at FROM github_cache WHERE changed_at IS NOT NULL").fetchall()
        return [(key, changed_at / 1_000_000) for key, changed_at in rows]

    def mark_changed(self, delivery: str | None, keys: list[str], *, now: float) -> bool:
        """A webhook delivery says these keys changed: mark them for every process, once per delivery id.
        False if this delivery was acted on before."""
        with self.database.transaction(write=True, timeout=CONNECT_TIMEOUT) as conn:
            self._x(conn, "DELETE FROM github_deliveries WHERE received_at < ?", (_us(now - DELIVERY_MEMORY),))
            if delivery is not None:
                new = self._x(
                    conn, "INSERT INTO github_deliveries (id, received_at) VALUES (?, ?) ON CONFLICT (id) DO NOTHING RETURNING id",
                    (delivery, _us(now)),
                ).fetchone()  # fmt: skip
                if new is None:
                    return False
            for key in keys:
                self._x(
                    conn, "INSERT INTO github_cache (key, changed_at) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET changed_at = excluded.changed_at",
                    (key, _us(now)),
                )  # fmt: skip
            self._x(conn, "UPDATE github_shared SET changes = changes + 1 WHERE id = 1")
        return True

    def status(self, *, now: float, keys: list[str]) -> TierStatus:
        with self.database.transaction(write=False, timeout=CONNECT_TIMEOUT) as conn:
            found = self._x(
                conn, f"SELECT key, validated_at FROM github_cache WHERE validated_at IS NOT NULL AND key IN ({', '.join('?' * len(keys))})",
                tuple(keys),
            ).fetchall()  # fmt: skip
            leases = self._x(
                conn, "SELECT key, lease_holder, lease_until FROM github_cache WHERE lease_until > ? ORDER BY key", (_us(now),)
            ).fetchall()  # fmt: skip
            blocked = self._x(conn, "SELECT rate_limited_until FROM github_shared WHERE id = 1").fetchone()[0]
        return TierStatus(
            {key: validated_at / 1_000_000 for key, validated_at in found},
            [Lease(key, holder, until / 1_000_000) for key, holder, until in leases],
            blocked / 1_000_000 if blocked > _us(now) else None,
        )


class SharedTier:
    """The shared tier as the cache and the client use it: off the event loop, bounded in time, and
    None instead of an error when the database cannot be used."""

    def __init__(
        self, database: Database, *, token: str | None, clock: Callable[[], float] = time.time, outbox: DeployOutbox | None = None
    ) -> None:
        self.database = database
        self.sql = SharedSql(database, outbox=outbox)
        self.clock = clock
        # Who holds a lease, as /health/ready shows it: host (the dyno), worker pid, and a tag for this app.
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{os.urandom(2).hex()}"
        # Validators are only reused under the token that obtained them; the token itself is never stored.
        self.scope = hashlib.sha256(token.encode()).hexdigest()[:16] if token else "anonymous"
        self.blocked_until = 0.0  # the deployment's rate-limit block, as last read or written
        # Its own threads (a hung database cannot take the announcements' ones) and a short timeout. Any
        # failure, an unexpected one included, pauses shared calls: a dead database then costs nothing.
        self._runner = BlockingRunner(
            database.kind,
            concurrency=2,
            timeout=CALL_TIMEOUT,
            breaker=Breaker(retry_after=PAUSE_AFTER_FAILURE),
            trips=(Exception,),
        )
        self._warned_at = -math.inf

    async def drain(self) -> None:
        """Wait (at most CALL_TIMEOUT) for calls still running in worker threads, those given up on
        included, so the database is not closed under them at shutdown."""
        await self._runner.drain(CALL_TIMEOUT)

    @property
    def usable(self) -> bool:
        """False while shared calls are paused after a failure."""
        return not self._runner.breaker.refusing

    async def _call(self, method: Callable[..., T], *args: Any, **kwargs: Any) -> T | None:
        try:
            return await self._runner.run(method, *args, **kwargs)
        except CircuitOpen:  # paused after a failure: nothing shared for now
            pass
        except DatabaseUnavailable as exc:
            self._failed(str(exc.detail))
        except Exception:  # an unexpected database answer must not stop GitHub answers
            logger.exception("GitHub shared tier: unexpected error")
            self._failed("unexpected error")
        return None

    def _failed(self, reason: str) -> None:
        now = self.clock()
        if now - self._warned_at >= WARN_EVERY:
            self._warned_at = now
            logger.warning("GitHub shared tier unusable (%s); this process serves its own copies for now", reason)

    async def read(self, key: str) -> SharedRow | None:
        return await self._call(self.sql.read, key)

    async def claim(self, key: str, *, ttl: float, lease: float) -> Claim | None:
        result = await self._call(self.sql.claim, key, holder=self.holder, now=self.clock(), ttl=ttl, lease=lease)
        if result is None:
            return None
        claim, self.blocked_until = result
        return claim

    async def publish(self, key: str, *, value: bytes, validators: bytes, digest: str, validated_at: float) -> None:
        await self._call(
            self.sql.publish, key, holder=self.holder, value=value, validators=validators, scope=self.scope, digest=digest,
            validated_at=validated_at,
        )  # fmt: skip

    async def confirm(self, key: str, *, digest: str, validators: bytes, validated_at: float) -> None:
        await self._call(
            self.sql.confirm,
            key,
            holder=self.holder,
            digest=digest,
            validators=validators,
            scope=self.scope,
            validated_at=validated_at,
        )

    async def release(self, key: str) -> None:
        await self._call(self.sql.release, key, holder=self.holder)

    async def forget(self, key: str) -> None:
        await self._call(self.sql.forget, key)

    async def block(self, until: float) -> None:
        self.blocked_until = max(self.blocked_until, until)
        await self._call(self.sql.block, until)

    async def take_lookup(self, *, burst: int, every: float) -> tuple[bool, float] | None:
        return await self._call(self.sql.take_lookup, now=self.clock(), burst=burst, every=every)

    async def changes(self) -> int | None:
        result = await self._call(self.sql.changes)
        if result is None:
            return None
        changes, self.blocked_until = result
        return changes

    async def changed_keys(self) -> list[tuple[str, float]]:
        return await self._call(self.sql.changed_keys) or []

    async def mark_changed(self, delivery: str | None, keys: list[str]) -> bool | None:
        return await self._call(self.sql.mark_changed, delivery, keys, now=self.clock())

    async def status(self, *, keys: list[str]) -> TierStatus | None:
        return await self._call(self.sql.status, now=self.clock(), keys=keys)
