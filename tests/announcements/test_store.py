"""The same store suite on SQLite and on a real PostgreSQL server."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import msgspec
import pytest

from service.announcements.models import AnnouncementPatch, NewAnnouncement, decode_cursor, encode_cursor
from service.announcements.store import AnnouncementStore, open_store
from service.database import DatabaseUnavailable
from service.errors import InvalidInput, NotFound, PreconditionFailed

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


@pytest.fixture
def store(database_url: str) -> Iterator[AnnouncementStore]:
    store = open_store(database_url, pool_size=4)
    store.open()
    store.migrate()
    try:
        yield store
    finally:
        store.close()


def new(title: str = "Hello", **fields: object) -> NewAnnouncement:
    return msgspec.convert({"title": title, "body": "Some *Markdown*.", **fields}, NewAnnouncement)


def test_migrations_are_versioned_and_idempotent(database_url: str) -> None:
    store = open_store(database_url, pool_size=2)
    store.open()
    try:
        with pytest.raises(DatabaseUnavailable, match="migrate"):
            store.readiness()
        assert store.migrate() == [1, 2, 3, 4] == [m.version for m in store.database.migrations]
        assert store.migrate() == []
        assert store.readiness() == (True, f"{store.kind}, schema version 4")
    finally:
        store.close()


def test_create_and_get_round_trip(store: AnnouncementStore) -> None:
    created = store.create(
        new(tags=["talks", "python", "talks"], pinned=True, published_at="2026-11-20T10:00:00+02:00",
            expires_at="2026-12-01T00:00:00Z"),
        now=NOW,
    )  # fmt: skip
    assert created.id > 0
    assert created.tags == ["talks", "python"]
    assert created.published_at == datetime(2026, 11, 20, 8, 0, tzinfo=UTC)
    assert created.created_at == created.updated_at == NOW
    assert store.get(created.id) == created
    assert store.get(created.id + 1000) is None
    assert store.get(2**70) is None and store.get(0) is None


def test_published_defaults_to_now_and_expiry_must_follow_it(store: AnnouncementStore) -> None:
    assert store.create(new(), now=NOW).published_at == NOW
    with pytest.raises(InvalidInput) as caught:
        store.create(new(published_at="2026-11-23T12:00:00Z", expires_at="2026-11-23T11:00:00Z"), now=NOW)
    assert caught.value.errors[0].field == "expires_at"
    assert len(store.list(now=NOW, limit=10, tag=None, include_all=True, after=None)) == 1


def test_public_list_hides_scheduled_and_expired_and_orders_pinned_then_newest(store: AnnouncementStore) -> None:
    old = store.create(new("old", published_at="2026-11-01T00:00:00Z"), now=NOW)
    recent = store.create(new("recent", published_at="2026-11-22T00:00:00Z"), now=NOW)
    pinned_old = store.create(new("pinned", pinned=True, published_at="2026-10-01T00:00:00Z"), now=NOW)
    store.create(new("scheduled", published_at="2026-12-24T00:00:00Z"), now=NOW)
    store.create(new("expired", published_at="2026-10-31T00:00:00Z", expires_at="2026-11-02T00:00:00Z"), now=NOW)
    public = store.list(now=NOW, limit=10, tag=None, include_all=False, after=None)
    assert [a.title for a in public] == ["pinned", "recent", "old"]
    assert [a.id for a in public] == [pinned_old.id, recent.id, old.id]
    everything = store.list(now=NOW, limit=10, tag=None, include_all=True, after=None)
    assert [a.title for a in everything] == ["pinned", "scheduled", "recent", "old", "expired"]


def test_tag_filter_matches_whole_tags_only(store: AnnouncementStore) -> None:
    store.create(new("a", tags=["py"]), now=NOW)
    store.create(new("b", tags=["python", "talks"]), now=NOW)
    assert [a.title for a in store.list(now=NOW, limit=10, tag="py", include_all=False, after=None)] == ["a"]
    assert [a.title for a in store.list(now=NOW, limit=10, tag="talks", include_all=False, after=None)] == ["b"]


def test_keyset_pages_cover_everything_once_in_order(store: AnnouncementStore) -> None:
    for i in range(25):
        store.create(new(f"n{i}", pinned=i % 7 == 0, published_at=(NOW - timedelta(hours=i % 5)).isoformat()), now=NOW)
    expected = [a.id for a in store.list(now=NOW, limit=100, tag=None, include_all=False, after=None)]
    seen: list[int] = []
    cursor = None
    while True:
        page = store.list(now=NOW, limit=10, tag=None, include_all=False, after=cursor)
        seen += [a.id for a in page]
        if len(page) < 10:
            break
        cursor = decode_cursor(encode_cursor(page[-1]))
    assert seen == expected and len(seen) == 25


def test_partial_update_changes_only_given_fields(store: AnnouncementStore) -> None:
    created = store.create(new(tags=["a"], expires_at="2027-01-01T00:00:00Z"), now=NOW)
    later = NOW + timedelta(minutes=5)
    patch = msgspec.convert({"title": "Changed", "expires_at": None}, AnnouncementPatch)
    updated = store.update(created.id, patch, now=later, if_match={created.etag})
    assert (updated.title, updated.body, updated.tags, updated.expires_at) == ("Changed", created.body, ["a"], None)
    assert updated.updated_at == later and updated.created_at == NOW
    assert updated.etag != created.etag
    assert store.get(created.id) == updated


def test_update_with_stale_if_match_is_refused_and_writes_nothing(store: AnnouncementStore) -> None:
    created = store.create(new(), now=NOW)
    store.update(created.id, AnnouncementPatch(pinned=True), now=NOW + timedelta(seconds=1), if_match=None)
    current = store.get(created.id)
    with pytest.raises(PreconditionFailed):
        store.update(created.id, AnnouncementPatch(title="lost"), now=NOW + timedelta(seconds=2), if_match={created.etag})
    assert store.get(created.id) == current


def test_invalid_update_writes_nothing(store: AnnouncementStore) -> None:
    created = store.create(new(published_at="2026-11-20T00:00:00Z"), now=NOW)
    patch = msgspec.convert({"title": "x", "expires_at": "2026-11-19T00:00:00Z"}, AnnouncementPatch)
    with pytest.raises(InvalidInput):
        store.update(created.id, patch, now=NOW, if_match=None)
    assert store.get(created.id) == created


def test_update_and_delete_of_missing_announcement_is_not_found(store: AnnouncementStore) -> None:
    with pytest.raises(NotFound):
        store.update(12345, AnnouncementPatch(pinned=True), now=NOW, if_match=None)
    with pytest.raises(NotFound):
        store.delete(12345, if_match=None)


def test_delete_removes_and_honours_if_match(store: AnnouncementStore) -> None:
    created = store.create(new(), now=NOW)
    with pytest.raises(PreconditionFailed):
        store.delete(created.id, if_match={'"not-it"'})
    store.delete(created.id, if_match={created.etag})
    assert store.get(created.id) is None


def test_concurrent_updates_with_the_same_if_match_exactly_one_wins(store: AnnouncementStore) -> None:
    created = store.create(new(), now=NOW)
    outcomes: list[str] = []
    start = threading.Barrier(8)

    def editor(n: int) -> None:
        start.wait()
        try:
            store.update(
                created.id, AnnouncementPatch(title=f"editor {n}"), now=NOW + timedelta(seconds=1), if_match={created.etag}
            )
            outcomes.append("won")
        except PreconditionFailed:
            outcomes.append("412")

    threads = [threading.Thread(target=editor, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert sorted(outcomes) == ["412"] * 7 + ["won"]


def test_unreachable_postgres_is_store_unavailable() -> None:
    store = open_store("postgresql://nobody@127.0.0.1:1/none?sslmode=disable&connect_timeout=1", pool_size=1)
    store.open()
    try:
        with pytest.raises(DatabaseUnavailable):
            store.get(1)
        with pytest.raises(DatabaseUnavailable, match="postgresql"):
            store.readiness()
    finally:
        store.close()
