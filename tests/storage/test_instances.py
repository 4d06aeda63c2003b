"""Tests for :mod:`headscale_tw.storage.stores.instances` on SQLite and PostgreSQL."""

from datetime import datetime, timedelta, timezone

from twisted.trial import unittest
from zope.interface.verify import verifyObject

from headscale_tw.interfaces import IInstanceStore
from headscale_tw.testing.db import create_postgres_database, open_test_database, resolve, sqlite_config

T0 = datetime(2026, 12, 4, 7, 0, tzinfo=timezone.utc)


class InstanceStoreTestsMixin:
    """Behaviour shared by both engines."""

    def make_config(self):
        raise NotImplementedError

    def setUp(self):
        self.db = open_test_database(self, self.make_config())
        self.store = self.db.instances

    def beat(self, ident, at, lifetime=6.0, **advertised):
        return resolve(self.store.heartbeat(ident, lifetime, now=at, **advertised))

    def live(self, at):
        return [row.id for row in resolve(self.store.live(now=at))]

    def test_provides_interface(self):
        """The store provides IInstanceStore."""
        verifyObject(IInstanceStore, self.store)

    def test_first_beat_inserts(self):
        """The first heartbeat stores the row with what the instance advertises, live for ``lifetime``."""
        row = self.beat("a", T0, derp_url="https://a.example.com/derp", schema_version=4, software_version="1.0")
        self.assertEqual((row.id, row.started_at, row.heartbeat_at, row.expires_at),
                         ("a", T0, T0, T0 + timedelta(seconds=6)))
        self.assertEqual((row.derp_url, row.schema_version, row.software_version),
                         ("https://a.example.com/derp", 4, "1.0"))
        self.assertEqual(resolve(self.store.get("a")), row)

    def test_renewal_keeps_start(self):
        """A later beat moves the heartbeat and expiry, keeps ``started_at`` and updates what is advertised."""
        self.beat("a", T0)
        row = self.beat("a", T0 + timedelta(seconds=2), derp_url="https://a2/derp")
        self.assertEqual((row.started_at, row.heartbeat_at, row.expires_at),
                         (T0, T0 + timedelta(seconds=2), T0 + timedelta(seconds=8)))
        self.assertEqual(row.derp_url, "https://a2/derp")

    def test_live_excludes_expired(self):
        """Only rows whose expiry is after ``now`` are live, listed by id."""
        self.beat("b", T0)
        self.beat("a", T0 + timedelta(seconds=3))
        self.assertEqual(self.live(T0 + timedelta(seconds=5)), ["a", "b"])
        self.assertEqual(self.live(T0 + timedelta(seconds=6)), ["a"])
        self.assertEqual(self.live(T0 + timedelta(seconds=9)), [])

    def test_remove(self):
        """A clean stop deletes the row at once; removing it twice reports nothing removed."""
        self.beat("a", T0)
        self.assertTrue(resolve(self.store.remove("a")))
        self.assertFalse(resolve(self.store.remove("a")))
        self.assertEqual(self.live(T0), [])

    def test_prune_only_long_expired(self):
        """Prune deletes rows expired over an hour ago and keeps the others."""
        self.beat("old", T0)
        self.beat("recent", T0 + timedelta(minutes=50))
        self.assertEqual(resolve(self.store.prune(now=T0 + timedelta(hours=1, seconds=7))), 1)
        self.assertIsNone(resolve(self.store.get("old")))
        self.assertIsNotNone(resolve(self.store.get("recent")))

    def test_bad_arguments_refused(self):
        """An empty or overlong id, or a non-positive lifetime, is refused naming what is wrong."""
        for ident, lifetime, word in [("", 6.0, "instance id"), ("x" * 201, 6.0, "instance id"),
                                      ("a", 0, "positive")]:
            with self.assertRaises(ValueError) as caught:
                resolve(self.store.heartbeat(ident, lifetime, now=T0))
            self.assertIn(word, str(caught.exception))


class SqliteInstanceStoreTests(InstanceStoreTestsMixin, unittest.TestCase):
    """The instance store on SQLite."""

    def make_config(self):
        return sqlite_config()


class PostgresInstanceStoreTests(InstanceStoreTestsMixin, unittest.TestCase):
    """The instance store on PostgreSQL."""

    def make_config(self):
        return create_postgres_database(self)
