# -*- test-case-name: tests.storage.test_database -*-
"""
Test fixtures for the storage layer: real SQL, no threads.

:func:`open_test_database` builds a :class:`~headscale_tw.storage.database.Database`
whose adbapi thread pool is a :class:`NonThreadPool` (work runs inline, in the
test's thread) and whose reactor is a :class:`ThreadlessReactor` (a ``Clock`` whose
``callFromThread`` calls at once). Every store coroutine therefore finishes before
it returns, and :func:`resolve` hands back its result synchronously. The schema
is built by the real migration code. The idea is Synapse's ``make_fake_db_pool``
and Buildbot's ``NonThreadPool``.

For PostgreSQL, :func:`create_postgres_database` makes a fresh database with a
random name on the server named by ``HEADSCALE_TEST_PG_DSN`` (default
``host=127.0.0.1 port=5432 user=postgres``) and drops it on cleanup. It never
skips: an unreachable server fails the test with a message saying what to run.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from headscale_tw.config.model import DatabaseConfig, PostgresConfig, SqliteConfig
from headscale_tw.storage.database import Database, open_database

__all__ = [
    "NonThreadPool",
    "ThreadlessReactor",
    "resolve",
    "sqlite_config",
    "postgres_dsn",
    "create_postgres_database",
    "open_test_database",
    "DEFAULT_PG_DSN",
    "UnreachableStore",
]

T = TypeVar("T")

DEFAULT_PG_DSN = "host=127.0.0.1 port=5432 user=postgres"


class NonThreadPool:
    """Stands in for ``twisted.python.threadpool.ThreadPool``: runs each call at once, inline."""

    started = False

    def start(self) -> None:
        """Nothing to start."""
        self.started = True

    def stop(self) -> None:
        """Nothing to stop."""
        self.started = False

    def callInThreadWithCallback(self, onResult: Callable[[bool, Any], None], func: Callable[..., Any],
                                 *args: Any, **kw: Any) -> None:
        """Call ``func`` now and report to ``onResult`` like a thread pool would."""
        try:
            result = func(*args, **kw)
        except BaseException:
            onResult(False, Failure())
        else:
            onResult(True, result)

    def callInThread(self, func: Callable[..., Any], *args: Any, **kw: Any) -> None:
        """Call ``func`` now."""
        func(*args, **kw)


class ThreadlessReactor(Clock):
    """A ``Clock`` with the few reactor methods ``adbapi.ConnectionPool`` uses."""

    def __init__(self) -> None:
        super().__init__()
        self._triggers: dict[int, tuple] = {}
        self._next_trigger = 0

    def callFromThread(self, f: Callable[..., Any], *args: Any, **kw: Any) -> None:
        """There are no other threads: call at once."""
        f(*args, **kw)

    def callWhenRunning(self, f: Callable[..., Any], *args: Any, **kw: Any) -> None:
        """The fake reactor is always running: call at once."""
        f(*args, **kw)

    def addSystemEventTrigger(self, phase: str, event: str, f: Callable[..., Any], *args: Any, **kw: Any) -> int:
        """Remember a trigger (never fired: a fake reactor does not shut down)."""
        self._next_trigger += 1
        self._triggers[self._next_trigger] = (phase, event, f, args, kw)
        return self._next_trigger

    def removeSystemEventTrigger(self, trigger_id: int) -> None:
        """Forget a trigger."""
        self._triggers.pop(trigger_id, None)


def resolve(awaitable: Coroutine[Any, Any, T] | Deferred[T]) -> T:
    """Run a coroutine (or Deferred) that finishes without waiting, and return its result.

    Raises what it raised; ``AssertionError`` if it is still waiting (something in it
    needs a real thread or reactor, which these fixtures never provide).
    """
    d = awaitable if isinstance(awaitable, Deferred) else ensureDeferred(awaitable)
    results: list[Any] = []
    d.addBoth(results.append)
    if not results:
        d.cancel()
        raise AssertionError(f"{awaitable!r} did not finish synchronously")
    result = results[0]
    if isinstance(result, Failure):
        result.raiseException()
    return result


def sqlite_config(path: str = ":memory:", write_ahead_log: bool = True) -> DatabaseConfig:
    """A SQLite ``DatabaseConfig`` (in memory by default)."""
    return DatabaseConfig(type="sqlite", sqlite=SqliteConfig(path=path, write_ahead_log=write_ahead_log))


def postgres_dsn() -> dict[str, str]:
    """The test server's connection parameters, from ``HEADSCALE_TEST_PG_DSN``."""
    from psycopg2.extensions import parse_dsn

    return parse_dsn(os.environ.get("HEADSCALE_TEST_PG_DSN", DEFAULT_PG_DSN))


