"""The read cache of public announcements: answers from memory, and never wrong for longer than promised
— a write here is seen on the next read, one in another process within a second, a scheduled or
expired announcement at its time."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette

from service.announcements.access import Announcements
from service.announcements.cache import ReadCache
from service.announcements.store import open_store
from service.app import create_app
from service.settings import Settings
from tests.support import running

pytestmark = pytest.mark.anyio

TOKEN = "admin-token-for-tests-0123456789"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
POST = {"title": "New talk on Friday", "body": "About **async** Python.", "tags": ["talks"]}


def announcements_of(app: Starlette) -> Announcements:
    announcements: Announcements = app.state.announcements
    return announcements


class StoreCalls:
    """Counts the store reads behind an app's announcements (wrapping the real methods)."""

    def __init__(self, app: Starlette) -> None:
        self.counts = {"list": 0, "get": 0}
        store = announcements_of(app).store
        for name in self.counts:
            original = getattr(store, name)
            setattr(store, name, self._counting(name, original))

    def _counting(self, name: str, original: Callable[..., Any]) -> Callable[..., Any]:
        def counted(*args: Any, **kwargs: Any) -> Any:
            self.counts[name] += 1
            return original(*args, **kwargs)

        return counted


async def titles(api: httpx.AsyncClient, query: str = "") -> list[str]:
    response = await api.get("/announcements" + query)
    assert response.status_code == 200
    return [item["title"] for item in response.json()["items"]]


async def until(condition: Callable[[], Any], *, within: float, step: float = 0.02) -> float:
    """Polls an async condition until it holds; returns when (time.time()) it first did, or fails."""
    import anyio

    deadline = time.monotonic() + within
    while True:
        if await condition():
            return time.time()
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {within} s")
        await anyio.sleep(step)


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings(ADMIN_TOKEN=TOKEN)


@pytest.fixture
async def served(settings: Settings) -> AsyncIterator[tuple[httpx.AsyncClient, Starlette]]:
    app = create_app(settings)
    async with running(app) as api:
        await until(lambda: _vouched(app), within=5)  # the first poll has answered
        yield api, app


class PolledOnce(Announcements):
    """The change counter read once, at start-up, and vouched for 30 s. A test's own write here does not
    record the new counter, so the next poll (a second later) would drop every view: a test that counts
    store reads would race it. Boundaries (publish, expiry times) still apply by the wall clock."""

    poll_interval = 30.0


@pytest.fixture
async def served_polled_once(settings: Settings) -> AsyncIterator[tuple[httpx.AsyncClient, Starlette]]:
    app = create_app(settings, announcements_class=PolledOnce)
    async with running(app) as api:
        await until(lambda: _vouched(app), within=5)  # the one poll has answered
        yield api, app


async def _vouched(app: Starlette) -> bool:
    return announcements_of(app).views.vouched()


async def test_public_reads_and_their_304s_come_from_memory(served_polled_once: tuple[httpx.AsyncClient, Starlette]) -> None:
    api, app = served_polled_once
    location = (await api.post("/announcements", json=POST, headers=ADMIN)).headers["location"]
    calls = StoreCalls(app)
    pages = [await api.get("/announcements") for _ in range(5)]
    items = [await api.get(location) for _ in range(5)]
    assert calls.counts == {"list": 1, "get": 1}
    for responses in (pages, items):
        assert len({r.content for r in responses}) == 1 and responses[0].headers["cache-control"] == "no-cache"
        again = await api.get(responses[0].url.raw_path.decode(), headers={"If-None-Match": responses[0].headers["etag"]})
        assert again.status_code == 304 and again.headers["etag"] == responses[0].headers["etag"]
    assert calls.counts == {"list": 1, "get": 1}
    # Each query is its own view.
    await api.get("/announcements?limit=5")
    await api.get("/announcements?tag=talks")
    assert calls.counts == {"list": 3, "get": 1}


async def test_searches_are_not_kept_so_distinct_queries_cannot_push_the_lists_out(
    served_polled_once: tuple[httpx.AsyncClient, Starlette],
) -> None:
    api, app = served_polled_once
    await api.post("/announcements", json=POST, headers=ADMIN)
    await api.get("/announcements")  # the list, kept
    for n in range(20):
        assert (await api.get(f"/announcements?q=talk{n}")).status_code == 200
    assert len(announcements_of(app).views._views) == 1, "only the list is kept"
    calls = StoreCalls(app)
    await api.get("/announcements")
    assert calls.counts["list"] == 0


