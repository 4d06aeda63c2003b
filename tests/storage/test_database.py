"""
Tests for headscale_tw.storage.database and the threadless fixture in headscale_tw.testing.db.
"""

from datetime import datetime, timedelta, timezone

from twisted.internet.defer import ensureDeferred
from twisted.trial import unittest

from headscale_tw.config.model import DatabaseConfig
from headscale_tw.storage.database import (
    DatabaseClosed,
    PostgresEngine,
    SqliteEngine,
    UniqueViolation,
    make_pool,
    split_sql,
    to_datetime,
)
from headscale_tw.testing.db import NonThreadPool, ThreadlessReactor, resolve, sqlite_config


class _ManualThreadPool(NonThreadPool):
    """Queues work until the test runs it, to observe work in flight."""

    def __init__(self):
        self.queue = []

    def callInThreadWithCallback(self, onResult, func, *args, **kw):
        self.queue.append((onResult, func, args, kw))

    def run_all(self):
        while self.queue:
            onResult, func, args, kw = self.queue.pop(0)
            NonThreadPool.callInThreadWithCallback(self, onResult, func, *args, **kw)


def _pool(testcase, threadpool=None):
    pool = make_pool(sqlite_config(), ThreadlessReactor(), threadpool=threadpool or NonThreadPool())
    testcase.addCleanup(lambda: resolve(pool.close()) if not pool._closing else None)
    return pool


class DatabasePoolTests(unittest.TestCase):
    """The async API over adbapi."""

    def test_transaction_commits(self):
        """A function that returns commits; its result comes back."""
        pool = _pool(self)
        resolve(pool.run_interaction("ddl", lambda txn: txn.execute("CREATE TABLE t (x INTEGER)")))

        def insert_txn(txn, value):
            txn.execute("INSERT INTO t (x) VALUES (?)", (value,))
            return value * 2

        self.assertEqual(resolve(pool.run_interaction("insert", insert_txn, 21)), 42)
        self.assertEqual(resolve(pool.run_interaction("read", lambda txn: txn.query("SELECT x FROM t"))), [(21,)])

    def test_transaction_rolls_back(self):
        """A function that raises rolls back everything it wrote, DDL included."""
        pool = _pool(self)

        def failing_txn(txn):
            txn.execute("CREATE TABLE t (x INTEGER)")
            txn.execute("INSERT INTO t (x) VALUES (1)")
            raise ValueError("boom")

        self.assertRaises(ValueError, resolve, pool.run_interaction("fail", failing_txn))
        rows = resolve(pool.run_interaction("read", lambda txn: txn.query("SELECT name FROM sqlite_master")))
        self.assertEqual(rows, [])

    def test_unique_violation(self):
        """A unique violation is UniqueViolation naming table and column."""
        pool = _pool(self)
        resolve(pool.run_interaction("ddl", lambda txn: txn.execute_script(
            "CREATE TABLE t (name TEXT); CREATE UNIQUE INDEX uq_t_name ON t (name);")))

        def insert_txn(txn):
            txn.execute("INSERT INTO t (name) VALUES ('a')")
            txn.execute("INSERT INTO t (name) VALUES ('a')")

        error = self.assertRaises(UniqueViolation, resolve, pool.run_interaction("dup", insert_txn))
        self.assertEqual((error.table, error.field), ("t", "name"))

    def test_close_waits_for_work(self):
        """close() finishes only after in-flight interactions, and later work is refused."""
        threadpool = _ManualThreadPool()
        pool = _pool(self, threadpool)
        work = ensureDeferred(pool.run_interaction("slow", lambda txn: txn.query("SELECT 1")))
        closing = ensureDeferred(pool.close())
        self.assertNoResult(work)
        self.assertNoResult(closing)
        self.assertRaises(DatabaseClosed, resolve, pool.run_interaction("late", lambda txn: None))
        threadpool.run_all()
        self.assertEqual(self.successResultOf(work), [(1,)])
        self.successResultOf(closing)
        self.assertEqual(pool._pool.connections, {})

    def test_unknown_type(self):
        """An unknown database type is a ValueError naming it."""
        error = self.assertRaises(ValueError, make_pool, DatabaseConfig(type="mysql"), ThreadlessReactor())
        self.assertIn("mysql", str(error))


