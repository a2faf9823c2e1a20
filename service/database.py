"""The service's database (one SQLite file, or PostgreSQL through a pool) and the one way async code calls it.

- `open_database(url)` parses DATABASE_URL into a `Database`, with the migrations of every package that owns
  tables registered (`SCHEMA_PACKAGES`: each has a `schema` module with `MIGRATIONS`).
- `Database.transaction(write=, timeout=)` yields a connection inside one transaction, committed on success and
  rolled back on any error; `Database.execute` runs a statement written with `?` placeholders on either
  database; `Database.for_update` is the row-lock suffix for read-then-write.
- `Database.migrate()` applies the registered `Migration`s in version order, each once (schema_migrations).
- `BlockingRunner` runs blocking calls off the event loop: in a worker thread, at most `concurrency` at once,
  given up after `timeout` (a write given up on is rolled back, see `Caller`), and refused at once while its
  `Breaker` knows the database is down.

Errors: `DatabaseUnavailable` (503 + Retry-After) whenever the database cannot be used now; `CircuitOpen`, a
subclass, when the breaker refused the call without trying.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import math
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple, Protocol, TypeVar
from urllib.parse import unquote, urlsplit

import anyio
import anyio.to_thread

from service.errors import ApiError, ServiceUnavailable

POOL_TIMEOUT = 5.0  # seconds to wait for a PostgreSQL connection before answering 503
READINESS_TIMEOUT = 1.0  # a readiness probe is polled every few seconds: it must not hang for long
CALL_TIMEOUT = 6.0  # seconds a call may take before the database counts as hanging (frozen, cut off)
RETRY_AFTER = 2  # seconds a 503 tells clients to wait; also how long calls are refused before one probes
RECONNECT_TIMEOUT = 5.0  # the pool gives up a reconnection series after this; the next call starts a new one
STATEMENT_TIMEOUT_MS = 5000
SQLITE_BUSY_TIMEOUT_MS = 5000
SQLITE_CACHE_KIB = 1024  # page cache per connection; at most 4 idle connections kept: a few MiB a worker
# The packages that own tables, in the order their migrations are registered.
SCHEMA_PACKAGES = ("service.announcements", "service.github", "service.hooks")

T = TypeVar("T")


class DatabaseUnavailable(ServiceUnavailable):
    slug = "database-unavailable"

    def __init__(self, detail: str, *, retry_after: int = RETRY_AFTER) -> None:
        super().__init__(detail, retry_after=retry_after, title="Database unavailable")


class CircuitOpen(DatabaseUnavailable):
    """Refused at once: the database is known to be down (see `Breaker`)."""


# -- URLs ----------------------------------------------------------------------------------------


def open_database(database_url: str, *, pool_size: int = 5, packages: Iterable[str] = SCHEMA_PACKAGES) -> Database:
    """The database DATABASE_URL names (not yet opened), with each package's migrations registered."""
    scheme = database_url.split("://", 1)[0]
    database: Database
    if scheme == "sqlite":
        database = SQLiteDatabase(sqlite_path(database_url))
    elif scheme in ("postgres", "postgresql"):
        database = PostgresDatabase(database_url, pool_size=pool_size)
    else:
        raise ValueError(f"unsupported database URL scheme {scheme!r}: use sqlite:// or postgresql://")
    for package in packages:
        database.register(package, importlib.import_module(f"{package}.schema").MIGRATIONS)
    return database


def sqlite_path(database_url: str) -> Path:
    """sqlite:///data/x.db is relative to the working directory; sqlite:////srv/x.db is absolute."""
    path = unquote(urlsplit(database_url).path)
    return Path(path.removeprefix("/"))


# -- migrations ----------------------------------------------------------------------------------


class Migration(NamedTuple):
    """One schema change. Versions are one sequence across packages (schema_migrations records them);
    `ddl` maps a dialect ("sqlite", "postgres") to statements separated by semicolons (none inside them).
    `then`, if given, runs after the DDL in the same transaction: for what SQL alone cannot compute (rows
    filled by Python code)."""

    version: int
    name: str
    ddl: Mapping[str, str]
    then: Callable[[Database, Any], None] | None = None


# -- who a call runs for -------------------------------------------------------------------------


