"""service.database: URLs, transactions, migrations by package, and the one way async code calls the database
(thread, timeout, limiter, breaker), on SQLite and on a real PostgreSQL server."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from service.database import (
    SCHEMA_PACKAGES,
    BlockingRunner,
    Breaker,
    Caller,
    CircuitOpen,
    Database,
    DatabaseUnavailable,
    Migration,
    PostgresDatabase,
    SQLiteDatabase,
    open_database,
    run_for,
    sqlite_path,
)
from service.errors import NotFound

HISTORY = [
    (1, "create announcements"),
    (2, "index in listing order"),
    (3, "GitHub shared tier"),
    (4, "change counter for read caches"),
    (5, "slug, summary and rendered body"),
    (6, "full-text search"),
    (7, "deploy-hook outbox"),
    (8, "index scheduled times"),
]
LATEST = HISTORY[-1][0]
NOTES = Migration(
    1000, "notes", {dialect: "CREATE TABLE notes (id INTEGER PRIMARY KEY, text TEXT)" for dialect in ("sqlite", "postgres")}
)


@pytest.fixture
def database(database_url: str) -> Iterator[Database]:
    database = open_database(database_url, pool_size=4)
    database.open()
    database.migrate()
    try:
        yield database
    finally:
        database.close()


def count(database: Database, table: str) -> int:
    with database.transaction(write=False) as conn:
        found: int = database.execute(conn, f"SELECT count(*) FROM {table}").fetchone()[0]
    return found


# -- URLs --------------------------------------------------------------------------------------


def test_sqlite_urls_are_relative_with_three_slashes_and_absolute_with_four() -> None:
    assert sqlite_path("sqlite:///data/app.db") == Path("data/app.db")
    assert sqlite_path("sqlite:////srv/app%20x.db") == Path("/srv/app x.db")
    database = open_database("sqlite:///data/app.db", packages=())
    assert isinstance(database, SQLiteDatabase) and database.path == Path("data/app.db")
    assert (database.kind, database.dialect, database.for_update) == ("sqlite", "sqlite", "")


@pytest.mark.parametrize("scheme", ["postgres", "postgresql"])
def test_both_postgres_schemes_open_a_pool_with_row_locks(scheme: str) -> None:
    database = open_database(f"{scheme}://someone@db.invalid:5432/app", packages=())  # the pool is not opened yet
    assert isinstance(database, PostgresDatabase)
    assert (database.kind, database.dialect, database.for_update) == ("postgresql", "postgres", " FOR UPDATE")


def test_an_unknown_scheme_is_refused() -> None:
    with pytest.raises(ValueError, match="mysql"):
        open_database("mysql://localhost/app")


# -- transactions ------------------------------------------------------------------------------


def test_execute_takes_question_mark_placeholders_on_both_databases(database: Database) -> None:
    with database.transaction(write=False) as conn:
        assert database.execute(conn, "SELECT CAST(? AS INTEGER) + CAST(? AS INTEGER)", (2, 3)).fetchone()[0] == 5


def test_a_transaction_commits_on_success_and_rolls_back_on_error(database: Database) -> None:
    database.register("tests", [NOTES])
    database.migrate()
    with database.transaction(write=True) as conn:
        database.execute(conn, "INSERT INTO notes (id, text) VALUES (?, ?)", (1, "kept"))
    with pytest.raises(KeyError), database.transaction(write=True) as conn:
        database.execute(conn, "INSERT INTO notes (id, text) VALUES (?, ?)", (2, "lost"))
        raise KeyError("boom")
    assert count(database, "notes") == 1


def test_a_write_whose_caller_gave_up_is_rolled_back(database: Database) -> None:
    database.register("tests", [NOTES])
    database.migrate()
    caller = Caller()

    def write() -> None:
        with database.transaction(write=True) as conn:
            database.execute(conn, "INSERT INTO notes (id, text) VALUES (?, ?)", (1, "given up"))
            assert caller.give_up()  # the request stops waiting before the commit

    with pytest.raises(DatabaseUnavailable, match="rolled back"):
        run_for(caller, write)
    assert count(database, "notes") == 0


def test_an_unmigrated_database_says_to_migrate(tmp_path: Path) -> None:
    database = open_database(f"sqlite:///{tmp_path}/fresh.db")
    database.open()
    try:
        with pytest.raises(DatabaseUnavailable, match="run python -m service migrate"):
            database.readiness()
    finally:
        database.close()


# -- migrations --------------------------------------------------------------------------------


def test_each_package_registers_its_migrations_and_they_apply_in_version_order(database_url: str) -> None:
    database = open_database(database_url, pool_size=1)
    assert SCHEMA_PACKAGES == ("service.announcements", "service.github", "service.hooks")
    assert [(m.version, m.name) for m in database.migrations] == HISTORY
    from service.announcements.schema import MIGRATIONS as ANNOUNCEMENTS
    from service.github.schema import MIGRATIONS as GITHUB
    from service.hooks.schema import MIGRATIONS as HOOKS

    assert [m.version for m in ANNOUNCEMENTS] == [1, 2, 4, 5, 6, 8] and [m.version for m in GITHUB] == [3]
    assert [m.version for m in HOOKS] == [7]
    database.open()
    try:
        assert database.migrate() == [version for version, _ in HISTORY]
        with database.transaction(write=False) as conn:
            recorded = database.execute(conn, "SELECT version, name FROM schema_migrations ORDER BY version").fetchall()
        assert [tuple(row) for row in recorded] == HISTORY  # the numbers and names databases already hold
        assert database.migrate() == []  # an already-migrated database runs nothing again
        assert database.readiness() == (True, f"{database.kind}, schema version {LATEST}")
        assert count(database, "github_shared") == 1 and count(database, "announcement_changes") == 1
        assert count(database, "deploy_hook_sender") == 1
    finally:
        database.close()


def test_a_version_belongs_to_one_package() -> None:
    database = open_database("sqlite:///unused.db")
    database.register("service.github", [Migration(3, "GitHub shared tier", database.migrations[2].ddl)])  # the same again
    with pytest.raises(ValueError, match="already registered by service.github"):
        database.register("elsewhere", [Migration(3, "something else", {"sqlite": "", "postgres": ""})])


def test_a_registered_migration_not_yet_applied_makes_the_database_not_ready(database: Database) -> None:
    database.register("tests", [NOTES])
    assert database.readiness() == (False, f"{database.kind}: schema at version {LATEST} of 1000; run python -m service migrate")
    assert database.migrate() == [1000]
    assert database.readiness() == (True, f"{database.kind}, schema version 1000")


# -- from async code ---------------------------------------------------------------------------


def test_breaker_refuses_while_open_lets_one_probe_through_and_closes_on_success() -> None:
    now = [100.0]
    breaker = Breaker(retry_after=2, clock=lambda: now[0])
    assert breaker.admit() is False  # closed: calls go through, none is a probe
    breaker.failed(False, DatabaseUnavailable("The postgresql database cannot be used now (PoolTimeout)."))
    with pytest.raises(DatabaseUnavailable, match="PoolTimeout") as refused:
        breaker.admit()
    assert refused.value.headers["Retry-After"] == "2"
    now[0] += 2
    assert breaker.admit() is True  # the probe
    with pytest.raises(DatabaseUnavailable):
        breaker.check()  # the others, while it runs
    breaker.failed(True, DatabaseUnavailable("still down"))
    with pytest.raises(DatabaseUnavailable, match="still down"):
        breaker.admit()
    now[0] += 2.5
    assert breaker.admit() is True
    breaker.abandoned(True)  # a cancelled probe says nothing: the next call probes
    assert breaker.admit() is True
    breaker.succeeded(True)
    assert breaker.admit() is False
    breaker.check()


class Recorder:
    """A StoreObserver: the operations it was told of, and how many calls were waiting for a slot then."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []

    @contextlib.asynccontextmanager
    async def _observe(self, operation: str, limiter: anyio.CapacityLimiter) -> AsyncIterator[None]:
        self.calls.append((operation, limiter.borrowed_tokens))
        yield

    def store_call(self, operation: str, limiter: anyio.CapacityLimiter) -> contextlib.AbstractAsyncContextManager[None]:
        return self._observe(operation, limiter)


