# -*- test-case-name: tests.storage.test_audit_events -*-
"""Tests for headscale_tw.storage.stores.audit_events on SQLite and PostgreSQL."""

from datetime import datetime, timedelta, timezone

from twisted.trial import unittest
from zope.interface.verify import verifyObject

from headscale_tw.interfaces import IAuditEventStore
from headscale_tw.storage.models import AuditEvent
from headscale_tw.storage.stores.audit_events import MAX_PAGE
from headscale_tw.testing.db import create_postgres_database, open_test_database, resolve, sqlite_config

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=timezone.utc)


def event(minutes=0, **fields):
    """An event ``minutes`` after T0 with defaults for every field not given."""
    values = dict(at=T0 + timedelta(minutes=minutes), actor_kind="api_key", actor="hskey-api-abc",
                  action="user.create", target_kind="user", target_id="1", target_name="alice",
                  source="192.0.2.1", detail={"n": 1}, instance="hs1")
    values.update(fields)
    return AuditEvent(**values)


class AuditEventStoreTestsMixin:
    """The audit event store contract; subclasses choose the engine in ``make_config``."""

    def make_config(self):
        raise NotImplementedError

    def setUp(self):
        self.db = open_test_database(self, self.make_config())
        self.store = self.db.audit

    def add(self, *events):
        for e in events:
            resolve(self.store.add(e))

    def test_provides_interface(self):
        """The store provides IAuditEventStore."""
        self.assertTrue(verifyObject(IAuditEventStore, self.store))

    def test_round_trip(self):
        """An added event comes back with every field, an id, and its detail as a dict."""
        self.add(event())
        [row] = resolve(self.store.list())
        self.assertIsInstance(row.id, int)
        self.assertEqual(row, event(id=row.id))

    def test_newest_first_and_limit(self):
        """Events come newest first; the limit keeps the newest ones and is capped at MAX_PAGE."""
        self.add(*(event(minutes=i, target_id=str(i)) for i in range(5)))
        rows = resolve(self.store.list(limit=2))
        self.assertEqual([r.target_id for r in rows], ["4", "3"])
        self.assertEqual(len(resolve(self.store.list(limit=MAX_PAGE * 10))), 5)

    def test_time_window(self):
        """``since`` is inclusive and ``until`` exclusive."""
        self.add(*(event(minutes=i, target_id=str(i)) for i in range(5)))
        rows = resolve(self.store.list(since=T0 + timedelta(minutes=1), until=T0 + timedelta(minutes=3)))
        self.assertEqual([r.target_id for r in rows], ["2", "1"])

    def test_filters(self):
        """actor matches name or kind, action the action or its family, target id, name or kind."""
        self.add(event(action="user.create"), event(action="node.delete", actor_kind="system", actor="system",
                                                    target_kind="node", target_id="7", target_name="web"),
                 event(action="nodes.other"))
        self.assertEqual([r.action for r in resolve(self.store.list(action="node"))], ["node.delete"])
        self.assertEqual([r.action for r in resolve(self.store.list(action="node.delete"))], ["node.delete"])
        self.assertEqual([r.action for r in resolve(self.store.list(actor="system"))], ["node.delete"])
        self.assertEqual(len(resolve(self.store.list(actor="hskey-api-abc"))), 2)
        for target in ("7", "web", "node"):
            self.assertEqual([r.action for r in resolve(self.store.list(target=target))], ["node.delete"])

    def test_add_many_in_one_write(self):
        """add_many stores every event; an empty list writes nothing."""
        resolve(self.store.add_many([]))
        resolve(self.store.add_many([event(minutes=i) for i in range(3)]))
        self.assertEqual(len(resolve(self.store.list())), 3)

    def test_delete_before(self):
        """Events older than the cutoff go, oldest first, at most a batch per call."""
        self.add(*(event(minutes=i, target_id=str(i)) for i in range(5)))
        cutoff = T0 + timedelta(minutes=3)
        self.assertEqual(resolve(self.store.delete_before(cutoff, batch=2)), 2)
        self.assertEqual(resolve(self.store.delete_before(cutoff, batch=2)), 1)
        self.assertEqual(resolve(self.store.delete_before(cutoff, batch=2)), 0)
        self.assertEqual([r.target_id for r in resolve(self.store.list())], ["4", "3"])


class SqliteAuditEventStoreTests(AuditEventStoreTestsMixin, unittest.TestCase):
    """The audit event store on SQLite."""

    def make_config(self):
        return sqlite_config()


class PostgresAuditEventStoreTests(AuditEventStoreTestsMixin, unittest.TestCase):
    """The audit event store on PostgreSQL."""

    def make_config(self):
        return create_postgres_database(self)


class SharedDatabaseTests(unittest.TestCase):
    """Two instances on one PostgreSQL database each append their own rows to the shared table."""

    def test_two_instances(self):
        """Rows written through two connections are both listed, each naming its instance."""
        config = create_postgres_database(self)
        first, second = open_test_database(self, config), open_test_database(self, config)
        resolve(first.audit.add(event(instance="hs1")))
        resolve(second.audit.add(event(minutes=1, instance="hs2")))
        self.assertEqual([r.instance for r in resolve(first.audit.list())], ["hs2", "hs1"])