async def test_admin_reads_bypass_the_cache(served: tuple[httpx.AsyncClient, Starlette]) -> None:
    api, app = served
    location = (await api.post("/announcements", json={**POST, "published_at": "2099-01-01T00:00:00Z"}, headers=ADMIN)).headers[
        "location"
    ]
    await api.get("/announcements?status=all", headers=ADMIN)
    await api.get(location, headers=ADMIN)
    calls = StoreCalls(app)
    for _ in range(3):
        listed = await api.get("/announcements?status=all", headers=ADMIN)
        item = await api.get(location, headers=ADMIN)
        assert len(listed.json()["items"]) == 1 and item.status_code == 200
        assert listed.headers["cache-control"] == item.headers["cache-control"] == "private, no-store"
    assert calls.counts == {"list": 3, "get": 3}
    assert (await api.get(location)).status_code == 404  # the public view of a scheduled one, cached or not


async def test_a_write_is_seen_on_the_next_read_in_the_same_process(served: tuple[httpx.AsyncClient, Starlette]) -> None:
    api, _ = served
    assert await titles(api) == []
    created = await api.post("/announcements", json=POST, headers=ADMIN)
    location = created.headers["location"]
    assert await titles(api) == [POST["title"]]
    first = await api.get(location)
    assert first.json()["title"] == POST["title"]

    await api.patch(location, json={"title": "Changed"}, headers=ADMIN)
    assert await titles(api) == ["Changed"]
    second = await api.get(location, headers={"If-None-Match": first.headers["etag"]})
    assert second.status_code == 200 and second.json()["title"] == "Changed"

    await api.delete(location, headers=ADMIN)
    assert await titles(api) == []
    assert (await api.get(location)).status_code == 404


async def test_a_scheduled_announcement_appears_and_an_expired_one_disappears_at_its_time(
    served_polled_once: tuple[httpx.AsyncClient, Starlette],
) -> None:
    api, app = served_polled_once
    start = datetime.now(UTC)
    # Far enough ahead that the warm-up reads below surely come before the first boundary.
    appears, disappears = start + timedelta(seconds=3.0), start + timedelta(seconds=3.5)
    scheduled = await api.post(
        "/announcements", json={**POST, "title": "Scheduled", "published_at": appears.isoformat()}, headers=ADMIN
    )
    await api.post("/announcements", json={**POST, "title": "Expiring", "expires_at": disappears.isoformat()}, headers=ADMIN)
    location = scheduled.headers["location"]
    assert await titles(api) == ["Expiring"] and (await api.get(location)).status_code == 404
    calls = StoreCalls(app)
    for _ in range(5):  # warm: answered from memory until the first boundary
        assert await titles(api) == ["Expiring"]
    assert calls.counts["list"] <= 1

    seen = await until(lambda: _has(api, "Scheduled"), within=5)
    assert appears.timestamp() <= seen < appears.timestamp() + 1.0  # not early, and not a second late
    assert (await api.get(location)).status_code == 200
    gone = await until(lambda: _lacks(api, "Expiring"), within=5)
    assert disappears.timestamp() <= gone < disappears.timestamp() + 1.0


async def _has(api: httpx.AsyncClient, title: str) -> bool:
    return title in await titles(api)


async def _lacks(api: httpx.AsyncClient, title: str) -> bool:
    return title not in await titles(api)


async def test_another_process_write_is_seen_within_a_second(settings: Settings) -> None:
    """Two apps on one database file: each has its own cache, as two worker processes would."""
    writer_app, reader_app = create_app(settings), create_app(settings)
    async with running(writer_app) as writer, running(reader_app) as reader:
        await until(lambda: _vouched(reader_app), within=5)
        assert await titles(reader) == []
        calls = StoreCalls(reader_app)
        assert await titles(reader) == [] and calls.counts["list"] == 0  # warm
        written = time.time()
        location = (await writer.post("/announcements", json=POST, headers=ADMIN)).headers["location"]
        seen = await until(lambda: _has(reader, POST["title"]), within=5)
        assert seen - written < 3.0, "promised: within a second (a generous bound: a busy CI machine, the requests themselves)"
        assert (await reader.get(location)).json()["title"] == POST["title"]

        written = time.time()
        await writer.patch(location, json={"title": "Changed"}, headers=ADMIN)
        seen = await until(lambda: _has(reader, "Changed"), within=5)
        assert seen - written < 3.0
        assert (await reader.get(location)).json()["title"] == "Changed"