@pytest.mark.anyio
async def test_run_blocking_runs_in_a_thread_within_the_limit_and_tells_the_observer() -> None:
    observer = Recorder()
    runner = BlockingRunner("sqlite", concurrency=2, observer=observer)
    running, most = 0, 0
    lock = threading.Lock()
    loop_thread = threading.get_ident()

    def list_things(n: int) -> int:
        nonlocal running, most
        assert threading.get_ident() != loop_thread
        with lock:
            running += 1
            most = max(most, running)
        time.sleep(0.05)
        with lock:
            running -= 1
        return n * 2

    results: list[int] = []
    async with anyio.create_task_group() as tasks:
        for n in range(6):
            tasks.start_soon(lambda n=n: _append(results, runner.run(list_things, n)))
    assert sorted(results) == [0, 2, 4, 6, 8, 10] and most == 2
    assert [operation for operation, _ in observer.calls] == ["list_things"] * 6


async def _append(results: list[int], call: Any) -> None:
    results.append(await call)


@pytest.mark.anyio
async def test_a_call_not_back_in_time_is_503_opens_the_breaker_and_its_write_is_rolled_back(tmp_path: Path) -> None:
    database = open_database(f"sqlite:///{tmp_path}/slow.db", packages=())
    database.register("tests", [NOTES])
    database.open()
    database.migrate()
    runner = BlockingRunner(database.kind, concurrency=1, timeout=0.2, breaker=Breaker(retry_after=30))
    release = threading.Event()

    def slow_write() -> None:
        with database.transaction(write=True) as conn:
            database.execute(conn, "INSERT INTO notes (id, text) VALUES (?, ?)", (1, "too late"))
            release.wait(5)

    try:
        started = time.monotonic()
        with pytest.raises(DatabaseUnavailable, match=r"sqlite database did not answer within 0\.2 s") as failed:
            await runner.run(slow_write)
        assert time.monotonic() - started < 1 and not isinstance(failed.value, CircuitOpen)
        with pytest.raises(CircuitOpen, match="did not answer") as refused:
            await runner.run(slow_write)  # refused at once, without a thread
        assert refused.value.headers["Retry-After"] == "30"
        release.set()
        await runner.drain()  # the abandoned thread ends: its write was rolled back, not committed
        assert count(database, "notes") == 0
    finally:
        release.set()
        database.close()


