"""Where announcements live: their SQL over `service.database`, the same on SQLite and PostgreSQL.

Every method blocks; endpoints call them through `Announcements.call`, in a worker thread, only. Times are
integer microseconds since the epoch, UTC. Writes are one transaction each, so a failed request writes
nothing. The tables are `service.announcements.schema`'s migrations.
"""

from __future__ import annotations

import functools
from collections.abc import Collection, Sequence
from datetime import datetime
from typing import Any, Literal, NamedTuple

import msgspec

from service.announcements.models import (
    Announcement,
    AnnouncementPatch,
    Cursor,
    NewAnnouncement,
    new_announcement,
    patched,
)
from service.announcements.slugs import fallback_slug, first_free, slugify
from service.database import READINESS_TIMEOUT, Database, from_micros, open_database, to_micros
from service.errors import Conflict, InvalidInput, NotFound, PreconditionFailed
from service.hooks.outbox import DeployOutbox, Family, Reason, ReasonKind

MAX_ID = 2**63 - 1

_COLUMNS = "id, slug, title, summary, body, body_html, tags, pinned, published_at, expires_at, created_at, updated_at"
_SEARCH_COLUMNS = ", ".join(f"a.{name}" for name in _COLUMNS.split(", "))  # joined with the search index
_PENDING_SLUG = "-pending"  # outside the slug pattern, so no client's slug: held while the id is not yet known
_tags_decoder = msgspec.json.Decoder(list[str])


class Changes(NamedTuple):
    """What a read cache needs to know about the table: how many writes it has seen, and the next time
    after `now` that an announcement is published or expires (None if none is scheduled)."""

    counter: int
    next_boundary: datetime | None


class Upserted(NamedTuple):
    action: Literal["created", "updated", "unchanged"]
    announcement: Announcement


class Refused(Exception):
    """An item of an `upsert` was refused (a slug clash, an expiry before publishing): nothing was written."""

    def __init__(self, index: int, error: Conflict | InvalidInput) -> None:
        super().__init__(error.detail)
        self.index = index
        self.error = error


class _DryRun(Exception):
    """Raised inside the transaction to roll a dry run back."""


def open_store(database_url: str, *, pool_size: int = 5, hook_events: tuple[Family, ...] | None = None) -> AnnouncementStore:
    """The store on the database DATABASE_URL names (not yet opened), every package's migrations registered;
    with `hook_events` (deploy hooks on), its writes record deploy-hook changes."""
    database = open_database(database_url, pool_size=pool_size)
    outbox = DeployOutbox(database, events=hook_events) if hook_events else None
    return AnnouncementStore(database, outbox=outbox)


def public_change(before: Announcement | None, after: Announcement | None, *, now: datetime) -> Reason | None:
    """What a write changed on the public site (None: nothing, as when a draft stays a draft)."""
    was = before is not None and before.is_public(now)
    shown = after is not None and after.is_public(now)
    if not (was or shown):
        return None
    kind: ReasonKind
    if was and shown:
        kind = "announcement.updated"
    elif shown:
        kind = "announcement.published"
    else:
        kind = "announcement.deleted" if after is None else "announcement.unpublished"
    subject = after or before
    assert subject is not None
    return Reason(kind=kind, id=subject.id, slug=subject.slug, at=now)


