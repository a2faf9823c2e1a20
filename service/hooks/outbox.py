"""The deploy-hook outbox's SQL: changes recorded inside the transaction of the change, gathered into deliveries
after the debounce window, and each delivery's state per URL. Every method blocks; the sender calls them through
a `BlockingRunner`, and the stores call `record` on the connection of their own write.

One process at a time sends: the one holding the lease in `deploy_hook_sender` (`claim`), as the GitHub shared
tier leases its refreshes.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal, NamedTuple
from urllib.parse import urlsplit

import msgspec

from service.database import READINESS_TIMEOUT, Database

Family = Literal["announcements", "github"]
ReasonKind = Literal[
    "announcement.published", "announcement.updated", "announcement.unpublished", "announcement.deleted",
    "announcement.expired", "github.profile", "github.repositories", "github.pinned", "github.languages",
]  # fmt: skip
Time = Annotated[datetime, msgspec.Meta(tz=True)]
MAX_REASONS = 100  # reasons listed in one POST; the rest are counted in `omitted_reasons`
KEEP_FINISHED = timedelta(days=7)  # delivered and given-up deliveries are kept this long, for `hooks status`
LOOK_BACK = timedelta(hours=24)  # scheduled times passed while no process ran are announced up to this far back


class Reason(msgspec.Struct, omit_defaults=True, kw_only=True):
    """One change that asks for a rebuild."""

    kind: ReasonKind
    id: int | None = None  # the announcement's
    slug: str | None = None
    at: Time  # when it changed (a scheduled time: that time)


class DeployHookPayload(msgspec.Struct, kw_only=True):
    """The JSON body of each POST (openapi.yaml's `webhooks.deployHook`)."""

    id: str  # the delivery id: the same on every try and every URL, so a receiver can ignore a repeat
    reasons: list[Reason]
    omitted_reasons: int  # reasons beyond the first MAX_REASONS, not listed
    first_change_at: Time
    sent_at: Time


_reason_decoder = msgspec.json.Decoder(Reason)


class Target(NamedTuple):
    """One DEPLOY_HOOK_URLS entry. Only `id` (a hash) and `host` are ever stored, logged or shown."""

    url: str
    id: str
    host: str

    @classmethod
    def of(cls, url: str) -> Target:
        return cls(url, hashlib.sha256(url.encode()).hexdigest()[:16], urlsplit(url).hostname or "?")


class Delivery(NamedTuple):
    """One delivery to one URL, as stored."""

    id: str
    target: str
    host: str
    state: Literal["pending", "delivered", "failed"]
    attempts: int
    created_at: datetime
    first_change_at: datetime
    next_attempt_at: datetime
    finished_at: datetime | None
    last_outcome: str | None
    changes: int


class OutboxStatus(NamedTuple):
    pending: int
    retrying: int  # pending after at least one failed try
    failed: int  # given up in the last 24 hours
    waiting_changes: int  # recorded, inside the debounce window
    last_delivered_at: datetime | None
    sender: str | None  # the process holding the lease, if any
    last_problem: str | None  # the latest failed try's outcome, as "host: outcome"


def _us(moment: datetime) -> int:
    return (moment - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)


def _time(micros: int) -> datetime:
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=micros)


_DELIVERY = (
    "d.delivery, d.target, d.host, d.state, d.attempts, d.created_at, d.first_change_at, d.next_attempt_at, d.finished_at,"
    " d.last_outcome, (SELECT COUNT(*) FROM deploy_hook_changes c WHERE c.delivery = d.delivery)"
)


def _delivery(row: tuple[Any, ...]) -> Delivery:
    id, target, host, state, attempts, created, first, next_at, finished, outcome, changes = row
    return Delivery(
        id, target, host, state, attempts, _time(created), _time(first), _time(next_at),
        _time(finished) if finished is not None else None, outcome, changes,
    )  # fmt: skip


