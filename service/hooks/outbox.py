"""The deploy-hook outbox's SQL: changes recorded inside the transaction of the change, gathered into deliveries
after the debounce window, and each delivery's state per URL. Every method blocks; the sender calls them through
a `BlockingRunner`, and the stores call `record` on the connection of their own write.

One process at a time sends: the one holding the lease in `deploy_hook_sender` (`claim`), as the GitHub shared
tier leases its refreshes.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Collection, Iterable
from datetime import datetime, timedelta
from typing import Annotated, Any, Literal, NamedTuple
from urllib.parse import urlsplit

import msgspec

from service.database import READINESS_TIMEOUT, Database, from_micros, to_micros

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


_encoder = msgspec.json.Encoder()
_reason_decoder = msgspec.json.Decoder(Reason)
_NO_PARAMS: tuple[str, ...] = ()
_targets_decoder = msgspec.json.Decoder(list[tuple[str, str]])


class Target(NamedTuple):
    """One DEPLOY_HOOK_URLS entry. Only `id` (a hash) and `host` are ever stored, logged or shown."""

    url: str
    id: str
    host: str

    @classmethod
    def of(cls, url: str) -> Target:
        return cls(url, hashlib.sha256(url.encode()).hexdigest()[:16], urlsplit(url).hostname or "?")

    @property
    def label(self) -> str:
        return label(self.host, self.id)


def label(host: str, target: str) -> str:
    """How logs and status name a URL: its host, and the start of its hash, which tells two hooks on one host
    apart (two Netlify sites) and says nothing of the URL's secret part."""
    return f"{host} #{target[:6]}"


class Delivery(NamedTuple):
    """One delivery to one URL, as stored."""

    id: str
    target: str
    host: str
    state: Literal["pending", "delivered", "failed", "superseded"]
    attempts: int
    created_at: datetime
    first_change_at: datetime
    next_attempt_at: datetime
    finished_at: datetime | None
    last_outcome: str | None
    changes: int

    @property
    def label(self) -> str:
        return label(self.host, self.target)


class OutboxStatus(NamedTuple):
    pending: int
    retrying: int  # pending after at least one failed try
    failed: int  # given up in the last 24 hours
    waiting_changes: int  # recorded, inside the debounce window
    last_delivered_at: datetime | None
    sender: str | None  # the process holding the lease, if any
    last_problem: str | None  # the latest failed try's outcome, as "host: outcome"


# A delivery's changes, its own and those of the deliveries to the same URL it superseded.
_CHANGES_OF = (
    "(c.delivery = {d}.delivery OR c.delivery IN (SELECT s.delivery FROM deploy_hook_deliveries s"
    " WHERE s.target = {d}.target AND s.superseded_by = {d}.delivery))"
)
_DELIVERY = (
    "d.delivery, d.target, d.host, d.state, d.attempts, d.created_at, d.first_change_at, d.next_attempt_at, d.finished_at,"
    f" d.last_outcome, (SELECT COUNT(*) FROM deploy_hook_changes c WHERE {_CHANGES_OF.format(d='d')})"
)
SCHEDULE_GRACE = timedelta(seconds=60)  # scheduled times are looked at again this long: a write in flight commits late
MARK_EVERY = timedelta(seconds=10)  # how often an idle sender moves the scheduled-times mark (a write)