async def test_while_the_change_counter_cannot_be_read_reads_go_to_the_database(
    served: tuple[httpx.AsyncClient, Starlette],
) -> None:
    api, app = served
    await api.post("/announcements", json=POST, headers=ADMIN)
    await titles(api)
    store = announcements_of(app).store

    def unreadable(**_: Any) -> Any:
        # Not StoreUnavailable: that one also opens the store's breaker (the database is down for every
        # call); here only the counter is unreadable, and reads must fall back to the database.
        raise RuntimeError("the counter cannot be read in this test")

    store.changes = unreadable  # type: ignore[method-assign]
    calls = StoreCalls(app)
    await until(lambda: _not_vouched(app), within=3)
    await titles(api)
    await titles(api)
    assert calls.counts["list"] == 2  # no poll vouches for the cache: it cannot know of other writers


async def _not_vouched(app: Starlette) -> bool:
    return not announcements_of(app).views.vouched()


# -- the cache's rules, with a clock the test moves ------------------------------------------------

T0 = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def cache() -> Iterator[tuple[ReadCache[str], Clock]]:
    clock = Clock()
    cache: ReadCache[str] = ReadCache(max_age=1.0, monotonic=clock)
    cache.poll_started()
    cache.polled(clock.now, counter=7, boundary=T0 + timedelta(hours=1))
    yield cache, clock


def test_nothing_is_served_before_the_first_poll() -> None:
    cache: ReadCache[str] = ReadCache(monotonic=Clock())
    cache.put("k", "v", cache.ticket(), T0)
    assert cache.get("k", T0) is None


def test_a_poll_vouches_for_one_second_from_its_start(cache: tuple[ReadCache[str], Clock]) -> None:
    views, clock = cache
    views.put("k", "v", views.ticket(), T0)
    assert views.get("k", T0) == "v"
    clock.now += 0.999
    assert views.get("k", T0) == "v"
    clock.now += 0.001
    assert views.get("k", T0) is None  # the next poll has not answered: another process may have written
    started = clock.now
    clock.now += 0.2  # the poll took 200 ms and saw no change
    views.polled(started, counter=7, boundary=T0 + timedelta(hours=1))
    assert views.get("k", T0) == "v"


def test_a_changed_counter_drops_everything(cache: tuple[ReadCache[str], Clock]) -> None:
    views, clock = cache
    views.put("k", "v", views.ticket(), T0)
    views.polled(clock.now, counter=8, boundary=T0 + timedelta(hours=1))
    assert views.get("k", T0) is None


def test_a_read_that_started_before_a_write_is_not_kept(cache: tuple[ReadCache[str], Clock]) -> None:
    views, clock = cache
    ticket = views.ticket()
    views.invalidate(now=T0)  # a write here lands while the read is in the thread pool
    views.put("k", "old", ticket, T0)
    assert views.get("k", T0) is None
    ticket = views.ticket()
    views.polled(clock.now, counter=9, boundary=None)  # another process's write, seen by a poll meanwhile
    views.put("k", "old", ticket, T0)
    assert views.get("k", T0) is None


def test_answers_are_not_served_at_or_after_the_next_boundary(cache: tuple[ReadCache[str], Clock]) -> None:
    views, _ = cache
    boundary = T0 + timedelta(hours=1)
    views.put("k", "v", views.ticket(), T0)
    assert views.get("k", boundary - timedelta(microseconds=1)) == "v"
    assert views.get("k", boundary) is None
    views.put("k", "late", views.ticket(), boundary)  # read after the boundary the cache knows: not kept
    assert views.get("k", boundary) is None