class Caller:
    """The request a call runs for, as its worker thread sees it. A caller that stops waiting (the call
    timed out, the request was cancelled) has its write rolled back instead of committed, so a write
    answered 503 is never saved behind its back; only a commit already under way has an unknown outcome."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._gave_up = False
        self._committing = False

    def give_up(self) -> bool:
        """Stop waiting. False if it is too late for that: the commit is under way."""
        with self._lock:
            self._gave_up = True
            return not self._committing

    def begin_commit(self) -> None:
        with self._lock:
            if self._gave_up:
                raise DatabaseUnavailable("The caller stopped waiting; the write was rolled back.")
            self._committing = True


_running_for = threading.local()


def run_for(caller: Caller, function: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """Call `function` in this worker thread on behalf of `caller` (see `Database.transaction`)."""
    _running_for.caller = caller
    try:
        return function(*args, **kwargs)
    finally:
        _running_for.caller = None


# -- databases -----------------------------------------------------------------------------------


class Database:
    """Connections, transactions and migrations; subclasses supply connections and their errors. Every
    method blocks: async code calls them through a `BlockingRunner`."""

    kind = "sql"  # as messages name it: "sqlite", "postgresql"
    dialect = ""  # the key of `Migration.ddl`
    for_update = ""  # row lock for read-then-write; SQLite's BEGIN IMMEDIATE already serialises writers
    placeholder = "?"
    unavailable_errors: tuple[type[BaseException], ...] = ()
    unique_violation_errors: tuple[type[BaseException], ...] = ()  # a UNIQUE index refused a row

    def __init__(self) -> None:
        self._migrations: dict[int, tuple[str, Migration]] = {}

    def open(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def _connection(self, *, write: bool, timeout: float) -> contextlib.AbstractContextManager[Any]:
        """A connection inside one transaction: committed on success, rolled back on any error."""
        raise NotImplementedError

    def _is_missing_schema(self, exc: BaseException) -> bool:
        return "no such table" in str(exc)

    def _lock_for_migrations(self, conn: Any) -> None:
        """Keeps two processes from migrating at once (SQLite's write transaction already does)."""

    # -- transactions ------------------------------------------------------------------------

    @contextlib.contextmanager
    def transaction(self, *, write: bool, timeout: float = POOL_TIMEOUT) -> Iterator[Any]:
        """A connection inside one transaction, waiting at most `timeout` for it. A write whose caller has
        stopped waiting is rolled back, not committed. DatabaseUnavailable if the database cannot be used."""
        try:
            with self._connection(write=write, timeout=timeout) as conn:
                yield conn
                caller: Caller | None = getattr(_running_for, "caller", None)
                if write and caller is not None:
                    caller.begin_commit()  # raises, so rolls back, if the request no longer waits for it
        except self.unavailable_errors as exc:
            if self._is_missing_schema(exc):
                raise DatabaseUnavailable(f"{self.kind}: the schema is not migrated; run python -m service migrate") from exc
            raise DatabaseUnavailable(f"The {self.kind} database cannot be used now ({type(exc).__name__}).") from exc

    def execute(self, conn: Any, statement: str, params: tuple[Any, ...] = ()) -> Any:
        """Run `statement`, written with `?` placeholders, on `conn`; returns the cursor."""
        if self.placeholder != "?":
            statement = statement.replace("?", self.placeholder)
        return conn.execute(statement, params)

    # -- migrations --------------------------------------------------------------------------

    def register(self, package: str, migrations: Iterable[Migration]) -> None:
        """`package`'s migrations. A version belongs to one package; registering the same again is a no-op."""
        for migration in migrations:
            owner = self._migrations.get(migration.version)
            if owner is not None and owner != (package, migration):
                raise ValueError(f"migration {migration.version} of {package} is already registered by {owner[0]}")
            if self.dialect and self.dialect not in migration.ddl:
                raise ValueError(f"migration {migration.version} of {package} has no DDL for {self.dialect}")
            self._migrations[migration.version] = (package, migration)

    @property
    def migrations(self) -> list[Migration]:
        """Every registered migration, in the order they are applied."""
        return [migration for _, (_, migration) in sorted(self._migrations.items())]

    @property
    def latest_version(self) -> int:
        return max(self._migrations, default=0)

    def migrate(self) -> list[int]:
        """Apply the registered migrations not yet recorded, in version order, in one transaction;
        returns the versions applied."""
        applied = []
        with self.transaction(write=True) as conn:
            self._lock_for_migrations(conn)
            self.execute(
                conn,
                "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL,"
                " applied_at BIGINT NOT NULL)",
            )
            done = {row[0] for row in self.execute(conn, "SELECT version FROM schema_migrations").fetchall()}
            for migration in self.migrations:
                if migration.version in done:
                    continue
                for statement in migration.ddl[self.dialect].split(";"):  # SQLite runs one statement per call
                    self.execute(conn, statement)
                if migration.then is not None:
                    migration.then(self, conn)
                self.execute(
                    conn,
                    "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                    (migration.version, migration.name, to_micros(datetime.now(UTC))),
                )
                applied.append(migration.version)
        return applied

    def readiness(self) -> tuple[bool, str]:
        """(False, why) for a schema behind the code; DatabaseUnavailable if the database cannot be used."""
        with self.transaction(write=False, timeout=READINESS_TIMEOUT) as conn:
            done = {row[0] for row in self.execute(conn, "SELECT version FROM schema_migrations").fetchall()}
        version, latest = max(done, default=0), self.latest_version
        if not done.issuperset(self._migrations):
            return False, f"{self.kind}: schema at version {version} of {latest}; run python -m service migrate"
        return True, f"{self.kind}, schema version {version}"


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def to_micros(value: datetime) -> int:
    """Times are stored as integer microseconds since the epoch, UTC: exact, sortable, the same in both databases."""
    return (value - _EPOCH) // _MICROSECOND


def from_micros(value: int) -> datetime:
    return _EPOCH + timedelta(microseconds=value)


class SQLiteDatabase(Database):
    """An embedded file: a few connections shared by the worker threads, WAL so readers never wait for the writer."""

    kind = "sqlite"
    dialect = "sqlite"
    unavailable_errors = (sqlite3.OperationalError,)
    unique_violation_errors = (sqlite3.IntegrityError,)

    def __init__(self, path: Path, *, idle: int = 4) -> None:
        super().__init__()
        self.path = path
        # Connections not in use, handed to whichever worker thread needs one. One per thread instead would
        # keep up to 40 (anyio's thread pool), each with its own page cache: tens of MB a worker, measured.
        self._idle: list[sqlite3.Connection] = []
        self._keep_idle = idle
        self._lock = threading.Lock()

    def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    def _take(self) -> sqlite3.Connection:
        with self._lock:
            if self._idle:
                return self._idle.pop()
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=SQLITE_BUSY_TIMEOUT_MS / 1000)
        conn.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")  # a 201 means the row survives a crash
        conn.execute(f"PRAGMA cache_size = -{SQLITE_CACHE_KIB}")  # its page cache, in KiB
        return conn

    def _give_back(self, conn: sqlite3.Connection) -> None:
        with self._lock:
            if len(self._idle) < self._keep_idle:
                self._idle.append(conn)
                return
        conn.close()

    @contextlib.contextmanager
    def _connection(self, *, write: bool, timeout: float) -> Iterator[sqlite3.Connection]:
        conn = self._take()
        try:
            # IMMEDIATE takes the write lock up front, so read-then-write cannot be overtaken by another writer.
            conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                yield conn
            except BaseException:
                with contextlib.suppress(sqlite3.Error):  # SQLite may have rolled back already (e.g. disk full)
                    conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        except BaseException:
            conn.close()  # in an unknown state (a failed COMMIT, a BEGIN that timed out): not reused
            raise
        self._give_back(conn)


