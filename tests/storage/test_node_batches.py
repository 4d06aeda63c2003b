"""
Tests for the coalesced soft updates of headscale_tw.storage.stores.nodes, on SQLite and PostgreSQL.
"""

from twisted.internet.defer import CancelledError, Deferred
from twisted.trial import unittest

from headscale_tw.errors import NotFound
from headscale_tw.storage.database import open_database
from headscale_tw.storage.models import Node
from headscale_tw.testing.db import (
    NonThreadPool,
    ThreadlessReactor,
    create_postgres_database,
    resolve,
    sqlite_config,
)


class _QueuedThreadPool(NonThreadPool):
    """Runs nothing until the test says so: a busy database, one interaction at a time."""

    def __init__(self):
        self.queue = []

    def callInThreadWithCallback(self, onResult, func, *args, **kw):
        self.queue.append((onResult, func, args, kw))

    def run_next(self):
        onResult, func, args, kw = self.queue.pop(0)
        NonThreadPool.callInThreadWithCallback(self, onResult, func, *args, **kw)

    def run_all(self):
        while self.queue:
            self.run_next()


def _results(*coroutines):
    """Start each coroutine; return the Deferreds and a list their outcomes land in."""
    outcomes: dict[int, object] = {}
    deferreds = []
    for i, coroutine in enumerate(coroutines):
        d = Deferred.fromCoroutine(coroutine)
        d.addBoth(lambda r, i=i: outcomes.__setitem__(i, r))
        deferreds.append(d)
    return deferreds, outcomes