class AnnouncementStore:
    """Announcements on one `Database`. `open`, `close`, `migrate` and `readiness` are the database's: the
    store is what the app's lifespan opens and closes it through."""

    def __init__(self, database: Database, *, outbox: DeployOutbox | None = None) -> None:
        self.database = database
        self.kind = database.kind
        # Deploy hooks on (for announcements): each write that changes the public site records why, in its transaction.
        self.outbox = outbox if outbox is not None and outbox.wants("announcements") else None

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
        with self.database.transaction(write=True) as conn:
            # The counter row first: creates take turns, so two cannot pick the same free slug at once.
            self._count_change(conn)
            return self._insert(conn, data, now=now)

    def _insert(self, conn: Any, data: NewAnnouncement, *, now: datetime) -> Announcement:
        wanted = data.slug if isinstance(data.slug, str) else slugify(data.title)
        draft = new_announcement(data, id=0, slug=wanted or _PENDING_SLUG, now=now)
        if isinstance(data.slug, str):
            self._check_free(conn, data.slug)
        elif wanted:
            draft = msgspec.structs.replace(draft, slug=first_free(wanted, functools.partial(self._taken, conn)))
        row = self._write(
            conn,
            "INSERT INTO announcements (slug, title, summary, body, body_html, tags, pinned, published_at, expires_at,"
            " created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
            self._values(draft),
        ).fetchone()
        draft = msgspec.structs.replace(draft, id=row[0])
        if not wanted:  # nothing Latin in the title: named after its id
            slug = first_free(fallback_slug(draft.id), functools.partial(self._taken, conn))
            self.database.execute(conn, "UPDATE announcements SET slug = ? WHERE id = ?", (slug, draft.id))
            draft = msgspec.structs.replace(draft, slug=slug)
        self._record(conn, None, draft, now=now)
        return draft

    def upsert(self, items: list[NewAnnouncement], *, now: datetime, dry_run: bool = False) -> list[Upserted]:
        """Each item (all with a slug) created, or its announcement of that slug updated to it, all in one
        transaction: if one is refused (`Refused`, naming its index) nothing is written. A time an item leaves
        out keeps the stored one; a body that differs only in surrounding white space is not a change (files
        end with a newline). `dry_run` answers the same and writes nothing."""
        done: list[Upserted] = []
        try:
            with self.database.transaction(write=True) as conn:
                self._count_change(conn)  # as `create`: first, so slugs are picked in turn
                for index, data in enumerate(items):
                    try:
                        done.append(self._upsert_one(conn, data, now=now))
                    except (Conflict, InvalidInput) as exc:
                        raise Refused(index, exc) from None
                if dry_run:
                    raise _DryRun
        except _DryRun:
            pass
        return done

    def _upsert_one(self, conn: Any, data: NewAnnouncement, *, now: datetime) -> Upserted:
        if not isinstance(data.slug, str):
            raise TypeError("upsert needs every item's slug")
        row = self.database.execute(
            conn, f"SELECT {_COLUMNS} FROM announcements WHERE slug = ?{self.database.for_update}", (data.slug,)
        ).fetchone()
        if row is None:
            return Upserted("created", self._insert(conn, data, now=now))
        current = _announcement(row)
        patch = AnnouncementPatch(
            title=data.title,
            body=current.body if current.body.strip() == data.body.strip() else data.body,
            summary=data.summary,
            tags=data.tags,
            pinned=data.pinned,
            published_at=data.published_at,
            expires_at=data.expires_at,
        )
        result = self._apply(conn, current, patch, now=now)
        return Upserted("unchanged" if result is current else "updated", result)

    def _taken(self, conn: Any, slug: str) -> bool:
        return self.database.execute(conn, "SELECT 1 FROM announcements WHERE slug = ?", (slug,)).fetchone() is not None

    def _check_free(self, conn: Any, slug: str) -> None:
        if self._taken(conn, slug):
            raise Conflict(f"The slug {slug!r} is taken by another announcement.")

    def _write(self, conn: Any, statement: str, params: tuple[Any, ...]) -> Any:
        """A statement that may break the slug's UNIQUE index (a write racing ours took it): 409, not 500."""
        try:
            return self.database.execute(conn, statement, params)
        except self.database.unique_violation_errors:
            raise Conflict(f"The slug {params[0]!r} is taken by another announcement.") from None

    def get(self, id: int) -> Announcement | None:
        if not 0 < id <= MAX_ID:
            return None
        with self.database.transaction(write=False) as conn:
            row = self.database.execute(conn, f"SELECT {_COLUMNS} FROM announcements WHERE id = ?", (id,)).fetchone()
        return _announcement(row) if row else None

    def get_by_slug(self, slug: str) -> Announcement | None:
        with self.database.transaction(write=False) as conn:
            row = self.database.execute(conn, f"SELECT {_COLUMNS} FROM announcements WHERE slug = ?", (slug,)).fetchone()
        return _announcement(row) if row else None

    def search(self, words: list[str], *, now: datetime, limit: int, tag: str | None, include_all: bool) -> list[Announcement]:
        """Announcements with every one of `words` in their title, summary or body, best matches first (a word in
        the title counts most, then the summary), each database's full-text index doing the work."""
        where, params = self._filters(now=now, tag=tag, include_all=include_all)
        if self.database.dialect == "sqlite":
            statement = (
                f"SELECT {_SEARCH_COLUMNS} FROM announcements_search JOIN announcements a ON a.id = announcements_search.rowid"
                " WHERE announcements_search MATCH ?"
                + "".join(f" AND {condition}" for condition in where)
                + " ORDER BY bm25(announcements_search, 10.0, 4.0, 1.0), a.id DESC LIMIT ?"
            )
            # Each word quoted: a phrase of one token, so no query syntax (AND, NEAR, *, ") reaches FTS5.
            match = " ".join(f'"{word}"' for word in words)
        else:
            statement = (
                f"SELECT {_SEARCH_COLUMNS} FROM announcements a, to_tsquery('simple', ?) query WHERE a.search @@ query"
                + "".join(f" AND {condition}" for condition in where)
                + " ORDER BY ts_rank(a.search, query) DESC, a.id DESC LIMIT ?"
            )
            # Each word quoted as a tsquery lexeme, joined by AND: nothing of the user's text is syntax.
            match = " & ".join("'" + word.replace("'", "''") + "'" for word in words)
        with self.database.transaction(write=False) as conn:
            rows = self.database.execute(conn, statement, (match, *params, limit)).fetchall()
        return [_announcement(row) for row in rows]

    @staticmethod
    def _filters(*, now: datetime, tag: str | None, include_all: bool) -> tuple[list[str], list[Any]]:
        where: list[str] = []
        params: list[Any] = []
        if not include_all:
            now_us = to_micros(now)
            where.append("published_at <= ? AND (expires_at IS NULL OR expires_at > ?)")
            params += [now_us, now_us]
        if tag is not None:
            where.append("tags LIKE ?")  # tags are [a-z0-9-], so the quoted JSON string is an exact match
            params.append(f'%"{tag}"%')
        return where, params

    def newest(self, *, now: datetime, limit: int, tag: str | None) -> list[Announcement]:
        """The newest public announcements, pinned or not (what a feed holds)."""
        where, params = self._filters(now=now, tag=tag, include_all=False)
        statement = (
            f"SELECT {_COLUMNS} FROM announcements WHERE {' AND '.join(where)} ORDER BY published_at DESC, id DESC LIMIT ?"
        )
        with self.database.transaction(write=False) as conn:
            rows = self.database.execute(conn, statement, (*params, limit)).fetchall()
        return [_announcement(row) for row in rows]

    def list(self, *, now: datetime, limit: int, tag: str | None, include_all: bool, after: Cursor | None) -> list[Announcement]:
        where, params = self._filters(now=now, tag=tag, include_all=include_all)
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
            return self._apply(conn, self._locked(conn, id, if_match), patch, now=now)

    def _apply(self, conn: Any, current: Announcement, patch: AnnouncementPatch, *, now: datetime) -> Announcement:
        result = patched(current, patch, now=now)
        if result is current:
            return current  # nothing changed: no write, same ETag
        if result.slug != current.slug:
            self._check_free(conn, result.slug)
        self._write(
            conn,
            "UPDATE announcements SET slug = ?, title = ?, summary = ?, body = ?, body_html = ?, tags = ?, pinned = ?,"
            " published_at = ?, expires_at = ?, created_at = ?, updated_at = ? WHERE id = ?",
            (*self._values(result), current.id),
        )
        self._count_change(conn)
        self._record(conn, current, result, now=now)
        return result

    def delete(self, id: int, *, if_match: Collection[str] | None, now: datetime) -> None:
        with self.database.transaction(write=True) as conn:
            current = self._locked(conn, id, if_match)
            self.database.execute(conn, "DELETE FROM announcements WHERE id = ?", (id,))
            self._count_change(conn)
            self._record(conn, current, None, now=now)

    def _record(self, conn: Any, before: Announcement | None, after: Announcement | None, *, now: datetime) -> None:
        if self.outbox is not None and (reason := public_change(before, after, now=now)) is not None:
            self.outbox.record(conn, reason)

    def record_scheduled(self, *, now: datetime) -> int:
        """Deploy hooks: record each announcement whose scheduled `published_at` or `expires_at` passed since the
        last look (no write happened then, so nothing was recorded), once each. How many were recorded. Looks
        before it writes: an idle tick writes only to move the mark on, every few seconds."""
        if self.outbox is None:
            return 0
        with self.database.transaction(write=False) as conn:
            since, mark_due = self.outbox.scheduled_since(conn, now)
            passed = self._passed(conn, to_micros(since), to_micros(now))
            known = self.outbox.known(conn, (key for _, key in passed))
        passed = [(reason, key) for reason, key in passed if key not in known]
        if not (passed or mark_due):
            return 0
        recorded = 0
        with self.database.transaction(write=True) as conn:
            for reason, key in passed:
                recorded += self.outbox.record(conn, reason, key=key)
            self.outbox.mark_scheduled(conn, now)
        return recorded

    def _passed(self, conn: Any, since: int, until: int) -> Sequence[tuple[Reason, str]]:
        """Scheduled times in (since, until], with the change key that records each once."""
        # Became public at published_at: it was last written before then, and did not expire at once.
        published = self.database.execute(
            conn,
            f"SELECT {_COLUMNS} FROM announcements WHERE published_at > ? AND published_at <= ?"
            " AND updated_at < published_at AND (expires_at IS NULL OR expires_at > published_at)",
            (since, until),
        ).fetchall()
        # Left the site at expires_at: it was public before then, and not written since.
        expired = self.database.execute(
            conn,
            f"SELECT {_COLUMNS} FROM announcements WHERE expires_at > ? AND expires_at <= ?"
            " AND updated_at < expires_at AND published_at < expires_at",
            (since, until),
        ).fetchall()
        passed = []
        for item in map(_announcement, published):
            reason = Reason(kind="announcement.published", id=item.id, slug=item.slug, at=item.published_at)
            passed.append((reason, f"published:{item.id}:{to_micros(item.published_at)}"))
        for item in map(_announcement, expired):
            assert item.expires_at is not None
            reason = Reason(kind="announcement.expired", id=item.id, slug=item.slug, at=item.expires_at)
            passed.append((reason, f"expired:{item.id}:{to_micros(item.expires_at)}"))
        return passed

    def _count_change(self, conn: Any) -> None:
        """Inside the write's transaction: the counter changes if and only if the write commits. Every writer
        locks the announcement row (if any) before the counter row; a create, which locks no row, takes it first."""
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
            a.slug,
            a.title,
            a.summary,
            a.body,
            a.body_html,
            msgspec.json.encode(a.tags).decode(),
            a.pinned,
            to_micros(a.published_at),
            to_micros(a.expires_at) if a.expires_at else None,
            to_micros(a.created_at),
            to_micros(a.updated_at),
        )


def _announcement(row: tuple[Any, ...]) -> Announcement:
    id, slug, title, summary, body, body_html, tags, pinned, published_at, expires_at, created_at, updated_at = row
    return Announcement(
        id=id,
        slug=slug,
        title=title,
        summary=summary,
        body=body,
        body_html=body_html,
        tags=_tags_decoder.decode(tags),
        pinned=bool(pinned),
        published_at=from_micros(published_at),
        expires_at=from_micros(expires_at) if expires_at is not None else None,
        created_at=from_micros(created_at),
        updated_at=from_micros(updated_at),
    )