class PostgresDatabase(Database):
    """PostgreSQL through a psycopg connection pool, opened by the app's lifespan."""

    kind = "postgresql"
    dialect = "postgres"
    for_update = " FOR UPDATE"
    placeholder = "%s"

    def __init__(self, database_url: str, *, pool_size: int) -> None:
        super().__init__()
        import psycopg
        import psycopg_pool

        self.unavailable_errors = (
            psycopg.OperationalError,
            psycopg_pool.PoolTimeout,
            psycopg.errors.QueryCanceled,  # statement_timeout
            psycopg.errors.UndefinedTable,  # not migrated yet
        )
        self.unique_violation_errors = (psycopg.errors.UniqueViolation,)
        params = psycopg.conninfo.conninfo_to_dict(database_url)
        params.setdefault("sslmode", "require")  # Heroku's databases want TLS; a URL may say otherwise
        params.setdefault("connect_timeout", 5)
        params["options"] = f"-c statement_timeout={STATEMENT_TIMEOUT_MS}"
        self._pool = psycopg_pool.ConnectionPool(
            psycopg.conninfo.make_conninfo("", **params),
            min_size=1,
            max_size=pool_size,
            timeout=POOL_TIMEOUT,
            check=psycopg_pool.ConnectionPool.check_connection,
            # Its default (5 min) lets reconnection attempts back off to minutes apart, so a database back
            # up would go unnoticed that long; a short series, restarted by the next call, notices in seconds.
            reconnect_timeout=RECONNECT_TIMEOUT,
            open=False,
            name="database",
        )

    def open(self) -> None:
        self._pool.open(wait=False)  # an unreachable database must not stop start-up: readiness reports it

    def close(self) -> None:
        self._pool.close()

    @contextlib.contextmanager
    def _connection(self, *, write: bool, timeout: float) -> Iterator[Any]:
        with self._pool.connection(timeout=timeout) as conn:  # commits on success, rolls back on error
            yield conn

    def _is_missing_schema(self, exc: BaseException) -> bool:
        import psycopg

        return isinstance(exc, psycopg.errors.UndefinedTable)

    def _lock_for_migrations(self, conn: Any) -> None:
        conn.execute("SELECT pg_advisory_xact_lock(hashtext('website-api migrations'))")