class NodeBatchTestsMixin:
    """Soft updates submitted while the database is busy share one transaction; each caller gets its row."""

    def make_config(self):
        raise NotImplementedError

    def setUp(self):
        self.threads = _QueuedThreadPool()
        d = Deferred.fromCoroutine(open_database(self.make_config(), ThreadlessReactor(), threadpool=self.threads))
        self.threads.run_all()
        self.db = resolve(d)
        self.addCleanup(self._close)
        self.nodes = self.db.nodes
        self.ids = []
        for n in range(3):
            d = Deferred.fromCoroutine(self.nodes.create(Node(
                id=0, machine_key=f"mkey:{n:064x}", node_key=f"nodekey:{n:064x}",
                hostname=f"h{n}", given_name=f"h{n}", user_id=None)))
            self.threads.run_all()
            self.ids.append(resolve(d).id)

    def _close(self):
        d = Deferred.fromCoroutine(self.db.close())
        self.threads.run_all()
        return resolve(d)

    def test_busy_database_coalesces(self):
        """Three endpoint updates queued behind one interaction run as one transaction, in order."""
        a, b, c = self.ids
        _, outcomes = _results(
            self.nodes.update(a, endpoints=("1.1.1.1:1",)),
            self.nodes.update(b, endpoints=("2.2.2.2:2",)),
            self.nodes.update(a, endpoints=("3.3.3.3:3",), disco_key="discokey:" + "a" * 64),
        )
        self.assertEqual(len(self.threads.queue), 1)
        self.threads.run_all()
        self.assertEqual((self.nodes.batches, self.nodes.batched_updates), (1, 3))
        self.assertEqual(outcomes[0].endpoints, ("1.1.1.1:1",))
        self.assertEqual(outcomes[1].endpoints, ("2.2.2.2:2",))
        self.assertEqual((outcomes[2].endpoints, outcomes[2].disco_key), (("3.3.3.3:3",), "discokey:" + "a" * 64))
        stored = self._get(a)
        self.assertEqual(stored.endpoints, ("3.3.3.3:3",))

    def _submitted(self):
        """Interactions submitted to the pool and not finished (on SQLite all but the first wait in the
        pool's group-commit queue rather than the thread pool's)."""
        stats = self.db.pool.stats()
        return stats.in_use + stats.waiting

    def _get(self, node_id):
        d = Deferred.fromCoroutine(self.nodes.get(node_id))
        self.threads.run_all()
        return resolve(d)

    def test_started_transaction_takes_no_more(self):
        """An update submitted after the batch's transaction began starts a new batch."""
        a, b, _ = self.ids
        _results(self.nodes.update(a, endpoints=("1.1.1.1:1",)))
        self.threads.run_all()
        _, outcomes = _results(self.nodes.update(b, endpoints=("2.2.2.2:2",)))
        self.threads.run_all()
        self.assertEqual(self.nodes.batches, 2)
        self.assertEqual(outcomes[0].endpoints, ("2.2.2.2:2",))

    def test_missing_node_fails_alone(self):
        """A deleted node's update raises NotFound; the others in its batch succeed."""
        a, b, _ = self.ids
        _, outcomes = _results(
            self.nodes.update(a, last_seen=None),
            self.nodes.update(999, endpoints=()),
            self.nodes.update(b, hostinfo={"OS": "linux"}),
        )
        self.threads.run_all()
        self.assertEqual(self.nodes.batches, 1)
        self.assertEqual(outcomes[0].id, a)
        outcomes[1].trap(NotFound)
        self.assertEqual(outcomes[2].hostinfo, {"OS": "linux"})

    def test_constrained_columns_not_coalesced(self):
        """An update that sets a unique or foreign-key column runs in its own transaction."""
        a, b, _ = self.ids
        _, outcomes = _results(
            self.nodes.update(a, endpoints=("1.1.1.1:1",)),
            self.nodes.update(b, hostname="renamed", given_name="renamed"),
        )
        self.assertEqual(self._submitted(), 2)
        self.threads.run_all()
        self.assertEqual((self.nodes.batches, self.nodes.batched_updates), (1, 1))
        self.assertEqual(outcomes[1].given_name, "renamed")

    def test_other_write_keeps_submission_order(self):
        """A soft update submitted after a constrained write does not join an earlier batch (it would run first)."""
        a, b, _ = self.ids
        _, outcomes = _results(
            self.nodes.update(b, endpoints=("1.1.1.1:1",)),
            self.nodes.update(a, hostname="renamed", hostinfo={"Hostname": "renamed"}),
            self.nodes.update(a, hostinfo={"Hostname": "newest"}),
        )
        self.assertEqual(self._submitted(), 3)
        self.threads.run_all()
        self.assertEqual(self.nodes.batches, 2)
        self.assertEqual(self._get(a).hostinfo, {"Hostname": "newest"})

    def test_cancelled_caller_leaves_batch(self):
        """Cancelling one caller (its client went away) neither cancels nor loses the others' writes."""
        a, b, _ = self.ids
        deferreds, outcomes = _results(
            self.nodes.update(a, endpoints=("1.1.1.1:1",)),
            self.nodes.update(b, endpoints=("2.2.2.2:2",)),
        )
        deferreds[0].cancel()
        self.threads.run_all()
        outcomes[0].trap(CancelledError)
        self.assertEqual(outcomes[1].endpoints, ("2.2.2.2:2",))
        self.assertEqual(self._get(a).endpoints, ("1.1.1.1:1",))

    def test_failed_transaction_fails_every_caller(self):
        """When the batch's transaction fails, every caller sees the error and the next update starts afresh."""
        a, b, _ = self.ids
        _, outcomes = _results(
            self.nodes.update(a, endpoints=("1.1.1.1:1",)),
            self.nodes.update(b, endpoints=("2.2.2.2:2",)),
        )
        onResult, func, args, kw = self.threads.queue.pop(0)
        onResult(False, _failure(RuntimeError("connection lost")))
        outcomes[0].trap(RuntimeError)
        outcomes[1].trap(RuntimeError)
        _, later = _results(self.nodes.update(a, endpoints=("3.3.3.3:3",)))
        self.threads.run_all()
        self.assertEqual(later[0].endpoints, ("3.3.3.3:3",))
        self.assertEqual(self.nodes.batches, 2)


def _failure(error):
    from twisted.python.failure import Failure

    return Failure(error)


class SqliteNodeBatchTests(NodeBatchTestsMixin, unittest.TestCase):
    """Coalesced updates on SQLite ``:memory:``."""

    def make_config(self):
        return sqlite_config()


class PostgresNodeBatchTests(NodeBatchTestsMixin, unittest.TestCase):
    """Coalesced updates on a fresh PostgreSQL database."""

    def make_config(self):
        return create_postgres_database(self)
