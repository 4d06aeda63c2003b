"""Tests for :mod:`headscale_tw.storage.stores.node_sessions` on SQLite and PostgreSQL."""

from datetime import datetime, timedelta, timezone

from twisted.trial import unittest
from zope.interface.verify import verifyObject

from headscale_tw.errors import NotFound
from headscale_tw.interfaces import INodeSessionStore
from headscale_tw.storage.models import Node
from headscale_tw.testing.db import create_postgres_database, open_test_database, resolve, sqlite_config

T0 = datetime(2026, 12, 4, 7, 0, tzinfo=timezone.utc)


class NodeSessionStoreTestsMixin:
    """Behaviour shared by both engines."""

    def make_config(self):
        raise NotImplementedError

    def setUp(self):
        self.db = open_test_database(self, self.make_config())
        self.store = self.db.node_sessions
        user = resolve(self.db.users.create("alice"))
        self.nodes = [resolve(self.db.nodes.create(Node(
            id=0, machine_key=f"mkey:{n:064x}", node_key=f"nodekey:{n:064x}", disco_key="", hostname=f"n{n}",
            given_name=f"n{n}", user_id=user.id, ipv4=f"100.64.0.{n}", ipv6=f"fd7a:115c:a1e0::{n}")))
            for n in (1, 2, 3)]
        for ident in ("a", "b"):
            resolve(self.db.instances.heartbeat(ident, 6.0, now=T0))

    def test_provides_interface(self):
        """The store provides INodeSessionStore."""
        verifyObject(INodeSessionStore, self.store)

    def test_pruned_instance_takes_its_sessions(self):
        """Pruning an instance gone for over an hour deletes its node sessions; a recent one keeps its own."""
        x, y = self.nodes[0].id, self.nodes[1].id
        resolve(self.store.open(x, "a", T0))
        resolve(self.store.open(y, "b", T0))
        resolve(self.db.instances.heartbeat("b", 6.0, now=T0 + timedelta(minutes=50)))
        later = T0 + timedelta(hours=1, seconds=7)
        self.assertEqual(resolve(self.db.instances.prune(now=later)), 1)
        resolve(self.db.instances.heartbeat("a", 6.0, now=later))  # "a" comes back: its old rows are gone
        self.assertEqual(resolve(self.store.rows(x, later)), {})
        self.assertEqual(resolve(self.store.rows(y, T0 + timedelta(minutes=50))), {"b": T0})

    def test_open_rows_close(self):
        """A node's rows on live instances are read back with their ``connected_at``; close deletes one."""
        x = self.nodes[0].id
        resolve(self.store.open(x, "a", T0))
        resolve(self.store.open(x, "b", T0 - timedelta(seconds=30)))
        self.assertEqual(resolve(self.store.rows(x, T0)), {"a": T0, "b": T0 - timedelta(seconds=30)})
        self.assertTrue(resolve(self.store.close(x, "a")))
        self.assertFalse(resolve(self.store.close(x, "a")))
        self.assertEqual(resolve(self.store.rows(x, T0)), {"b": T0 - timedelta(seconds=30)})

    def test_reopen_replaces_since(self):
        """Opening again on the same instance stores the new ``connected_at``."""
        x = self.nodes[0].id
        resolve(self.store.open(x, "a", T0))
        resolve(self.store.open(x, "a", T0 + timedelta(seconds=5)))
        self.assertEqual(resolve(self.store.rows(x, T0)), {"a": T0 + timedelta(seconds=5)})

    def test_rows_of_dead_or_unknown_instances_do_not_count(self):
        """Only rows whose instance's heartbeat is live at ``now`` make a node online."""
        x, y, z = (n.id for n in self.nodes)
        resolve(self.store.open(x, "a", T0))
        resolve(self.store.open(y, "b", T0))
        resolve(self.store.open(z, "never-beat", T0))
        self.assertEqual(resolve(self.store.online(T0)), {x: {"a": T0}, y: {"b": T0}})
        resolve(self.db.instances.heartbeat("a", 6.0, now=T0 + timedelta(seconds=4)))
        later = T0 + timedelta(seconds=7)  # b's heartbeat ran out, a's was renewed
        self.assertEqual(resolve(self.store.online(later)), {x: {"a": T0}})
        self.assertEqual(resolve(self.store.rows(y, later)), {})

    def test_forget_returns_nodes_once(self):
        """Forgetting a dead instance deletes its rows and the expired ones; a second caller gets nothing."""
        x, y, z = (n.id for n in self.nodes)
        resolve(self.store.open(x, "a", T0))
        resolve(self.store.open(y, "b", T0))
        resolve(self.store.open(z, "gone", T0))
        resolve(self.db.instances.heartbeat("a", 6.0, now=T0 + timedelta(seconds=4)))
        resolve(self.db.instances.heartbeat("gone", 1.0, now=T0 - timedelta(seconds=10)))
        later = T0 + timedelta(seconds=7)
        self.assertEqual(resolve(self.store.forget(["b"], later)), sorted([y, z]))
        self.assertEqual(resolve(self.store.forget(["b"], later)), [])
        self.assertEqual(resolve(self.store.online(later)), {x: {"a": T0}})

    def test_rows_go_with_the_node(self):
        """Deleting a node deletes its rows; opening a row for a deleted node is NotFound."""
        x = self.nodes[0].id
        resolve(self.store.open(x, "a", T0))
        resolve(self.db.nodes.delete(x))
        self.assertEqual(resolve(self.store.online(T0)), {})
        self.assertRaises(NotFound, resolve, self.store.open(x, "a", T0))

    def test_forget_is_bounded(self):
        """More instance ids than one statement takes are refused with a clear error."""
        with self.assertRaises(ValueError) as caught:
            resolve(self.store.forget([f"i{n}" for n in range(101)], T0))
        self.assertIn("at most 100", str(caught.exception))


class SqliteNodeSessionStoreTests(NodeSessionStoreTestsMixin, unittest.TestCase):
    """The node session store on SQLite."""

    def make_config(self):
        return sqlite_config()


class PostgresNodeSessionStoreTests(NodeSessionStoreTestsMixin, unittest.TestCase):
    """The node session store on PostgreSQL."""

    def make_config(self):
        return create_postgres_database(self)
