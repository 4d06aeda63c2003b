"""Payload codec, publishing wrapper and feed lifecycle (timers, backoff) of the change feed."""

from __future__ import annotations

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from headscale_tw.storage.changefeed import (
    Change,
    ChangeFeed,
    PublishingDatabase,
    encode_change,
    parse_change,
)
from headscale_tw.testing.db import open_test_database, resolve


class PayloadTests(TestCase):
    """NOTIFY payloads round-trip and malformed ones are refused with a reason."""

    def test_round_trip(self):
        """An encoded change parses back to the same Change."""
        self.assertEqual(parse_change(encode_change("abc", "node", 7)), Change("abc", "node", 7))

    def test_malformed(self):
        """Wrong shape, unknown kind and non-numeric id are each named."""
        for payload, word in (("abc node", "must be"), ("abc boom 1", "unknown kind"), ("abc node x", "not a number")):
            with self.assertRaises(ValueError) as cm:
                parse_change(payload)
            self.assertIn(word, str(cm.exception))

    def test_unknown_kind_not_encoded(self):
        """Encoding refuses a kind peers would not understand."""
        self.assertRaises(ValueError, encode_change, "abc", "route", 1)


class PublishingDatabaseTests(TestCase):
    """Writes through the wrapper publish their kind and id after they succeed."""

    def test_writes_publish(self):
        """User create/rename and policy set publish; reads do not."""
        db = open_test_database(self)
        sent = []

        async def publish(kind, ident):
            sent.append((kind, ident))

        wrapped = PublishingDatabase(db, publish)
        user = resolve(wrapped.users.create("alice"))
        resolve(wrapped.users.rename(user.id, "alicia"))
        resolve(wrapped.users.list())
        resolve(wrapped.policies.set("{}"))
        self.assertEqual(sent, [("user", user.id), ("user", user.id), ("policy", 0)])
        self.assertIs(wrapped.pool, db.pool)

    def test_failed_write_does_not_publish(self):
        """A write that raises publishes nothing."""
        db = open_test_database(self)
        sent = []

        async def publish(kind, ident):
            sent.append((kind, ident))

        wrapped = PublishingDatabase(db, publish)
        self.assertRaises(Exception, resolve, wrapped.users.delete(12345))
        self.assertEqual(sent, [])


class FakeConnection:
    """Stands in for a txpostgres Connection."""

    def __init__(self, listen=None):
        self.observers = set()
        self.closed = False
        self.operations = []
        self.queries = []
        self._listen = listen

    def addNotifyObserver(self, observer):
        self.observers.add(observer)

    def removeNotifyObserver(self, observer):
        self.observers.discard(observer)

    def runOperation(self, sql):
        self.operations.append(sql)
        return self._listen if self._listen is not None else succeed(None)

    def runQuery(self, sql):
        d = Deferred()
        self.queries.append(d)
        return d

    def close(self):
        self.closed = True


class ChangeFeedLifecycleTests(TestCase):
    """Connect, probe, back off and stop, on a Clock."""

    def setUp(self):
        self.clock = Clock()
        self.attempts = []
        self.outcomes = []
        self.resyncs = 0

    def connect(self):
        self.attempts.append(self.clock.seconds())
        outcome = self.outcomes.pop(0)
        return outcome if isinstance(outcome, Deferred) else (fail(outcome) if isinstance(outcome, Exception) else succeed(outcome))

    def feed(self):
        feed = ChangeFeed(self.connect, pool=None, clock=self.clock, probe_interval=15, probe_timeout=5,
                          initial_backoff=1, max_backoff=4)

        def resync():
            self.resyncs += 1

        feed.subscribe(lambda change: None, resync)
        return feed

    def test_backoff_doubles_and_resets(self):
        """Failed connects retry after 1, 2, 4, 4 seconds; success listens and resyncs."""
        conn = FakeConnection()
        self.outcomes = [OSError("refused")] * 4 + [conn]
        feed = self.feed()
        feed.start()
        for step in (1, 2, 4, 4):
            self.clock.advance(step)
        self.assertEqual(self.attempts, [0, 1, 3, 7, 11])
        self.assertTrue(feed.listening)
        self.assertEqual(conn.operations, ["LISTEN headscale_changes"])
        self.assertEqual(self.resyncs, 1)
        feed.stop()
        self.assertTrue(conn.closed)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_probe_timeout_reconnects(self):
        """A probe that does not answer in time drops the connection and reconnects, then resyncs."""
        first, second = FakeConnection(), FakeConnection()
        self.outcomes = [first, second]
        feed = self.feed()
        feed.start()
        self.clock.advance(15)
        self.assertEqual(len(first.queries), 1)
        self.clock.advance(5)
        self.assertTrue(first.closed)
        self.assertFalse(feed.listening)
        self.clock.advance(1)
        self.assertTrue(feed.listening)
        self.assertEqual(self.resyncs, 2)
        feed.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_probe_success_keeps_probing(self):
        """An answered probe schedules the next one and nothing else."""
        conn = FakeConnection()
        self.outcomes = [conn]
        feed = self.feed()
        feed.start()
        self.clock.advance(15)
        conn.queries[0].callback([(1,)])
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.assertFalse(conn.closed)
        feed.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_stop_while_connecting(self):
        """Stopping while a connect is pending cancels it and leaves no timer."""
        pending = Deferred()
        self.outcomes = [pending]
        feed = self.feed()
        feed.start()
        feed.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.resyncs, 0)

    def test_stop_while_waiting_to_retry(self):
        """Stopping during the backoff cancels the retry timer."""
        self.outcomes = [OSError("refused")]
        feed = self.feed()
        feed.start()
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        feed.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])