def _delivery(row: tuple[Any, ...]) -> Delivery:
    id, target, host, state, attempts, created, first, next_at, finished, outcome, changes = row
    return Delivery(
        id, target, host, state, attempts, from_micros(created), from_micros(first), from_micros(next_at),
        from_micros(finished) if finished is not None else None, outcome, changes,
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
            (key, reason.kind, _encoder.encode(reason).decode(), to_micros(reason.at)),
        ).fetchone()
        return row is not None

    def known(self, conn: Any, keys: Iterable[str]) -> set[str]:
        """Which of these change keys are recorded already."""
        wanted = tuple(keys)
        if not wanted:
            return set()
        rows = self._x(
            conn, f"SELECT change_key FROM deploy_hook_changes WHERE change_key IN ({', '.join('?' * len(wanted))})", wanted
        ).fetchall()
        return {key for (key,) in rows}

    def scheduled_since(self, conn: Any, now: datetime) -> tuple[datetime, bool]:
        """From when scheduled times are to be looked at (the last look's mark, at most LOOK_BACK ago, less
        SCHEDULE_GRACE: a write that read the clock before a scheduled time may commit after it; the first look
        ever starts now), and whether the mark is due to be moved on (`mark_scheduled`)."""
        (checked,) = self._x(conn, "SELECT scheduled_checked_at FROM deploy_hook_sender WHERE id = 1").fetchone()
        if checked is None:
            return now - SCHEDULE_GRACE, True
        mark = from_micros(checked)
        return max(mark, now - LOOK_BACK) - SCHEDULE_GRACE, now - mark >= MARK_EVERY

    def mark_scheduled(self, conn: Any, now: datetime) -> None:
        """Scheduled times up to `now` are recorded: call in the transaction that records them."""
        self._x(conn, "UPDATE deploy_hook_sender SET scheduled_checked_at = ? WHERE id = 1", (to_micros(now),))

    # -- the sender's lease ----------------------------------------------------------------------

    def claim(self, holder: str, *, now: datetime, seconds: float, targets: Iterable[Target] | None = None) -> bool:
        """Take the lease until `now + seconds`, or renew it once a third of it has passed. False if another
        process holds a live one. Looks before it writes: most ticks change nothing. A server's sender names its
        `targets` (hash and host), so the command line knows every URL the server sends to (`recorded_targets`)."""
        with self.database.transaction(write=False, timeout=READINESS_TIMEOUT) as conn:
            current, until = self._x(conn, "SELECT lease_holder, lease_until FROM deploy_hook_sender WHERE id = 1").fetchone()
        if current is not None and until > to_micros(now):
            if current != holder:
                return False
            if until - to_micros(now) > seconds * 2 / 3 * 1_000_000:
                return True
        with self.database.transaction(write=True, timeout=READINESS_TIMEOUT) as conn:
            row = self._x(
                conn,
                "UPDATE deploy_hook_sender SET lease_holder = ?, lease_until = ?"
                " WHERE id = 1 AND (lease_holder = ? OR lease_holder IS NULL OR lease_until <= ?) RETURNING id",
                (holder, to_micros(now + timedelta(seconds=seconds)), holder, to_micros(now)),
            ).fetchone()
            if row is not None and targets is not None:
                named = _encoder.encode(sorted([target.id, target.host] for target in targets)).decode()
                self._x(conn, "UPDATE deploy_hook_sender SET targets = ? WHERE id = 1", (named,))
        return row is not None

    def recorded_targets(self) -> list[Target]:
        """The URLs the last server's sender sent to, as hash and host (no URL: these can only be given rows)."""
        with self.database.transaction(write=False) as conn:
            (named,) = self._x(conn, "SELECT targets FROM deploy_hook_sender WHERE id = 1").fetchone()
        return [Target("", id, host) for id, host in _targets_decoder.decode(named)] if named else []

    def _holds(self, conn: Any, holder: str, now: datetime) -> bool:
        """Inside a write: whether `holder` still holds the lease, its row locked until the transaction ends
        (so two processes' gathers and claims of due deliveries take turns)."""
        current, until = self._x(
            conn, f"SELECT lease_holder, lease_until FROM deploy_hook_sender WHERE id = 1{self.database.for_update}"
        ).fetchone()
        return bool(current == holder and until > to_micros(now))

    def release(self, holder: str) -> None:
        with self.database.transaction(write=True, timeout=READINESS_TIMEOUT) as conn:
            self._x(
                conn,
                "UPDATE deploy_hook_sender SET lease_holder = NULL, lease_until = 0 WHERE id = 1 AND lease_holder = ?",
                (holder,),
            )

    # -- deliveries --------------------------------------------------------------------------

    def gather(self, holder: str, *, now: datetime, debounce: float, targets: Iterable[Target]) -> str | None:
        """Once the first waiting change is `debounce` seconds old, and while `holder` holds the lease: one
        delivery, for every URL, carrying every change waiting now. A delivery to the same URL still being retried
        is superseded by it (the new one lists its reasons too). Its id, or None if nothing was gathered."""
        with self.database.transaction(write=False) as conn:
            (first,) = self._x(conn, "SELECT MIN(changed_at) FROM deploy_hook_changes WHERE delivery IS NULL").fetchone()
        if first is None or from_micros(first) + timedelta(seconds=debounce) > now:
            return None  # nothing to write: most ticks end here
        with self.database.transaction(write=True) as conn:
            if not self._holds(conn, holder, now):
                return None
            (first,) = self._x(conn, "SELECT MIN(changed_at) FROM deploy_hook_changes WHERE delivery IS NULL").fetchone()
            if first is None:  # gathered meanwhile by the previous holder
                return None
            delivery = uuid.uuid4().hex
            self._x(conn, "UPDATE deploy_hook_changes SET delivery = ? WHERE delivery IS NULL", (delivery,))
            for target in targets:
                (earlier,) = self._x(
                    conn,
                    "SELECT MIN(first_change_at) FROM deploy_hook_deliveries WHERE target = ? AND state = 'pending' AND attempts > 0",
                    (target.id,),
                ).fetchone()
                if earlier is not None:
                    self._supersede(conn, target.id, by=delivery, now=now)
                self._x(
                    conn,
                    "INSERT INTO deploy_hook_deliveries (delivery, target, host, state, attempts, created_at, first_change_at,"
                    " next_attempt_at) VALUES (?, ?, ?, 'pending', 0, ?, ?, ?)",
                    (delivery, target.id, target.host, to_micros(now), min(first, earlier or first), to_micros(now)),
                )
        return delivery

    def _supersede(self, conn: Any, target: str, *, by: str, now: datetime) -> None:
        """The URL's deliveries being retried (and those they superseded) give way to delivery `by`."""
        self._x(
            conn,
            "UPDATE deploy_hook_deliveries SET superseded_by = ? WHERE target = ? AND superseded_by IN"
            " (SELECT delivery FROM deploy_hook_deliveries WHERE target = ? AND state = 'pending' AND attempts > 0)",
            (by, target, target),
        )
        self._x(
            conn,
            "UPDATE deploy_hook_deliveries SET state = 'superseded', superseded_by = ?, finished_at = ?"
            " WHERE target = ? AND state = 'pending' AND attempts > 0",
            (by, to_micros(now), target),
        )

    def due(
        self, holder: str, *, now: datetime, hold: float, limit: int = 20, only: Collection[str] | None = None
    ) -> list[Delivery]:
        """Pending deliveries whose next try is due, oldest first, taken for `hold` seconds (no other process
        finds them due while their POST is under way; one whose process dies is due again after that). None
        unless `holder` holds the lease. `only`: just those to these targets (the command line sends only to the
        URLs it knows, and leaves the others to the server)."""
        among, among_params = "", _NO_PARAMS
        if only is not None:
            among_params = tuple(only) or ("-",)  # no target: matches none
            among = f" AND target IN ({', '.join('?' * len(among_params))})"
        with self.database.transaction(write=False) as conn:
            found = self._x(
                conn,
                f"SELECT 1 FROM deploy_hook_deliveries WHERE state = 'pending' AND next_attempt_at <= ?{among} LIMIT 1",
                (to_micros(now), *among_params),
            ).fetchone()
        if found is None:
            return []  # nothing to write: most ticks end here
        with self.database.transaction(write=True) as conn:
            if not self._holds(conn, holder, now):
                return []
            rows = self._x(
                conn,
                f"SELECT {_DELIVERY} FROM deploy_hook_deliveries d WHERE d.state = 'pending' AND d.next_attempt_at <= ?"
                f"{among.replace('target', 'd.target')} ORDER BY d.next_attempt_at, d.delivery LIMIT ?{self.database.for_update}",
                (to_micros(now), *among_params, limit),
            ).fetchall()
            taken = [_delivery(row) for row in rows]
            for delivery in taken:
                self._x(
                    conn,
                    "UPDATE deploy_hook_deliveries SET next_attempt_at = ? WHERE delivery = ? AND target = ?",
                    (to_micros(now + timedelta(seconds=hold)), delivery.id, delivery.target),
                )
        return taken

    def payload(self, delivery: Delivery) -> tuple[list[Reason], int, datetime]:
        """What a delivery's POST lists: its first MAX_REASONS reasons (those of the deliveries it superseded
        included) in the order recorded, how many more there are, and when the first change was."""
        where = _CHANGES_OF.format(d="d")
        params = (delivery.id, delivery.target)
        with self.database.transaction(write=False) as conn:
            rows = self._x(
                conn,
                f"SELECT c.reason FROM deploy_hook_changes c, (SELECT CAST(? AS TEXT) AS delivery, CAST(? AS TEXT) AS target) d WHERE {where}"
                " ORDER BY c.id LIMIT ?",
                (*params, MAX_REASONS),
            ).fetchall()
            (total,) = self._x(
                conn,
                f"SELECT COUNT(*) FROM deploy_hook_changes c, (SELECT CAST(? AS TEXT) AS delivery, CAST(? AS TEXT) AS target) d WHERE {where}",
                params,
            ).fetchone()
        reasons = [_reason_decoder.decode(reason) for (reason,) in rows]
        return reasons, total - len(reasons), delivery.first_change_at

    def retarget(self, delivery: Delivery, *, targets: Iterable[Target], now: datetime) -> None:
        """A delivery to a URL no longer configured (DEPLOY_HOOK_URLS changed): the URLs configured now that it
        has no row for get one, due now, so its changes still reach the site. Then the old row can be given up."""
        with self.database.transaction(write=True) as conn:
            for target in targets:
                self._x(
                    conn,
                    "INSERT INTO deploy_hook_deliveries (delivery, target, host, state, attempts, created_at, first_change_at,"
                    " next_attempt_at) VALUES (?, ?, ?, 'pending', 0, ?, ?, ?) ON CONFLICT (delivery, target) DO NOTHING",
                    (delivery.id, target.id, target.host, to_micros(now), to_micros(delivery.first_change_at), to_micros(now)),
                )

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
                    to_micros(next_attempt_at or now),
                    None if state == "pending" else to_micros(now),
                    delivery.id,
                    delivery.target,
                ),
            )

    def prune(self, *, now: datetime) -> None:
        """Forget deliveries finished more than KEEP_FINISHED ago, and their changes."""
        before = to_micros(now - KEEP_FINISHED)
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
                (to_micros(now), to_micros(now)),
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
                (to_micros(now - timedelta(hours=24)),),
            ).fetchone()
            (waiting,) = self._x(conn, "SELECT COUNT(*) FROM deploy_hook_changes WHERE delivery IS NULL").fetchone()
            holder, until = self._x(conn, "SELECT lease_holder, lease_until FROM deploy_hook_sender WHERE id = 1").fetchone()
            problem = self._x(
                conn,
                "SELECT host, target, last_outcome FROM deploy_hook_deliveries WHERE last_outcome IS NOT NULL"
                " AND state IN ('pending', 'failed') ORDER BY next_attempt_at DESC LIMIT 1",
            ).fetchone()
        return OutboxStatus(
            int(pending),
            int(retrying),
            int(failed),
            int(waiting),
            from_micros(delivered_at) if delivered_at is not None else None,
            holder if holder is not None and until > to_micros(now) else None,
            f"{label(problem[0], problem[1])}: {problem[2]}" if problem else None,
        )