class EngineTests(unittest.TestCase):
    """What differs between engines, hidden from stores."""

    def test_paramstyle(self):
        """SQL is written with ? once; psycopg2 gets %s and literal % doubled."""
        self.assertEqual(SqliteEngine().convert_sql("a = ? AND b LIKE 'x%'"), "a = ? AND b LIKE 'x%'")
        self.assertEqual(PostgresEngine().convert_sql("a = ? AND b LIKE 'x%'"), "a = %s AND b LIKE 'x%%'")

    def test_sqlite_times_sort(self):
        """SQLite stores UTC text of fixed width, so text order is time order."""
        engine = SqliteEngine()
        local = timezone(timedelta(hours=2))
        a = engine.adapt(datetime(2025, 1, 1, 1, 0, tzinfo=local))  # 23:00 UTC the day before
        b = engine.adapt(datetime(2024, 12, 31, 23, 30, tzinfo=timezone.utc))
        self.assertEqual(a, "2024-12-31 23:00:00.000000+00:00")
        self.assertLess(a, b)
        self.assertEqual(to_datetime(a), datetime(2024, 12, 31, 23, 0, tzinfo=timezone.utc))

    def test_to_datetime(self):
        """Stored times come back aware and in UTC; naive ones are taken as UTC."""
        self.assertIsNone(to_datetime(None))
        self.assertEqual(to_datetime(datetime(2025, 1, 1)), datetime(2025, 1, 1, tzinfo=timezone.utc))
        self.assertEqual(
            to_datetime(datetime(2025, 1, 1, 2, tzinfo=timezone(timedelta(hours=2)))).tzinfo, timezone.utc
        )

    def test_split_sql(self):
        """Scripts split on statement ends, not on semicolons inside literals; comments go."""
        script = "-- header\nCREATE TABLE a (x TEXT DEFAULT ';');\n\nINSERT INTO a VALUES ('b;c');\n-- end\n"
        self.assertEqual(split_sql(script), ["CREATE TABLE a (x TEXT DEFAULT ';')", "INSERT INTO a VALUES ('b;c')"])
        self.assertEqual(split_sql("SELECT 'it''s;'; SELECT 2 -- x;y\n;"), ["SELECT 'it''s;'", "SELECT 2"])


class ThreadlessFixtureTests(unittest.TestCase):
    """The test fixture runs the real pool without threads."""

    def test_no_threads(self):
        """Interactions run in the calling thread and finish before run_interaction returns."""
        import threading

        pool = _pool(self)
        seen = resolve(pool.run_interaction("where", lambda txn: threading.get_ident()))
        self.assertEqual(seen, threading.get_ident())

    def test_resolve_unfinished(self):
        """resolve() refuses a coroutine that would need to wait."""
        from twisted.internet.defer import Deferred

        self.assertRaises(AssertionError, resolve, Deferred())

    def test_postgres_unreachable_fails(self):
        """Without a reachable PostgreSQL the helper fails the test (never skips), saying what to run."""
        from unittest import mock

        from headscale_tw.testing.db import create_postgres_database

        class _Recorder:
            def fail(self, message):
                raise self.failureException(message)

            failureException = AssertionError

            def addCleanup(self, f):
                raise AssertionError("nothing to clean up")

        with mock.patch.dict("os.environ", {"HEADSCALE_TEST_PG_DSN": "host=127.0.0.1 port=1 user=postgres"}):
            error = self.assertRaises(AssertionError, create_postgres_database, _Recorder())
        self.assertIn("HEADSCALE_TEST_PG_DSN", str(error))
        self.assertIn("ensure-test-services", str(error))