# -- from async code -----------------------------------------------------------------------------


class Breaker:
    """A circuit breaker in front of the database, used only from the event loop.

    Closed, every call goes through. A call that finds the database unusable opens it: for `retry_after`
    seconds every call is refused at once (CircuitOpen, with the failure's detail) instead of each waiting
    out a pool or call timeout. Then one call is let through as a probe (half-open) while the others are
    still refused; the probe's failure opens it again, and any success closes it.
    """

    def __init__(self, *, retry_after: float = RETRY_AFTER, clock: Callable[[], float] = time.monotonic) -> None:
        self.retry_after = retry_after
        self.clock = clock
        self._failure: DatabaseUnavailable | None = None  # None while closed
        self._probe_at = 0.0
        self._probing = False

    @property
    def closed(self) -> bool:
        """The database is not known to be down."""
        return self._failure is None

    @property
    def refusing(self) -> bool:
        """A call now would be refused."""
        return self._failure is not None and (self._probing or self.clock() < self._probe_at)

    def check(self) -> None:
        """Raise CircuitOpen at once if a call now would be refused."""
        if self._failure is not None and self.refusing:
            wait = max(1, math.ceil(self._probe_at - self.clock()))
            raise CircuitOpen(str(self._failure.detail), retry_after=wait)

    def admit(self) -> bool:
        """Let a call through, or raise at once. True if the call is the probe."""
        self.check()
        if self._failure is None:
            return False
        self._probing = True
        return True

    def succeeded(self, probe: bool) -> None:
        self._failure = None
        self._probing = False

    def failed(self, probe: bool, failure: DatabaseUnavailable) -> None:
        self._failure = failure
        self._probe_at = self.clock() + self.retry_after
        if probe:
            self._probing = False

    def abandoned(self, probe: bool) -> None:
        """The call ended without telling anything about the database (a bug, a cancelled request)."""
        if probe:
            self._probing = False


class StoreObserver(Protocol):
    """Told of every call a `BlockingRunner` runs (metrics, spans): entered before the call waits for a slot."""

    def store_call(self, operation: str, limiter: anyio.CapacityLimiter) -> contextlib.AbstractAsyncContextManager[None]: ...