def test_a_write_here_brings_the_boundary_forward_even_during_a_poll(cache: tuple[ReadCache[str], Clock]) -> None:
    views, clock = cache
    soon = T0 + timedelta(minutes=5)
    views.poll_started()
    started = clock.now
    views.invalidate(soon, None, now=T0)  # schedules one for in five minutes, while the poll reads
    views.polled(started, counter=10, boundary=T0 + timedelta(hours=1))  # the poll read before that write
    views.put("k", "v", views.ticket(), T0)
    assert views.get("k", soon - timedelta(microseconds=1)) == "v"
    assert views.get("k", soon) is None


# -- two real server processes on one database -----------------------------------------------------


@pytest.mark.slow
def test_a_write_through_one_server_process_is_seen_by_another_within_a_second(database_url: str, tmp_path: Any) -> None:
    from tests.support import procfile_server

    store = open_store(database_url, pool_size=1)
    store.open()
    store.migrate()  # the release phase's job (SQLite would do it itself)
    store.close()
    env = {"DATABASE_URL": database_url, "ADMIN_TOKEN": TOKEN, "ACCESS_LOG": "false", "WEB_CONCURRENCY": "1"}
    with (
        procfile_server(env, cwd=tmp_path, log=tmp_path / "one.log") as (one, _),
        procfile_server(env, cwd=tmp_path, log=tmp_path / "two.log") as (two, _),
        httpx.Client(timeout=10) as http,
    ):

        def public_titles() -> list[str]:
            response = http.get(f"{two}/announcements")
            assert response.status_code == 200
            return [item["title"] for item in response.json()["items"]]

        def seen_after(write: Callable[[], httpx.Response], expected: list[str]) -> float:
            for _ in range(3):
                public_titles()  # warm the reader's cache
            written = time.monotonic()
            assert write().status_code in (200, 201, 204)
            deadline = written + 5
            while public_titles() != expected:
                assert time.monotonic() < deadline, f"not seen after 5 s: expected {expected}"
                time.sleep(0.02)
            return time.monotonic() - written

        created: list[httpx.Response] = []

        def create() -> httpx.Response:
            created.append(http.post(f"{one}/announcements", json=POST, headers=ADMIN))
            return created[0]

        delays = [seen_after(create, [POST["title"]])]
        location = one + created[0].headers["location"]
        delays.append(seen_after(lambda: http.patch(location, json={"title": "Changed"}, headers=ADMIN), ["Changed"]))
        delays.append(seen_after(lambda: http.delete(location, headers=ADMIN), []))
    # Promised: within a second; checked with a generous bound (the requests themselves, a busy machine),
    # still well below what a cache without the change counter would show (never, or a TTL later).
    assert max(delays) < 3.0, delays


async def test_a_forged_cursor_is_answered_but_never_kept(served_polled_once: tuple[httpx.AsyncClient, Starlette]) -> None:
    """Each distinct query string used to get a cached page of its own: 1,100 forged cursors grew a worker by
    2 GB. A page after a cursor this process handed out is kept; any other cursor is read and answered."""
    api, app = served_polled_once
    for n in range(3):
        assert (await api.post("/announcements", json={**POST, "title": f"Post {n}"}, headers=ADMIN)).status_code == 201
    first = (await api.get("/announcements?limit=1")).json()
    calls = StoreCalls(app)
    issued = f"/announcements?limit=1&cursor={first['next_cursor']}"
    assert (await api.get(issued)).status_code == 200
    assert (await api.get(issued)).status_code == 200
    assert calls.counts["list"] == 1, "the page after an issued cursor is kept"
    views = announcements_of(app).views
    held = views.used
    for n in range(50):
        forged = await api.get(f"/announcements?limit=100&cursor=0.999999999999999999.{10**17 + n}")
        assert forged.status_code == 200 and len(forged.json()["items"]) == 3
    assert views.used == held, "a forged cursor's page was kept"
    assert calls.counts["list"] == 51


def test_the_read_cache_stays_within_its_byte_budget_oldest_first(cache: tuple[ReadCache[str], Clock]) -> None:
    views, _ = cache
    views.budget, views.cost = 100, len
    for n in range(10):
        views.put(n, "x" * 30, views.ticket(), T0)
        assert views.used <= 100
    assert [n for n in range(10) if views.get(n, T0) is not None] == [7, 8, 9]  # the newest three fit
    views.put("huge", "x" * 101, views.ticket(), T0)  # over the whole budget: answered elsewhere, never kept
    assert views.get("huge", T0) is None and views.used == 90