class DeployOutbox:
    """The outbox on one `Database`, for the event families DEPLOY_HOOK_EVENTS chose."""

    def __init__(self, database: Database, *, events: Iterable[Family] = ("announcements",)) -> None:
        self.database = database
        self.events = frozenset(events)

    def _x(self, conn: Any, statement: str, params: tuple[Any, ...] = ()) -> Any:
        return self.database.execute(conn, statement, params)

    # -- recording, inside the change's own transaction ------------------------------------------

    def wants(self, family: Family) -> bool:
        return family in self.events

    def record(self, conn: Any, reason: Reason, *, key: str | None = None) -> bool:
        """Record `reason` on `conn`, in the transaction of the change, so it is recorded if and only if the
        change commits. With `key`, only once (False if it was recorded before)."""
        row = self._x(
            conn,
            "INSERT INTO deploy_hook_changes (change_key, kind, reason, changed_at) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (change_key) DO NOTHING RETURNING id",
            (key, reason.kind, msgspec.json.encode(reason).decode(), _us(reason.at)),
        ).fetchone()
        return row is not None

    def scheduled_window(self, conn: Any, now: datetime) -> tuple[datetime, datetime]:
        """(since, now): the scheduled times to look at, from where the last look ended (at most LOOK_BACK ago;
        the first look starts now), and moves that mark to `now`. Call inside the transaction that records them."""
        (checked,) = self._x(
            conn, f"SELECT scheduled_checked_at FROM deploy_hook_sender WHERE id = 1{self.database.for_update}"
        ).fetchone()
        since = max(_time(checked), now - LOOK_BACK) if checked is not None else now
        self._x(conn, "UPDATE deploy_hook_sender SET scheduled_checked_at = ? WHERE id = 1", (_us(max(since, now)),))
        return since, now

    # -- the sender's lease ----------------------------------------------------------------------

    def claim(self, holder: str, *, now: datetime, seconds: float) -> bool:
        """Take or renew the lease until `now + seconds`. False if another process holds a live one."""
        with self.database.transaction(write=True, timeout=READINESS_TIMEOUT) as conn:
            row = self._x(
                conn,
                "UPDATE deploy_hook_sender SET lease_holder = ?, lease_until = ?"
                " WHERE id = 1 AND (lease_holder = ? OR lease_holder IS NULL OR lease_until <= ?) RETURNING id",
                (holder, _us(now + timedelta(seconds=seconds)), holder, _us(now)),
            ).fetchone()
        return row is not None

    def release(self, holder: str) -> None:
        with self.database.transaction(write=True, timeout=READINESS_TIMEOUT) as conn:
            self._x(
                conn,
                "UPDATE deploy_hook_sender SET lease_holder = NULL, lease_until = 0 WHERE id = 1 AND lease_holder = ?",
                (holder,),
            )

    # -- deliveries --------------------------------------------------------------------------

    def gather(self, *, now: datetime, debounce: float, targets: Iterable[Target]) -> str | None:
        """Once the first waiting change is `debounce` seconds old: one delivery, for every URL, carrying every
        change waiting now. Its id, or None if there was nothing to gather yet."""
        with self.database.transaction(write=True) as conn:
            (first,) = self._x(conn, "SELECT MIN(changed_at) FROM deploy_hook_changes WHERE delivery IS NULL").fetchone()
            if first is None or _time(first) + timedelta(seconds=debounce) > now:
                return None
            delivery = uuid.uuid4().hex
            self._x(conn, "UPDATE deploy_hook_changes SET delivery = ? WHERE delivery IS NULL", (delivery,))
            for target in targets:
                self._x(
                    conn,
                    "INSERT INTO deploy_hook_deliveries (delivery, target, host, state, attempts, created_at, first_change_at,"
                    " next_attempt_at) VALUES (?, ?, ?, 'pending', 0, ?, ?, ?)",
                    (delivery, target.id, target.host, _us(now), first, _us(now)),
                )
        return delivery

    def due(self, *, now: datetime, limit: int = 20) -> list[Delivery]:
        """Pending deliveries whose next try is due, oldest first."""
        with self.database.transaction(write=False) as conn:
            rows = self._x(
                conn,
                f"SELECT {_DELIVERY} FROM deploy_hook_deliveries d WHERE d.state = 'pending' AND d.next_attempt_at <= ?"
                " ORDER BY d.next_attempt_at, d.delivery LIMIT ?",
                (_us(now), limit),
            ).fetchall()
        return [_delivery(row) for row in rows]

    def payload(self, delivery: str) -> tuple[list[Reason], int, datetime]:
        """What a delivery's POST lists: its first MAX_REASONS reasons in the order recorded, how many more
        there are, and when the first change was."""
        with self.database.transaction(write=False) as conn:
            rows = self._x(
                conn, "SELECT reason FROM deploy_hook_changes WHERE delivery = ? ORDER BY id LIMIT ?", (delivery, MAX_REASONS)
            ).fetchall()
            total, first = self._x(
                conn, "SELECT COUNT(*), MIN(changed_at) FROM deploy_hook_changes WHERE delivery = ?", (delivery,)
            ).fetchone()
        reasons = [_reason_decoder.decode(reason) for (reason,) in rows]
        return reasons, total - len(reasons), _time(first) if first is not None else datetime.now(UTC)

    def finish(
        self,
        delivery: Delivery,
        *,
        state: Literal["pending", "delivered", "failed"],
        outcome: str,
        now: datetime,
        next_attempt_at: datetime | None = None,
    ) -> None:
        """One try's result: delivered, given up (failed), or pending again with its next try at `next_attempt_at`."""
        with self.database.transaction(write=True) as conn:
            self._x(
                conn,
                "UPDATE deploy_hook_deliveries SET state = ?, attempts = attempts + 1, last_outcome = ?, next_attempt_at = ?,"
                " finished_at = ? WHERE delivery = ? AND target = ? AND state = 'pending'",
                (
                    state,
                    outcome,
                    _us(next_attempt_at or now),
                    None if state == "pending" else _us(now),
                    delivery.id,
                    delivery.target,
                ),
            )

    def prune(self, *, now: datetime) -> None:
        """Forget deliveries finished more than KEEP_FINISHED ago, and their changes."""
        before = _us(now - KEEP_FINISHED)
        with self.database.transaction(write=True) as conn:
            self._x(
                conn,
                "DELETE FROM deploy_hook_changes WHERE delivery IN (SELECT delivery FROM deploy_hook_deliveries"
                " GROUP BY delivery HAVING MAX(CASE WHEN state = 'pending' THEN 1 ELSE 0 END) = 0 AND MAX(finished_at) < ?)",
                (before,),
            )
            self._x(conn, "DELETE FROM deploy_hook_deliveries WHERE state <> 'pending' AND finished_at < ?", (before,))

    # -- what people look at -----------------------------------------------------------------

    def deliveries(self, *, states: Iterable[str] = ("pending", "failed")) -> list[Delivery]:
        wanted = tuple(states)
        with self.database.transaction(write=False) as conn:
            rows = self._x(
                conn,
                f"SELECT {_DELIVERY} FROM deploy_hook_deliveries d WHERE d.state IN ({', '.join('?' * len(wanted))})"
                " ORDER BY d.created_at, d.delivery, d.host",
                wanted,
            ).fetchall()
        return [_delivery(row) for row in rows]

    def retry_now(self, *, now: datetime) -> int:
        """Every pending and given-up delivery due now, given-up ones given another 24 hours. How many."""
        with self.database.transaction(write=True) as conn:
            moved = self._x(
                conn,
                "UPDATE deploy_hook_deliveries SET next_attempt_at = ?,"
                " created_at = CASE WHEN state = 'failed' THEN ? ELSE created_at END, state = 'pending', finished_at = NULL"
                " WHERE state IN ('pending', 'failed')",
                (_us(now), _us(now)),
            ).rowcount
        return int(moved)

    def status(self, *, now: datetime) -> OutboxStatus:
        with self.database.transaction(write=False, timeout=READINESS_TIMEOUT) as conn:
            pending, retrying, failed, delivered_at = self._x(
                conn,
                "SELECT COALESCE(SUM(CASE WHEN state = 'pending' THEN 1 ELSE 0 END), 0),"
                " COALESCE(SUM(CASE WHEN state = 'pending' AND attempts > 0 THEN 1 ELSE 0 END), 0),"
                " COALESCE(SUM(CASE WHEN state = 'failed' AND finished_at > ? THEN 1 ELSE 0 END), 0),"
                " MAX(CASE WHEN state = 'delivered' THEN finished_at END) FROM deploy_hook_deliveries",
                (_us(now - timedelta(hours=24)),),
            ).fetchone()
            (waiting,) = self._x(conn, "SELECT COUNT(*) FROM deploy_hook_changes WHERE delivery IS NULL").fetchone()
            holder, until = self._x(conn, "SELECT lease_holder, lease_until FROM deploy_hook_sender WHERE id = 1").fetchone()
            problem = self._x(
                conn,
                "SELECT host, last_outcome FROM deploy_hook_deliveries WHERE last_outcome IS NOT NULL AND state <> 'delivered'"
                " ORDER BY next_attempt_at DESC LIMIT 1",
            ).fetchone()
        return OutboxStatus(
            int(pending),
            int(retrying),
            int(failed),
            int(waiting),
            _time(delivered_at) if delivered_at is not None else None,
            holder if holder is not None and until > _us(now) else None,
            f"{problem[0]}: {problem[1]}" if problem else None,
        )