class BlockingRunner:
    """Blocking database calls from async code: in a worker thread, at most `concurrency` at once (callers
    beyond wait here, not in a thread), given up after `timeout`, and refused at once while `breaker` is open.

    `trips` are the errors that open the breaker: by default DatabaseUnavailable, while other API errors
    (not found, a failed precondition) mean the database answered. `kind` names the database in messages.
    """

    def __init__(
        self,
        kind: str,
        *,
        concurrency: int,
        timeout: float = CALL_TIMEOUT,
        breaker: Breaker | None = None,
        observer: StoreObserver | None = None,
        trips: tuple[type[Exception], ...] = (DatabaseUnavailable,),
    ) -> None:
        self.kind = kind
        self.timeout = timeout
        self.limiter = anyio.CapacityLimiter(concurrency)
        self.breaker = breaker if breaker is not None else Breaker()
        self.observer = observer
        self.trips = trips
        self._in_threads = 0  # calls running in worker threads, given-up ones included (see `drain`)
        self._in_threads_lock = threading.Lock()

    async def run(self, function: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """`function(*args, **kwargs)`: limited, timed out, and guarded by the breaker."""
        self.breaker.check()
        observed = self.observer.store_call(function.__name__, self.limiter) if self.observer else contextlib.nullcontext()
        async with observed, self.limiter:
            probe = self.breaker.admit()  # again: it may have opened while this call waited for a slot
            try:
                result = await self.in_thread(function, *args, **kwargs)
            except self.trips as exc:
                self.breaker.failed(probe, exc if isinstance(exc, DatabaseUnavailable) else self._unusable(exc))
                raise
            except ApiError:  # the database answered: not found, a failed precondition, …
                self.breaker.succeeded(probe)
                raise
            except BaseException:
                self.breaker.abandoned(probe)
                raise
            self.breaker.succeeded(probe)
            return result

    async def look(self, function: Callable[[], T], *, queue: bool = True) -> T:
        """A look at the database that must not itself open the breaker (a readiness probe waits only 1 s
        for a pooled connection, and a busy pool is not a dead database); a success closes it. With
        `queue`, refused at once while the breaker is open and limited like every call; without, neither
        (a poll that requests wait for must not queue behind them)."""
        if queue:
            self.breaker.check()
            async with self.limiter:
                result = await self.in_thread(function)
        else:
            result = await self.in_thread(function)
        self.breaker.succeeded(False)
        return result

    async def in_thread(self, function: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """`function` in a worker thread, given up after `timeout`: anyio waits for its thread whatever
        happens, so a frozen database would hold every request for ever. The thread ends on its own; a
        write it was making is rolled back (`Caller`), unless its commit is under way: that outcome is
        unknown, so the call waits on and the request's own deadline answers 504, not a 503 that invites
        a retry. DatabaseUnavailable when given up."""
        caller = Caller()
        state = "queued"  # then "running" in its thread, or "dropped" if given up before it started

        def counted() -> T:
            nonlocal state
            with self._in_threads_lock:
                if state == "dropped":  # nobody waits for it, and it is no longer counted: do not start
                    raise DatabaseUnavailable("The call was given up before it started.")
                state = "running"
            try:
                return run_for(caller, function, *args, **kwargs)
            finally:
                with self._in_threads_lock:
                    self._in_threads -= 1

        with anyio.CancelScope() as scope:

            def give_up() -> None:
                if caller.give_up():
                    scope.cancel()

            timer = asyncio.get_running_loop().call_later(self.timeout, give_up)
            try:
                with self._in_threads_lock:
                    self._in_threads += 1
                return await anyio.to_thread.run_sync(counted, abandon_on_cancel=True)
            except BaseException:  # cancelled (timed out, request deadline, shutdown) or failed
                caller.give_up()
                with self._in_threads_lock:
                    if state == "queued":
                        state = "dropped"
                        self._in_threads -= 1
                raise
            finally:
                timer.cancel()
        raise DatabaseUnavailable(f"The {self.kind} database did not answer within {self.timeout:g} s.")

    async def drain(self, timeout: float | None = None) -> None:
        """Wait (at most `timeout`, by default the call timeout) for calls still running in worker threads,
        those given up on included, so the database is not closed under them."""
        with anyio.move_on_after(self.timeout if timeout is None else timeout):
            while self._in_threads:
                await anyio.sleep(0.01)

    def _unusable(self, exc: BaseException) -> DatabaseUnavailable:
        return DatabaseUnavailable(f"The {self.kind} database cannot be used now ({type(exc).__name__}).")
