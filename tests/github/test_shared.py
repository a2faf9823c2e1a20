"""The GitHub cache's shared tier: several apps (as several processes would) on one SQLite file and on
one PostgreSQL database, against the GitHub stand-in that counts calls."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import AsyncIterator, Callable

import anyio
import httpx
import pytest
from starlette.applications import Starlette

from service.app import create_app
from service.database import Database, open_database
from service.github.client import UNLISTED_LOOKUP_BURST
from service.github.shared import PAUSE_AFTER_FAILURE, SharedSql, SharedTier
from service.settings import Settings
from tests.github_standin import GitHubStandIn, Reply, gather, poll
from tests.support import assert_problem, eventually, migrated, running

pytestmark = pytest.mark.anyio

LIST = "/users/octo-dev/repos"


@pytest.fixture
def process(make_settings: Callable[..., Settings], standin: GitHubStandIn, database_url: str):  # type: ignore[no-untyped-def]
    """An app as one worker process runs it: its own memory, the database shared with the others."""
    url = migrated(database_url)

    @contextlib.asynccontextmanager
    async def start(**env: str) -> AsyncIterator[httpx.AsyncClient]:
        base = {"GITHUB_OWNER": "octo-dev", "GITHUB_API_URL": standin.url, "GITHUB_TIMEOUT": "1", "DATABASE_URL": url}
        async with running(create_app(make_settings(**{**base, **env}))) as client:
            yield client

    return start


def app_of(client: httpx.AsyncClient) -> Starlette:
    app: Starlette = client._transport.app  # type: ignore[attr-defined]
    return app


def shared_of(client: httpx.AsyncClient) -> SharedTier:
    shared: SharedTier = app_of(client).state.github.cache.shared
    return shared


async def test_another_process_adopts_the_copy_without_calling_github(standin, process) -> None:  # type: ignore[no-untyped-def]
    async with process() as first, process() as second:
        fetched = await first.get("/github/repos")
        adopted = await second.get("/github/repos")
        owner = await second.get("/github/owner")
    assert fetched.headers["x-cache"] == "miss" and adopted.headers["x-cache"] == "hit"
    assert adopted.content == fetched.content and adopted.headers["etag"] == fetched.headers["etag"]
    assert owner.headers["x-cache"] == "hit"  # fetched by the first for the owner's type, adopted here
    assert len(standin.calls_to(LIST)) == 1 and len([c for c in standin.calls if c.path == "/users/octo-dev"]) == 1


async def test_an_expired_copy_is_refreshed_once_for_every_process(standin, process) -> None:  # type: ignore[no-untyped-def]
    # A TTL wide enough that each copy stays fresh while the other process adopts it, even on a loaded
    # machine: otherwise the second would find it expired and refresh again, and GitHub would count 3.
    async with process(GITHUB_CACHE_TTL="3") as first, process(GITHUB_CACHE_TTL="3") as second:
        await first.get("/github/repos")
        await second.get("/github/repos")
        standin.repos[0]["stargazers_count"] = 4242  # GitHub's data changes: the refresh brings new bytes
        await anyio.sleep(3.1)
        stale = await gather([first.get("/github/repos?forks=true&limit=100"), second.get("/github/repos?forks=true&limit=100")])

        def refreshed(response: httpx.Response) -> bool:
            return response.headers["x-cache"] == "hit" and 4242 in [r["stargazers_count"] for r in response.json()]

        fresh = [await poll(lambda c=c: c.get("/github/repos?forks=true&limit=100"), until=refreshed) for c in (first, second)]  # type: ignore[misc]
    assert [r.headers["x-cache"] for r in stale] == ["stale", "stale"]
    assert all(refreshed(r) for r in fresh)
    assert len(standin.calls_to(LIST)) == 2  # once at the start, once after the TTL: not once per process


async def test_a_process_started_during_an_outage_serves_the_last_good_copy(standin, process) -> None:  # type: ignore[no-untyped-def]
    async with process(GITHUB_CACHE_TTL="0.2") as first:
        good = await first.get("/github/repos")
    standin.scenario = lambda path, headers: Reply(502, b"<html>bad gateway</html>")
    await anyio.sleep(0.3)
    async with process(GITHUB_CACHE_TTL="0.2") as restarted:
        stale = await restarted.get("/github/repos")
        single = await restarted.get("/github/repos/project-001")
    assert stale.status_code == 200 and stale.headers["x-cache"] == "stale" and stale.content == good.content
    assert single.status_code == 200 and single.headers["x-cache"] == "stale"


async def test_a_fresh_process_answers_from_a_fresh_shared_copy_even_while_github_is_down(standin, process) -> None:  # type: ignore[no-untyped-def]
    async with process() as first:
        await first.get("/github/repos")
    standin.scenario = lambda path, headers: Reply(502, b"down")
    async with process() as second:
        response = await second.get("/github/repos/project-002")
    assert response.status_code == 200 and response.headers["x-cache"] == "hit"


async def test_a_rate_limit_blocks_every_process(standin, process) -> None:  # type: ignore[no-untyped-def]
    reset = int(time.time()) + 30
    standin.scenario = lambda path, headers: Reply(403, b"{}", {"x-ratelimit-remaining": "0", "x-ratelimit-reset": str(reset)})
    async with process() as first, process() as second:
        limited = await first.get("/github/repos")
        calls = len(standin.calls)
        standin.scenario = None  # GitHub would answer now, but the reset has not come
        other = await second.get("/github/repos")
        ready = await second.get("/health/ready")
    assert_problem(limited, 503) and assert_problem(other, 503)
    assert 25 <= int(other.headers["retry-after"]) <= 31
    assert len(standin.calls) == calls, "the second process must not call GitHub before the reset"
    assert "rate_limited_until" in ready.json()["checks"]["github"]


async def test_the_unknown_name_budget_is_one_for_the_deployment(standin, process) -> None:  # type: ignore[no-untyped-def]
    async with process() as first, process() as second:
        for client in (first, second):
            assert (await client.get("/github/repos")).status_code == 200
        for i in range(2 * UNLISTED_LOOKUP_BURST):
            client = first if i % 2 else second
            assert_problem(await client.get(f"/github/repos/made-up-{i}"), 404)
        for name in ("project-001", "PROJECT-002"):
            assert (await first.get(f"/github/repos/{name}")).status_code == 200  # listed: never refused
    assert len(standin.calls_to("/repos/")) == UNLISTED_LOOKUP_BURST


async def test_validators_are_not_reused_under_another_token(standin, process) -> None:  # type: ignore[no-untyped-def]
    async with process(GITHUB_TOKEN="ghp_first_token_0000", GITHUB_CACHE_TTL="0.2") as first:
        await first.get("/github/repos")
    await anyio.sleep(0.3)
    async with process(GITHUB_TOKEN="ghp_second_token_000", GITHUB_CACHE_TTL="0.2", GITHUB_STALE_TTL="0") as second:
        response = await second.get("/github/repos")
    _, second_call = standin.calls_to(LIST)
    assert response.status_code == 200 and response.headers["x-cache"] == "miss"
    assert "if-none-match" not in second_call.headers, "an ETag obtained with another token was sent"
    assert second_call.headers["authorization"] == "Bearer ghp_second_token_000"


async def test_same_token_revalidates_with_the_validators_another_process_stored(standin, process) -> None:  # type: ignore[no-untyped-def]
    async with process(GITHUB_TOKEN="ghp_same_token_00000", GITHUB_CACHE_TTL="0.2") as first:
        await first.get("/github/repos")
    await anyio.sleep(0.3)
    async with process(GITHUB_TOKEN="ghp_same_token_00000", GITHUB_CACHE_TTL="0.2", GITHUB_STALE_TTL="0") as second:
        response = await second.get("/github/repos")
    assert response.headers["x-cache"] == "revalidated"
    assert standin.calls_to(LIST)[1].headers["if-none-match"].startswith('"')


async def test_a_dead_holders_lease_lapses_after_the_timeout(standin, process) -> None:  # type: ignore[no-untyped-def]
    # The visitor's wait is bounded by one timeout (3 s); waiting out the lease loop's own limit (two
    # timeouts) would take 6 s. The bound at 4.5 s leaves room for a loaded machine on both sides.
    async with process(GITHUB_TIMEOUT="3") as client:
        database = shared_of(client).database
        # A process took the list's lease and died before storing anything.
        claimed_at = time.monotonic()
        claim, _ = await anyio.to_thread.run_sync(
            lambda: SharedSql(database).claim("octo-dev/repositories", holder="dead:1:0000", now=time.time(), ttl=300, lease=3)
        )
        assert claim.claimed
        asked_at = time.monotonic()
        first = await client.get("/github/repos")  # nothing to serve: waits for the holder, one timeout at most
        answered = time.monotonic() - asked_at
        later = await poll(lambda: client.get("/github/repos"), until=lambda r: r.status_code == 200)
    assert first.status_code in (200, 504) and answered < 3 + 1.5
    assert later.status_code == 200
    calls = standin.calls_to(LIST)
    assert len(calls) == 1, "one process fetches once the lease has lapsed"
    assert calls[0].at - claimed_at >= 2.9, "nobody fetches while the lease is live"


async def test_a_cache_hit_makes_no_database_call(standin, process) -> None:  # type: ignore[no-untyped-def]
    async with process() as client:
        await client.get("/github/repos")
        await client.get("/github/repos/project-001")
        shared = shared_of(client)
        calls: list[str] = []
        original = shared._call

        async def counted(method, *args, **kwargs):  # type: ignore[no-untyped-def]
            calls.append(method.__name__)
            return await original(method, *args, **kwargs)

        shared._call = counted
        for _ in range(20):
            for path in ("/github/repos", "/github/repos/project-001", "/github/owner", "/github/repos?sort=name"):
                assert (await client.get(path)).headers["x-cache"] == "hit"
    assert calls == []


async def test_without_the_shared_tables_each_process_serves_on_its_own(standin, process, database_url: str) -> None:  # type: ignore[no-untyped-def]
    async with process() as client:
        database = shared_of(client).database
        await anyio.to_thread.run_sync(lambda: _drop_shared_tables(database))
        first = await client.get("/github/repos/project-001")
        second = await client.get("/github/repos")
        ready = await client.get("/health/ready")
    assert first.status_code == 200 and second.status_code == 200 and second.headers["x-cache"] == "hit"
    assert "shared tier unavailable" in ready.json()["checks"]["github"]["detail"]


def _drop_shared_tables(database: Database) -> None:
    with database.transaction(write=True) as conn:
        for table in ("github_cache", "github_shared", "github_deliveries"):
            database.execute(conn, f"DROP TABLE {table}")


async def test_a_failed_shared_call_pauses_the_tier_and_it_answers_nothing_shared(tmp_path, caplog) -> None:  # type: ignore[no-untyped-def]
    database = open_database(f"sqlite:///{tmp_path}/unmigrated.db", packages=())
    database.open()
    reads: list[str] = []
    tier = SharedTier(database, token=None)
    original = tier.sql.read
    tier.sql.read = lambda key: reads.append(key) or original(key)  # type: ignore[method-assign,func-returns-value]
    try:
        assert await tier.read("octo-dev/repositories") is None  # no tables: nothing shared, no error
        assert not tier.usable and tier._runner.breaker.retry_after == PAUSE_AFTER_FAILURE == 10
        for _ in range(5):
            assert await tier.read("octo-dev/repositories") is None and await tier.changes() is None
        assert reads == ["octo-dev/repositories"], "paused: no further call reaches the database"
        assert [r.getMessage() for r in caplog.records if "shared tier unusable" in r.getMessage()] == [
            (
                "GitHub shared tier unusable (sqlite: the schema is not migrated; run python -m service migrate);"
                " this process serves its own copies for now"
            )
        ]
    finally:
        await tier.drain()
        database.close()


async def test_readiness_names_the_last_refresh_and_the_lease_holder(standin, process) -> None:  # type: ignore[no-untyped-def]
    # The first's lease lasts its GITHUB_TIMEOUT: 10 s, so it is surely live while the second looks.
    async with process(GITHUB_CACHE_TTL="0.2", GITHUB_TIMEOUT="10") as first, process(GITHUB_CACHE_TTL="0.2") as second:
        await first.get("/github/repos")
        before = (await second.get("/health/ready")).json()["checks"]["github"]
        standin.hold = threading.Event()  # GitHub answers only once the test has looked
        try:
            await anyio.sleep(0.3)
            await first.get("/github/repos")  # stale: the refresh runs in the background and holds the lease
            await eventually(lambda: len(standin.calls_to(LIST)) == 2, what="the second list call")
            during = (await second.get("/health/ready")).json()["checks"]["github"]
            first_worker = (await first.get("/health/ready")).json()["checks"]["github"]["worker"]
        finally:
            standin.hold.set()
    assert before["last_refresh"].endswith("Z") and not before.get("leases")
    assert [(lease["key"], lease["holder"]) for lease in during["leases"]] == [("octo-dev/repositories", first_worker)]
    assert during["worker"] != first_worker
