"""Where announcements live: their SQL over `service.database`, the same on SQLite and PostgreSQL.

Every method blocks; endpoints call them through `Announcements.call`, in a worker thread, only. Times are
integer microseconds since the epoch, UTC. Writes are one transaction each, so a failed request writes
nothing. The tables are `service.announcements.schema`'s migrations.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime
from typing import Any, NamedTuple

import msgspec

from service.announcements.models import (
    Announcement,
    AnnouncementPatch,
    Cursor,
    NewAnnouncement,
    from_micros,
    new_announcement,
    patched,
    to_micros,
)
from service.database import READINESS_TIMEOUT, Database, open_database
from service.errors import NotFound, PreconditionFailed

MAX_ID = 2**63 - 1

_COLUMNS = "id, title, body, tags, pinned, published_at, expires_at, created_at, updated_at"
_tags_decoder = msgspec.json.Decoder(list[str])


class Changes(NamedTuple):
    """What a read cache needs to know about the table: how many writes it has seen, and the next time
    after `now` that an announcement is published or expires (None if none is scheduled)."""

    counter: int
    next_boundary: datetime | None


def open_store(database_url: str, *, pool_size: int = 5) -> AnnouncementStore:
    """The store on the database DATABASE_URL names (not yet opened), every package's migrations registered."""
    return AnnouncementStore(open_database(database_url, pool_size=pool_size))


class AnnouncementStore:
    """Announcements on one `Database`. `open`, `close`, `migrate` and `readiness` are the database's: the
    store is what the app's lifespan opens and closes it through."""

    def __init__(self, database: Database) -> None:
        self.database = database
        self.kind = database.kind

    def open(self) -> None:
        self.database.open()

    def close(self) -> None:
        self.database.close()

    def migrate(self) -> list[int]:
        return self.database.migrate()

    def readiness(self) -> tuple[bool, str]:
        return self.database.readiness()

    # -- announcements --------------------------------------------------------------------------

    def create(self, data: NewAnnouncement, *, now: datetime) -> Announcement:
        draft = new_announcement(data, id=0, now=now)
        with self.database.transaction(write=True) as conn:
            row = self.database.execute(
                conn,
                "INSERT INTO announcements (title, body, tags, pinned, published_at, expires_at, created_at, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
                self._values(draft),
            ).fetchone()
            self._count_change(conn)
        return msgspec.structs.replace(draft, id=row[0])

    def get(self, id: int) -> Announcement | None:
        if not 0 < id <= MAX_ID:
            return None
        with self.database.transaction(write=False) as conn:
            row = self.database.execute(conn, f"SELECT {_COLUMNS} FROM announcements WHERE id = ?", (id,)).fetchone()
        return _announcement(row) if row else None

    def list(self, *, now: datetime, limit: int, tag: str | None, include_all: bool, after: Cursor | None) -> list[Announcement]:
        where: list[str] = []
        params: list[Any] = []
        if not include_all:
            now_us = to_micros(now)
            where.append("published_at <= ? AND (expires_at IS NULL OR expires_at > ?)")
            params += [now_us, now_us]
        if tag is not None:
            where.append("tags LIKE ?")  # tags are [a-z0-9-], so the quoted JSON string is an exact match
            params.append(f'%"{tag}"%')
        if after is not None:
            where.append("(pinned < ? OR (pinned = ? AND (published_at < ? OR (published_at = ? AND id < ?))))")
            params += [after.pinned, after.pinned, after.published_at_us, after.published_at_us, after.id]
        statement = f"SELECT {_COLUMNS} FROM announcements"
        if where:
            statement += " WHERE " + " AND ".join(where)
        statement += " ORDER BY pinned DESC, published_at DESC, id DESC LIMIT ?"
        with self.database.transaction(write=False) as conn:
            rows = self.database.execute(conn, statement, (*params, limit)).fetchall()
        return [_announcement(row) for row in rows]

    def update(self, id: int, patch: AnnouncementPatch, *, now: datetime, if_match: Collection[str] | None) -> Announcement:
        with self.database.transaction(write=True) as conn:
            current = self._locked(conn, id, if_match)
            result = patched(current, patch, now=now)
            if result is current:
                return current  # nothing changed: no write, same ETag
            self.database.execute(
                conn,
                "UPDATE announcements SET title = ?, body = ?, tags = ?, pinned = ?, published_at = ?, expires_at = ?,"
                " created_at = ?, updated_at = ? WHERE id = ?",
                (*self._values(result), id),
            )
            self._count_change(conn)
        return result

    def delete(self, id: int, *, if_match: Collection[str] | None) -> None:
        with self.database.transaction(write=True) as conn:
            self._locked(conn, id, if_match)
            self.database.execute(conn, "DELETE FROM announcements WHERE id = ?", (id,))
            self._count_change(conn)

    def _count_change(self, conn: Any) -> None:
        """Inside the write's transaction, after its own statements: the counter changes if and only if
        the write commits, and every writer locks the announcement row (if any) before the counter row."""
        self.database.execute(conn, "UPDATE announcement_changes SET counter = counter + 1")

    def changes(self, *, now: datetime) -> Changes:
        now_us = to_micros(now)
        with self.database.transaction(write=False, timeout=READINESS_TIMEOUT) as conn:  # polled every second: fail fast
            counter, published, expires = self.database.execute(
                conn,
                "SELECT (SELECT counter FROM announcement_changes),"
                " (SELECT MIN(published_at) FROM announcements WHERE published_at > ?),"
                " (SELECT MIN(expires_at) FROM announcements WHERE expires_at > ?)",
                (now_us, now_us),
            ).fetchone()
        times = [from_micros(t) for t in (published, expires) if t is not None]
        return Changes(counter, min(times) if times else None)

    def _locked(self, conn: Any, id: int, if_match: Collection[str] | None) -> Announcement:
        """The current row, locked until the transaction ends (SQLite: BEGIN IMMEDIATE; PostgreSQL: FOR UPDATE),
        checked against the ETags the caller's If-Match accepts (None: no precondition). Two editors with the same
        If-Match: the second gets 412."""
        if not 0 < id <= MAX_ID:
            raise NotFound(f"No announcement {id}.")
        row = self.database.execute(
            conn, f"SELECT {_COLUMNS} FROM announcements WHERE id = ?{self.database.for_update}", (id,)
        ).fetchone()
        if row is None:
            raise NotFound(f"No announcement {id}.")
        current = _announcement(row)
        if if_match is not None and current.etag not in if_match:
            raise PreconditionFailed(f"If-Match does not match the current version {current.etag}; fetch it again.")
        return current

    @staticmethod
    def _values(a: Announcement) -> tuple[Any, ...]:
        return (
            a.title,
            a.body,
            msgspec.json.encode(a.tags).decode(),
            a.pinned,
            to_micros(a.published_at),
            to_micros(a.expires_at) if a.expires_at else None,
            to_micros(a.created_at),
            to_micros(a.updated_at),
        )


def _announcement(row: tuple[Any, ...]) -> Announcement:
    id, title, body, tags, pinned, published_at, expires_at, created_at, updated_at = row
    return Announcement(
        id=id,
        title=title,
        body=body,
        tags=_tags_decoder.decode(tags),
        pinned=bool(pinned),
        published_at=from_micros(published_at),
        expires_at=from_micros(expires_at) if expires_at is not None else None,
        created_at=from_micros(created_at),
        updated_at=from_micros(updated_at),
    )