@pytest.mark.anyio
async def test_the_database_answering_an_api_error_keeps_the_breaker_closed_and_a_look_does_not_open_it() -> None:
    runner = BlockingRunner("sqlite", concurrency=1)

    def missing() -> None:
        raise NotFound("No announcement 7.")

    def unusable() -> None:
        raise DatabaseUnavailable("The sqlite database cannot be used now (OperationalError).")

    with pytest.raises(NotFound):
        await runner.run(missing)
    assert runner.breaker.closed
    with pytest.raises(DatabaseUnavailable):
        await runner.look(unusable)  # a readiness look: a busy pool is not a dead database
    assert runner.breaker.closed
    with pytest.raises(DatabaseUnavailable):
        await runner.run(unusable)
    assert not runner.breaker.closed
    assert await runner.look(lambda: "answered", queue=False) == "answered"  # the change poll finds it back
    assert runner.breaker.closed


@pytest.mark.anyio
async def test_other_errors_open_the_breaker_only_where_they_are_said_to(tmp_path: Path) -> None:
    """The GitHub shared tier pauses on any failure; the announcements store only on an unusable database."""

    def broken() -> None:
        raise RuntimeError("unexpected")

    strict, lenient = BlockingRunner("sqlite", concurrency=1, trips=(Exception,)), BlockingRunner("sqlite", concurrency=1)
    for runner in (strict, lenient):
        with pytest.raises(RuntimeError):
            await runner.run(broken)
    assert not strict.breaker.closed and lenient.breaker.closed
    with pytest.raises(CircuitOpen, match="RuntimeError"):
        await strict.run(broken)
