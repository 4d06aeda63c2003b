"""
Tests for group commit in headscale_tw.storage.database: SQLite interactions submitted while one runs
share the next transaction, each in its own savepoint.
"""

from twisted.internet.defer import ensureDeferred
from twisted.trial import unittest

from headscale_tw.storage.database import make_pool
from headscale_tw.storage.group_commit import GROUP_COMMIT_MAX
from headscale_tw.testing.db import NonThreadPool, ThreadlessReactor, resolve, sqlite_config


class _CountingThreadPool(NonThreadPool):
    """Queues jobs until the test runs them, and counts every job it was given."""

    def __init__(self):
        self.queue = []
        self.jobs = 0

    def callInThreadWithCallback(self, onResult, func, *args, **kw):
        self.jobs += 1
        self.queue.append((onResult, func, args, kw))

    def run_all(self):
        while self.queue:
            onResult, func, args, kw = self.queue.pop(0)
            NonThreadPool.callInThreadWithCallback(self, onResult, func, *args, **kw)


def _insert_txn(txn, value):
    txn.execute("INSERT INTO t (x) VALUES (?)", (value,))
    return value


def _failing_insert_txn(txn, value):
    txn.execute("INSERT INTO t (x) VALUES (?)", (value,))
    raise ValueError(f"refused {value}")


def _read_txn(txn):
    return [x for (x,) in txn.query("SELECT x FROM t ORDER BY rowid")]


class GroupCommitTests(unittest.TestCase):
    """Interactions queued behind a running one are committed together, with their own outcomes."""

    def setUp(self):
        self.threads = _CountingThreadPool()
        self.pool = make_pool(sqlite_config(), ThreadlessReactor(), threadpool=self.threads)
        self.addCleanup(self._close)
        self._finish(self.pool.run_interaction("ddl", lambda txn: txn.execute("CREATE TABLE t (x INTEGER UNIQUE)")))
        self.threads.jobs = 0
        self.before = self.pool.transactions

    def _transactions(self):
        return self.pool.transactions - self.before

    def _close(self):
        d = ensureDeferred(self.pool.close())
        self.threads.run_all()
        return resolve(d)

    def _finish(self, coroutine):
        d = ensureDeferred(coroutine)
        self.threads.run_all()
        return self.successResultOf(d)

    def _read(self):
        return self._finish(self.pool.run_interaction("read", _read_txn))

    def test_queued_interactions_share_one_transaction(self):
        """One running insert and five submitted meanwhile take two transactions, and each caller gets its result."""
        first = ensureDeferred(self.pool.run_interaction("insert", _insert_txn, 0))
        queued = [ensureDeferred(self.pool.run_interaction("insert", _insert_txn, v)) for v in range(1, 6)]
        self.assertEqual(len(self.threads.queue), 1)
        self.threads.run_all()
        self.assertEqual(self.successResultOf(first), 0)
        self.assertEqual([self.successResultOf(d) for d in queued], [1, 2, 3, 4, 5])
        self.assertEqual((self.threads.jobs, self._transactions()), (2, 2))
        self.assertEqual(self._read(), [0, 1, 2, 3, 4, 5])

    def test_no_result_before_the_commit(self):
        """A queued interaction's caller waits for its group's transaction, not only for its own turn."""
        first = ensureDeferred(self.pool.run_interaction("insert", _insert_txn, 0))
        second = ensureDeferred(self.pool.run_interaction("insert", _insert_txn, 1))
        onResult, func, args, kw = self.threads.queue.pop(0)
        NonThreadPool.callInThreadWithCallback(self.threads, onResult, func, *args, **kw)
        self.successResultOf(first)
        self.assertNoResult(second)  # its group is now submitted, not finished
        self.assertEqual(len(self.threads.queue), 1)
        self.threads.run_all()
        self.assertEqual(self.successResultOf(second), 1)

    def test_failure_is_rolled_back_alone(self):
        """An interaction that raises in a group loses only its own writes; the others commit."""
        first = ensureDeferred(self.pool.run_interaction("insert", _insert_txn, 0))
        ok_before = ensureDeferred(self.pool.run_interaction("insert", _insert_txn, 1))
        failing = ensureDeferred(self.pool.run_interaction("insert", _failing_insert_txn, 2))
        duplicate = ensureDeferred(self.pool.run_interaction("insert", _insert_txn, 1))
        ok_after = ensureDeferred(self.pool.run_interaction("insert", _insert_txn, 3))
        self.threads.run_all()
        self.successResultOf(first)
        self.assertEqual(self.successResultOf(ok_before), 1)
        self.assertEqual(str(self.failureResultOf(failing, ValueError).value), "refused 2")
        self.failureResultOf(duplicate)  # the unique index refuses it, alone
        self.assertEqual(self.successResultOf(ok_after), 3)
        self.assertEqual(self._transactions(), 2)
        self.assertEqual(self._read(), [0, 1, 3])

    def test_groups_are_bounded(self):
        """At most GROUP_COMMIT_MAX interactions share a transaction."""
        first = ensureDeferred(self.pool.run_interaction("insert", _insert_txn, -1))
        queued = [ensureDeferred(self.pool.run_interaction("insert", _insert_txn, v))
                  for v in range(GROUP_COMMIT_MAX + 1)]
        self.threads.run_all()
        self.successResultOf(first)
        self.assertEqual([self.successResultOf(d) for d in queued], list(range(GROUP_COMMIT_MAX + 1)))
        self.assertEqual(self._transactions(), 3)

    def test_raw_connection_use_keeps_its_place(self):
        """A raw connection use runs alone, after what was submitted before it and before what came after."""
        order = []

        def note_txn(txn, name):
            order.append(name)

        def raw(connection):
            order.append("raw")

        first = ensureDeferred(self.pool.run_interaction("a", note_txn, "a"))
        before = ensureDeferred(self.pool.run_interaction("b", note_txn, "b"))
        middle = ensureDeferred(self.pool.run_with_connection("raw", raw))
        after = ensureDeferred(self.pool.run_interaction("c", note_txn, "c"))
        self.threads.run_all()
        for d in (first, before, middle, after):
            self.successResultOf(d)
        self.assertEqual(order, ["a", "b", "raw", "c"])
        self.assertEqual(self._transactions(), 4)

    def test_inline_pool_runs_long_chains_flat(self):
        """With a pool that answers at once, thousands of chained interactions do not nest calls."""
        pool = make_pool(sqlite_config(), ThreadlessReactor(), threadpool=NonThreadPool())
        self.addCleanup(lambda: resolve(pool.close()))
        resolve(pool.run_interaction("ddl", lambda txn: txn.execute("CREATE TABLE t (x INTEGER)")))

        async def chain():
            for v in range(3000):
                await pool.run_interaction("insert", _insert_txn, v)
            return await pool.run_interaction("count", lambda txn: txn.query_one("SELECT count(*) FROM t")[0])

        self.assertEqual(resolve(chain()), 3000)
