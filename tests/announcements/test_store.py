"""The same store suite on SQLite and on a real PostgreSQL server."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec
import pytest

from service.announcements.models import AnnouncementPatch, NewAnnouncement, decode_cursor, encode_cursor, search_words
from service.announcements.schema import MIGRATIONS
from service.announcements.store import AnnouncementStore, open_store
from service.database import DatabaseUnavailable, open_database
from service.errors import Conflict, InvalidInput, NotFound, PreconditionFailed

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
        versions = [m.version for m in store.database.migrations]
        assert {1, 2, 3, 4, 5} <= set(versions)  # other packages may add theirs
        assert store.migrate() == versions == sorted(versions)
        assert store.migrate() == []
        assert store.readiness() == (True, f"{store.kind}, schema version {versions[-1]}")
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
        store.delete(12345, if_match=None, now=NOW)


def test_delete_removes_and_honours_if_match(store: AnnouncementStore) -> None:
    created = store.create(new(), now=NOW)
    with pytest.raises(PreconditionFailed):
        store.delete(created.id, if_match={'"not-it"'}, now=NOW)
    store.delete(created.id, if_match={created.etag}, now=NOW)
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


# -- slugs, summary and the rendered body ------------------------------------------------------


def test_slug_is_made_from_the_title_in_ascii(store: AnnouncementStore) -> None:
    created = store.create(new("Håndtering av blokkerende kode"), now=NOW)
    assert created.slug == "handtering-av-blokkerende-kode"
    assert store.get_by_slug("handtering-av-blokkerende-kode") == created == store.get(created.id)
    assert store.create(new("Ærlig talt: øl på Straße"), now=NOW).slug == "aerlig-talt-ol-pa-strasse"
    assert store.get_by_slug("no-such-slug") is None


def test_title_with_nothing_latin_is_named_after_its_id(store: AnnouncementStore) -> None:
    created = store.create(new("新年快乐"), now=NOW)
    assert created.slug == f"announcement-{created.id}"
    assert store.get_by_slug(created.slug) == created


def test_slug_clashes_get_a_number(store: AnnouncementStore) -> None:
    slugs = [store.create(new("Release notes"), now=NOW).slug for _ in range(3)]
    assert slugs == ["release-notes", "release-notes-2", "release-notes-3"]
    long = store.create(new("word " * 40), now=NOW).slug
    again = store.create(new("word " * 40), now=NOW).slug
    assert len(long) <= 80 and len(again) <= 80 and again.endswith("-2") and again != long


def test_given_slug_is_kept_and_a_taken_one_is_409_writing_nothing(store: AnnouncementStore) -> None:
    first = store.create(new("Anything", slug="my-post"), now=NOW)
    assert first.slug == "my-post"
    with pytest.raises(Conflict):
        store.create(new("Other", slug="my-post"), now=NOW)
    assert len(store.list(now=NOW, limit=10, tag=None, include_all=True, after=None)) == 1


def test_slug_changed_by_patch_and_a_clash_is_409(store: AnnouncementStore) -> None:
    a = store.create(new("Alpha"), now=NOW)
    b = store.create(new("Beta"), now=NOW)
    renamed = store.update(a.id, AnnouncementPatch(slug="first"), now=NOW + timedelta(seconds=1), if_match=None)
    assert renamed.slug == "first" and store.get_by_slug("alpha") is None and store.get_by_slug("first") == renamed
    with pytest.raises(Conflict):
        store.update(b.id, AnnouncementPatch(slug="first", title="x"), now=NOW + timedelta(seconds=2), if_match=None)
    assert store.get(b.id) == b
    retitled = store.update(b.id, AnnouncementPatch(title="Gamma"), now=NOW + timedelta(seconds=3), if_match=None)
    assert retitled.slug == "beta"  # a slug is a URL: a new title does not move it


def test_summary_is_stored_and_patched(store: AnnouncementStore) -> None:
    created = store.create(new(summary="Short."), now=NOW)
    assert created.summary == "Short." and store.create(new("b"), now=NOW).summary == ""
    updated = store.update(created.id, AnnouncementPatch(summary="Shorter."), now=NOW + timedelta(seconds=1), if_match=None)
    assert store.get(created.id) == updated and updated.summary == "Shorter."


def test_body_html_is_rendered_on_write_and_stored(store: AnnouncementStore) -> None:
    created = store.create(new(body="About **async** Python."), now=NOW)
    assert created.body_html == "<p>About <strong>async</strong> Python.</p>\n"
    assert store.get(created.id) == created
    updated = store.update(created.id, AnnouncementPatch(body="~~old~~ new"), now=NOW + timedelta(seconds=1), if_match=None)
    assert updated.body_html == "<p><s>old</s> new</p>\n"
    assert store.get(created.id) == updated


@pytest.mark.parametrize(
    ("markdown", "absent", "present"),
    [
        ("Hi <script>alert(1)</script> there", ["<script", "alert(1)"], ["Hi", "there"]),
        ("<script>\nalert(1)\n</script>\n\nafter", ["<script", "alert"], ["<p>after</p>"]),
        ('<img src="https://x.org/a.png" onerror="alert(1)">', ["onerror", "alert"], ['src="https://x.org/a.png"']),
        ("[click](javascript:alert(1)) and <a href=\"javascript:alert(2)\">raw</a>", ['href="javascript', "href=javascript"], ["raw</a>"]),
        ('<div onclick="steal()" style="color:red">\n\n**raw** block\n\n</div>\n\n<iframe src="https://evil.example"></iframe>',
         ["onclick", "steal", "style=", "<iframe", "evil"], ["<div>", "<strong>raw</strong>"]),
        ("![dot](data:image/png;base64,iVBORw0KGgo=) ![ok](https://example.com/ok.png) ![rel](/img/a.png)",
         ["data:", "base64"], ['src="https://example.com/ok.png"', 'src="/img/a.png"', 'alt="dot"']),
        ("<style>body { display: none }</style>\n\ntext", ["<style", "display"], ["<p>text</p>"]),
        ("```python\nprint('hi')\n```", [], ["<pre><code class=\"language-python\">print('hi')\n</code></pre>"]),
        ('<code class="evil">x</code> <p class="x" id="y">p</p>', ['class="evil"', 'class="x"', 'id="y"'], ["<code>x</code>"]),
        ("| a | b |\n|---|--:|\n| ~~1~~ | https://example.com |",
         [], ["<table>", "<s>1</s>", '<td style="text-align:right"><a href="https://example.com"']),
    ],
    ids=["inline-script", "script-block", "onerror", "javascript-links", "raw-html-block", "data-image", "style",
         "code-language", "classes", "gfm-table-strike-autolink"],
)  # fmt: skip
def test_body_html_is_sanitized(store: AnnouncementStore, markdown: str, absent: list[str], present: list[str]) -> None:
    html = store.create(new(body=markdown), now=NOW).body_html
    for text in absent:
        assert text not in html, html
    for text in present:
        assert text in html, html


def test_migrations_fill_slugs_html_and_search_index_of_existing_rows(database_url: str) -> None:
    database = open_database(database_url, pool_size=2, packages=())
    database.register("service.announcements", [m for m in MIGRATIONS if m.version < 5])
    database.open()
    try:
        database.migrate()
        with database.transaction(write=True) as conn:
            for title in ("Same title", "Same title", "中文标题"):
                database.execute(
                    conn,
                    "INSERT INTO announcements (title, body, published_at, created_at, updated_at) VALUES (?, ?, 0, 0, 0)",
                    (title, "Some <script>x</script>*Markdown*."),
                )
        database.register("service.announcements", MIGRATIONS)
        assert database.migrate() == [5, 6, 8]
        store = AnnouncementStore(database)
        items = sorted(store.list(now=NOW, limit=10, tag=None, include_all=True, after=None), key=lambda a: a.id)
        assert [a.slug for a in items] == ["same-title", "same-title-2", f"announcement-{items[2].id}"]
        assert {a.body_html for a in items} == {"<p>Some <em>Markdown</em>.</p>\n"}
        assert len(store.search(["markdown"], now=NOW, limit=10, tag=None, include_all=True)) == 3  # indexed too
        with pytest.raises(Conflict):
            store.update(items[0].id, AnnouncementPatch(slug="same-title-2"), now=NOW, if_match=None)
    finally:
        database.close()


# -- full-text search ---------------------------------------------------------------------------


def search(store: AnnouncementStore, q: str, *, tag: str | None = None, limit: int = 10, include_all: bool = False) -> list[str]:
    return [a.title for a in store.search(search_words(q), now=NOW, limit=limit, tag=tag, include_all=include_all)]


def test_search_finds_words_in_title_summary_and_body_best_first(store: AnnouncementStore) -> None:
    store.create(new("Meetup", body="We talk about asyncio and Starlette."), now=NOW)
    store.create(new("Asyncio in depth", body="A talk."), now=NOW)
    store.create(new("Other", summary="All about asyncio.", body="Nothing here."), now=NOW)
    store.create(new("Unrelated", body="Gardening."), now=NOW)
    assert search(store, "asyncio") == ["Asyncio in depth", "Other", "Meetup"]  # title, then summary, then body
    assert search(store, "ASYNCIO starlette") == ["Meetup"]  # every word, any case
    assert search(store, "asyncio", limit=1) == ["Asyncio in depth"]
    assert search(store, "nowhere") == []


def test_search_finds_norwegian_words_by_their_own_letters(store: AnnouncementStore) -> None:
    store.create(new("Håndtering av blokkerende kode", body="Blåbærsyltetøy på brødskiva."), now=NOW)
    store.create(new("Handtering", body="pa brodskiva"), now=NOW)
    assert search(store, "håndtering") == ["Håndtering av blokkerende kode"]
    assert search(store, "BLÅBÆRSYLTETØY") == ["Håndtering av blokkerende kode"]
    assert search(store, "brødskiva på") == ["Håndtering av blokkerende kode"]  # å is not a, ø is not o
    assert search(store, "pa") == ["Handtering"]


def test_search_of_chinese_matches_whole_runs_of_characters(store: AnnouncementStore) -> None:
    store.create(new("新年快乐", body="我们 庆祝 春节。"), now=NOW)
    assert search(store, "新年快乐") == ["新年快乐"]
    assert search(store, "春节") == ["新年快乐"]  # delimited by spaces and punctuation in the text
    assert search(store, "新年") == []  # part of a run: no word boundary for either engine


def test_search_keeps_to_public_and_tag_unless_all(store: AnnouncementStore) -> None:
    store.create(new("Python talk", tags=["talks"]), now=NOW)
    store.create(new("Python post", tags=["posts"]), now=NOW)
    store.create(new("Python later", published_at="2099-01-01T00:00:00Z"), now=NOW)
    assert search(store, "python", tag="talks") == ["Python talk"]
    assert sorted(search(store, "python")) == ["Python post", "Python talk"]
    assert len(search(store, "python", include_all=True)) == 3


def test_search_follows_updates_and_deletes(store: AnnouncementStore) -> None:
    created = store.create(new("Before", body="first words"), now=NOW)
    store.update(created.id, AnnouncementPatch(body="second words"), now=NOW + timedelta(seconds=1), if_match=None)
    assert search(store, "first") == [] and search(store, "second") == ["Before"]
    store.delete(created.id, if_match=None, now=NOW)
    assert search(store, "second") == []


@pytest.mark.parametrize("q", ['"', "AND OR NOT", "a* NEAR(b c) title:x ^y", "'; DROP TABLE announcements; --", "(((", "!@#:&|"])
def test_search_syntax_of_either_engine_is_only_text(store: AnnouncementStore, q: str) -> None:
    store.create(new("Title x", body="a b c y and or not drop table announcements"), now=NOW)
    words = search_words(q) if any(ch.isalnum() for ch in q) else None
    if words is None:
        with pytest.raises(InvalidInput) as caught:
            search_words(q)
        assert caught.value.errors[0].field == "q"
    else:
        store.search(words, now=NOW, limit=10, tag=None, include_all=False)  # answers, never an engine error


def test_the_polled_scheduled_times_are_read_through_their_indexes(tmp_path: Path) -> None:
    """Read every second by every process (the read cache's next boundary, the deploy hooks' scheduled times)."""
    store = open_store(f"sqlite:///{tmp_path}/plans.db")
    store.open()
    store.migrate()
    try:
        with store.database.transaction(write=False) as conn:
            plans = [
                " ".join(str(row[-1]) for row in store.database.execute(conn, f"EXPLAIN QUERY PLAN {query}", (0, 1)))
                for query in (
                    "SELECT MIN(published_at) FROM announcements WHERE published_at > ? AND ? > 0",
                    "SELECT MIN(expires_at) FROM announcements WHERE expires_at > ? AND ? > 0",
                    "SELECT id FROM announcements WHERE published_at > ? AND published_at <= ?",
                    "SELECT id FROM announcements WHERE expires_at > ? AND expires_at <= ?",
                )
            ]
    finally:
        store.close()
    assert all("INDEX announcements_published_at" in plan for plan in plans[0::2]), plans
    assert all("INDEX announcements_expires_at" in plan for plan in plans[1::2]), plans
