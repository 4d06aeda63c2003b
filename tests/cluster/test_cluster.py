"""
Two control planes on one PostgreSQL database, joined by LISTEN/NOTIFY change feeds.

These tests use the real reactor for the notifications (a Clock drives each
plane); every wait is bounded by a timeout.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred, DeferredList, inlineCallbacks
from twisted.trial.unittest import TestCase

from headscale_tw.storage.changefeed import Change
from headscale_tw.testing.db import create_postgres_database
from tests.cluster._cluster import Member, wait_until
from tests.control._harness import key

POLICY_ALL = '{"acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}]}'


class ClusterSyncTests(TestCase):
    """Changes made on one instance reach the other instance's state and map sessions."""

    timeout = 60

    @inlineCallbacks
    def setUp(self):
        self.db_config = create_postgres_database(self)
        self.a = Member(self, self.db_config)
        self.b = Member(self, self.db_config)
        yield DeferredList([self.a.start(), self.b.start()], fireOnOneErrback=True, consumeErrors=True)

    def peer_names(self, stream):
        return sorted(p["Name"].split(".")[0] for p in stream.applier.peers.values())

    @inlineCallbacks
    def test_node_registered_elsewhere_becomes_a_peer(self):
        """A node registered on A shows up in the peer list of a session streaming on B."""
        y, _ = self.b.h.register("yankee")
        stream = self.b.h.stream(y)
        self.assertEqual(self.peer_names(stream), [])
        x, _ = self.a.h.register("xray")
        yield wait_until(self.b.sync, lambda: self.peer_names(stream) == ["xray"])
        self.assertEqual(self.b.h.state.get(x.id).ipv4, x.ipv4)
        stream.applier.check()

    @inlineCallbacks
    def test_online_status_crosses_instances(self):
        """A stream opening on A marks the node online in B's sessions; its end marks it offline."""
        x, _ = self.a.h.register("xray")
        y, _ = self.b.h.register("yankee")
        yield wait_until(self.b.sync, lambda: x.id in self.b.h.state.nodes)
        yield wait_until(self.a.sync, lambda: y.id in self.a.h.state.nodes)
        on_b = self.b.h.stream(y)
        on_a = self.a.h.stream(x)
        yield wait_until(self.b.sync, lambda: on_b.applier.peers.get(x.id, {}).get("Online") is True)
        self.assertTrue(self.b.h.state.runtime[x.id].elsewhere)
        on_a.session.close()
        self.a.h.clock.advance(11)  # past the offline grace period on A
        yield wait_until(self.b.sync, lambda: on_b.applier.peers[x.id].get("Online") is False)
        self.assertFalse(self.b.h.state.runtime[x.id].elsewhere)

    @inlineCallbacks
    def test_delete_elsewhere_removes_the_peer(self):
        """Deleting a node on A removes it from B's state and from B's sessions."""
        x, _ = self.a.h.register("xray")
        y, _ = self.b.h.register("yankee")
        stream = self.b.h.stream(y)
        yield wait_until(self.b.sync, lambda: x.id in stream.applier.peers)
        self.a.h.run(self.a.h.state.delete_node(x.id))
        self.a.h.notifier.node_removed(x.id)
        yield wait_until(self.b.sync, lambda: x.id not in stream.applier.peers)
        self.assertNotIn(x.id, self.b.h.state.nodes)
        self.assertIsNone(self.b.h.state.by_machine_key(x.machine_key))

    @inlineCallbacks
    def test_rename_elsewhere_reaches_sessions(self):
        """Renaming a node on A changes its name in B's sessions, including its own stream on B."""
        x, _ = self.a.h.register("xray")
        yield wait_until(self.b.sync, lambda: x.id in self.b.h.state.nodes)
        y, _ = self.b.h.register("yankee")
        own = self.b.h.stream(self.b.h.state.get(x.id))  # x streams on B
        peer = self.b.h.stream(y)
        self.a.h.run(self.a.h.admin.rename(x.id, "renamed"))
        yield wait_until(self.b.sync, lambda: "renamed" in self.peer_names(peer))
        self.assertTrue(own.applier.node["Name"].startswith("renamed."))

    @inlineCallbacks
    def test_user_rename_elsewhere(self):
        """A user renamed on A is renamed in B's cache."""
        user = self.a.h.user
        self.a.h.run(self.a.h.db.users.rename(user.id, "alicia"))
        yield wait_until(self.b.sync, lambda: self.b.h.state.users[user.id].name == "alicia")

    @inlineCallbacks
    def test_policy_set_elsewhere(self):
        """A policy stored on A is loaded by B (database mode)."""
        a = Member(self, self.db_config, policy=POLICY_ALL)
        b = Member(self, self.db_config, policy=POLICY_ALL)
        yield DeferredList([a.start(), b.start()], fireOnOneErrback=True, consumeErrors=True)
        text = '{"acls": [{"action": "accept", "src": ["alice@example.com"], "dst": ["*:22"]}]}'
        a.h.run(a.h.set_policy(text))
        yield wait_until(b.sync, lambda: b.h.policy.text == text)

    @inlineCallbacks
    def test_concurrent_registrations_get_distinct_addresses_and_names(self):
        """Registrations racing on A and B (neither has heard of the other's yet) get distinct IPs and names."""
        self.a.feed.stop()  # hold A's notifications back so both allocate from the same view
        self.b.feed.stop()
        xs = [self.a.h.register("laptop")[0] for _ in range(3)]
        ys = [self.b.h.register("laptop")[0] for _ in range(3)]
        nodes = xs + ys
        self.assertEqual(len({n.ipv4 for n in nodes}), 6)
        self.assertEqual(len({n.ipv6 for n in nodes}), 6)
        self.assertEqual(len({n.given_name for n in nodes}), 6)
        stored = self.a.h.run(self.a.h.db.nodes.list())
        self.assertEqual(sorted(n.id for n in stored), sorted(n.id for n in nodes))
        # Once the feed is back, the resync teaches each side the other's nodes.
        self.b.resyncs = 0
        self.b.feed.start()
        yield wait_until(self.b.sync, lambda: self.b.resyncs >= 1)
        self.assertEqual(set(self.b.h.state.nodes), {n.id for n in nodes})

    def test_own_notifications_are_ignored(self):
        """The feed does not hand an instance its own changes."""
        seen = []
        self.a.feed.subscribe(seen.append, lambda: None)
        self.a.feed._notified(type("N", (), {"channel": "headscale_changes",
                                               "payload": f"{self.a.feed.instance_id} node 1"})())
        self.a.feed._notified(type("N", (), {"channel": "headscale_changes", "payload": "other node 2"})())
        self.assertEqual(seen, [Change("other", "node", 2)])

    @inlineCallbacks
    def test_reconnect_resyncs(self):
        """After the feed's connection is lost, it reconnects and resyncs, catching changes it missed."""
        self.b.feed.connection_lost()
        self.assertFalse(self.b.feed.listening)
        x, _ = self.a.h.register("xray")  # B is not listening: this notification is lost to B
        yield wait_until(self.b.sync, lambda: x.id in self.b.h.state.nodes)
        self.assertEqual(self.b.feed.listens, 2)

    def test_same_machine_key_elsewhere_is_refused(self):
        """A machine key already stored (registered on another instance) is not inserted twice."""
        from headscale_tw.errors import AlreadyExists

        x, _ = self.a.h.register("xray")
        self.b.feed.stop()
        self.b.h.run(self.b.h.state.load())
        node = self.b.h.state.get(x.id)
        self.assertEqual(node.machine_key, x.machine_key)
        failure = self.failureResultOf(
            Deferred.fromCoroutine(
                self.b.h.state.create_node(machine_key=x.machine_key, node_key=key("nodekey"),
                                           hostname="dup", user_id=x.user_id)),
            AlreadyExists)
        self.assertIn("machine key", str(failure.value))

    @inlineCallbacks
    def test_backend_killed_reconnects_at_once(self):
        """When PostgreSQL ends the listening session, the feed notices without waiting for its probe,
        reconnects and resyncs."""
        import psycopg2

        from headscale_tw.testing.db import postgres_dsn

        pid = self.b.feed._conn.get_backend_pid()
        admin = psycopg2.connect(**postgres_dsn())
        try:
            admin.autocommit = True
            with admin.cursor() as cursor:
                cursor.execute("SELECT pg_terminate_backend(%s)", (pid,))
        finally:
            admin.close()
        x, _ = self.a.h.register("xray")
        yield wait_until(self.b.sync, lambda: self.b.feed.listens == 2 and x.id in self.b.h.state.nodes, timeout=10)
