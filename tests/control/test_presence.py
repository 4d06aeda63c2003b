"""Tests for :mod:`headscale_tw.control.presence` and the notifier's presence hook, on SQLite and a Clock."""

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial import unittest

from headscale_tw.control.cluster import ClusterLink
from headscale_tw.control.presence import NodePresence
from headscale_tw.testing.db import open_test_database, resolve
from tests.control._harness import Harness

ME = "instance-a"


class NodePresenceTests(unittest.TestCase):
    """Streams opening and ending here become rows of ``node_sessions``, each followed by a notification."""

    def setUp(self):
        self.published = []
        db = open_test_database(self)

        async def publish(kind, ident):
            self.published.append((kind, ident, dict(resolve(db.node_sessions.rows(ident, self.h.now())))))

        self.h = Harness(self, db=db, cluster=ClusterLink(ME, publish, db.node_sessions))
        self.addCleanup(self.h.notifier.stop)
        resolve(db.instances.heartbeat(ME, 3600.0, now=self.h.now()))
        self.presence = self.h.presence
        self.x, _ = self.h.register("xray")

    def test_first_stream_writes_then_publishes(self):
        """The first stream writes this instance's row (online since now), then publishes ``online``."""
        self.h.stream(self.x)
        now = self.h.now()
        self.assertEqual(self.published, [("online", self.x.id, {ME: now})])
        self.assertEqual(self.h.state.runtime[self.x.id].online_since, now)
        self.assertTrue(self.presence.holds(self.x.id))

    def test_second_stream_and_reconnect_within_grace_write_nothing(self):
        """A second stream, or a reconnect within the offline grace, keeps the row as it is."""
        first = self.h.stream(self.x)
        self.h.stream(self.h.state.get(self.x.id))
        first.session.close()
        self.h.clock.advance(5)
        self.h.stream(self.h.state.get(self.x.id))
        self.assertEqual([kind for kind, _, _ in self.published], ["online"])

    def test_grace_end_deletes_then_publishes(self):
        """When the offline grace ends, the row is deleted, then ``offline`` is published."""
        stream = self.h.stream(self.x)
        stream.session.close()
        self.h.clock.advance(10)
        self.assertEqual(self.published[-1], ("offline", self.x.id, {}))
        self.assertFalse(self.presence.holds(self.x.id))
        self.assertIsNone(self.h.state.runtime[self.x.id].online_since)

    def test_known_since_is_carried_over(self):
        """A node already online elsewhere keeps the online_since this instance knew when it streams here."""
        earlier = self.h.now().replace(year=2020)
        runtime = self.h.state.runtime[self.x.id]
        runtime.online, runtime.elsewhere, runtime.online_since = True, True, earlier
        self.h.stream(self.x)
        self.assertEqual(self.published, [("online", self.x.id, {ME: earlier})])

    def test_release_and_close(self):
        """release deletes the row of a node that moved away; close deletes every row of this instance."""
        y, _ = self.h.register("yankee")
        self.h.stream(self.x)
        self.h.stream(y)
        resolve(self.presence.release(self.x.id))
        self.assertEqual(set(resolve(self.presence.online())), {y.id})
        self.assertEqual(resolve(self.presence.close()), [y.id])
        self.assertEqual(resolve(self.presence.online()), {})

    def test_deleted_node_is_not_held(self):
        """A node deleted before its row is written is dropped quietly (no row, no notification)."""
        node = self.h.state.get(self.x.id)
        self.h.run(self.h.db.nodes.delete(node.id))
        resolve(self.presence(node.id, True))
        self.assertEqual(self.published, [])
        self.assertFalse(self.presence.holds(node.id))

    def test_rank(self):
        """The election rank orders by online_since (unknown last), then by node id."""
        y, _ = self.h.register("yankee")
        self.h.stream(y)
        self.h.clock.advance(1)
        self.h.stream(self.x)
        self.assertLess(self.presence.rank(y.id), self.presence.rank(self.x.id))
        z, _ = self.h.register("zulu")
        self.assertLess(self.presence.rank(self.x.id), self.presence.rank(z.id))


class _SlowStore:
    """A node session store whose writes wait until the test lets each one finish."""

    def __init__(self):
        self.calls = []

    async def open(self, node_id, instance_id, since):
        d = Deferred()
        self.calls.append(("open", node_id, d))
        await d

    async def close(self, node_id, instance_id):
        d = Deferred()
        self.calls.append(("close", node_id, d))
        await d
        return True


class WriteOrderTests(unittest.TestCase):
    """One node's writes run in call order; other nodes' writes do not wait behind them."""

    def test_per_node_order(self):
        """x's close waits for x's open to finish, while y's open starts at once."""
        store, published = _SlowStore(), []

        async def publish(kind, ident):
            published.append((kind, ident))

        state = type("State", (), {"runtime": {}})()
        presence = NodePresence(store, ME, publish, state, Clock())
        presence(1, True)
        closed = presence(1, False)
        presence(2, True)
        self.assertEqual([(kind, node) for kind, node, _ in store.calls], [("open", 1), ("open", 2)])
        store.calls[1][2].callback(None)
        store.calls[0][2].callback(None)
        self.assertEqual([(kind, node) for kind, node, _ in store.calls], [("open", 1), ("open", 2), ("close", 1)])
        self.assertNoResult(closed)
        store.calls[2][2].callback(None)
        self.successResultOf(closed)
        self.assertEqual(published, [("online", 2), ("online", 1), ("offline", 1)])