def _admin_connection(testcase: Any) -> Any:
    import psycopg2

    dsn = postgres_dsn()
    try:
        params: dict[str, Any] = {**dsn, "dbname": dsn.get("dbname", "postgres"), "connect_timeout": 5}
        conn = psycopg2.connect(**params)
    except psycopg2.OperationalError as e:
        testcase.fail(
            "PostgreSQL tests need a server: could not connect with HEADSCALE_TEST_PG_DSN="
            f"{os.environ.get('HEADSCALE_TEST_PG_DSN', DEFAULT_PG_DSN)!r} ({str(e).strip()}). "
            "Run tools/ensure-test-services.sh or set HEADSCALE_TEST_PG_DSN."
        )
    conn.autocommit = True
    return conn


def create_postgres_database(testcase: Any) -> DatabaseConfig:
    """Create an empty PostgreSQL database with a random name; drop it when the test ends.

    Fails ``testcase`` (never skips) when the server is unreachable.
    """
    name = "hstw_test_" + secrets.token_hex(8)
    conn = _admin_connection(testcase)
    try:
        with conn.cursor() as cursor:
            cursor.execute(f'CREATE DATABASE "{name}"')
    finally:
        conn.close()

    def drop() -> None:
        admin = _admin_connection(testcase)
        try:
            with admin.cursor() as cursor:
                cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            admin.close()

    testcase.addCleanup(drop)
    dsn = postgres_dsn()
    return DatabaseConfig(
        type="postgres",
        postgres=PostgresConfig(
            host=dsn.get("host", "127.0.0.1"),
            port=int(dsn.get("port", 5432)),
            name=name,
            user=dsn.get("user", "postgres"),
            password=dsn.get("password", ""),
            max_open_conns=1,
            ssl=dsn.get("sslmode", "disable"),
        ),
    )


def open_test_database(testcase: Any, db_config: DatabaseConfig | None = None,
                       reactor: ThreadlessReactor | None = None, **kw: Any) -> Database:
    """Open and migrate a threadless ``Database`` (SQLite ``:memory:`` by default);
    it is closed when the test ends. ``kw`` goes to ``open_database`` (``schema_dir``)."""
    if reactor is None:
        reactor = ThreadlessReactor()
    if db_config is None:
        db_config = sqlite_config()
    db = resolve(open_database(db_config, reactor, threadpool=NonThreadPool(), **kw))
    testcase.addCleanup(lambda: resolve(db.close()))
    return db


class UnreachableStore:
    """
    Wraps a store; while ``down`` is true every call fails as it would with the
    database lost, otherwise it goes to the wrapped store. Provides what the
    wrapped store provides (its zope interfaces), so it stands in anywhere.
    """

    def __init__(self, store: Any) -> None:
        from zope.interface import directlyProvides, providedBy

        self.store = store
        self.down = False
        directlyProvides(self, *providedBy(store))

    def __getattr__(self, name: str) -> Callable[..., Coroutine[Any, Any, Any]]:
        method = getattr(self.store, name)

        async def call(*args: Any, **kw: Any) -> Any:
            if self.down:
                raise ConnectionError("database unreachable")
            return await method(*args, **kw)

        return call
