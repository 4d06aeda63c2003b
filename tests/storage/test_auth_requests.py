"""
Tests for headscale_tw.storage.stores.auth_requests: one suite, run on SQLite and on PostgreSQL.
"""

import shutil
from datetime import datetime, timedelta, timezone
from importlib import resources
from pathlib import Path

from twisted.trial import unittest
from zope.interface.verify import verifyObject

from headscale_tw.errors import Conflict, LimitReached, NotFound
from headscale_tw.interfaces import IAuthRequestStore
from headscale_tw.storage.database import make_pool
from headscale_tw.storage.models import AuthRequest
from headscale_tw.storage.prepare import SCHEMA_VERSION, prepare_database
from headscale_tw.testing.db import (
    NonThreadPool,
    ThreadlessReactor,
    create_postgres_database,
    open_test_database,
    resolve,
    sqlite_config,
)

T0 = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
LIFETIME = timedelta(minutes=15)


class AuthRequestStoreTestsMixin:
    """The auth request store contract; subclasses choose the engine in ``make_config``."""

    def make_config(self):
        raise NotImplementedError

    def setUp(self):
        self.db = open_test_database(self, self.make_config())
        self.store = self.db.auth_requests
        self.serial = 0

    def create(self, source="192.0.2.1", now=T0, per_source=3, total=10, **kw):
        self.serial += 1
        fields = dict(auth_id=f"id{self.serial:04d}", kind="register", source=source,
                      machine_key=f"mkey:{self.serial:064x}", node_key=f"nodekey:{self.serial:064x}",
                      hostname=f"host{self.serial}", details={"Version": 133})
        fields.update(kw)
        return resolve(self.store.create(expires_at=now + LIFETIME, max_per_source=per_source, max_total=total,
                                         now=now, **fields))

    def test_interface(self):
        """The store provides IAuthRequestStore."""
        self.assertTrue(verifyObject(IAuthRequestStore, self.store))

    def test_create_and_read(self):
        """A created request reads back whole, by auth id and by row id, as pending."""
        row = self.create(hostname="laptop", details={"Version": 133, "Hostinfo": {"OS": "linux"}})
        self.assertIsInstance(row, AuthRequest)
        self.assertEqual((row.kind, row.state, row.source, row.hostname), ("register", "pending", "192.0.2.1", "laptop"))
        self.assertEqual(row.details, {"Version": 133, "Hostinfo": {"OS": "linux"}})
        self.assertEqual((row.created_at, row.expires_at), (T0, T0 + LIFETIME))
        self.assertEqual(resolve(self.store.get(row.auth_id)), row)
        self.assertEqual(resolve(self.store.get_by_id(row.id)), row)
        self.assertIsNone(resolve(self.store.get("missing")))

    def test_per_source_cap(self):
        """The source's N+1th pending request is refused naming the limit; other sources are unaffected."""
        for _ in range(3):
            self.create(source="192.0.2.1")
        error = self.assertRaises(LimitReached, self.create, source="192.0.2.1")
        self.assertEqual(error.limit, 3)
        self.assertIn("192.0.2.1 (limit 3)", str(error))
        self.create(source="198.51.100.7")
        self.assertEqual(resolve(self.store.count_pending("192.0.2.1", now=T0)), 3)
        self.assertEqual(resolve(self.store.count_pending(now=T0)), 4)

    def test_total_cap(self):
        """Past the total cap every source is refused, naming the server-wide limit."""
        for n in range(4):
            self.create(source=f"192.0.2.{n}", total=4)
        error = self.assertRaises(LimitReached, self.create, source="203.0.113.9", total=4)
        self.assertIn("on this server (limit 4)", str(error))

    def test_expired_and_finished_free_the_cap(self):
        """Expired and finished requests no longer count against the caps."""
        first = self.create()
        self.create()
        self.create()
        resolve(self.store.finish(first.auth_id, "rejected", reason="no", now=T0))
        self.create()  # the rejected one freed a place
        self.assertRaises(LimitReached, self.create)
        later = T0 + LIFETIME
        self.create(now=later)  # every earlier one has expired by now
        self.assertEqual(resolve(self.store.count_pending("192.0.2.1", now=later)), 1)

    def test_new_request_supersedes_the_machines_old_one(self):
        """A machine's new request of a kind expires its open one, so one machine holds one place."""
        first = self.create(machine_key="mkey:" + "a" * 64)
        second = self.create(machine_key="mkey:" + "a" * 64)
        self.assertEqual(resolve(self.store.get(first.auth_id)).state, "expired")
        self.assertEqual(resolve(self.store.get(second.auth_id)).state, "pending")
        self.assertEqual(resolve(self.store.count_pending(now=T0)), 1)
        self.assertRaises(NotFound, resolve, self.store.finish(first.auth_id, "rejected", now=T0))

    def test_find_pending(self):
        """The open request for a machine and node key is found; a finished or expired one is not."""
        row = self.create()
        self.assertEqual(resolve(self.store.find_pending("register", row.machine_key, row.node_key, now=T0)), row)
        self.assertIsNone(resolve(self.store.find_pending("ssh_check", row.machine_key, row.node_key, now=T0)))
        self.assertIsNone(resolve(self.store.find_pending("register", row.machine_key, row.node_key,
                                                         now=T0 + LIFETIME)))
        resolve(self.store.finish(row.auth_id, "approved", user_id=None, now=T0))
        self.assertIsNone(resolve(self.store.find_pending("register", row.machine_key, row.node_key, now=T0)))

    def test_finish_once(self):
        """Finishing moves a pending request once; a second finish is a Conflict naming the state."""
        user = resolve(self.db.users.create("alice"))
        row = self.create()
        done = resolve(self.store.finish(row.auth_id, "approved", user_id=user.id, now=T0 + timedelta(seconds=5)))
        self.assertEqual((done.state, done.user_id, done.finished_at), ("approved", user.id, T0 + timedelta(seconds=5)))
        error = self.assertRaises(Conflict, resolve, self.store.finish(row.auth_id, "rejected", now=T0))
        self.assertIn("already approved", str(error))
        self.assertEqual(resolve(self.store.get(row.auth_id)).state, "approved")

    def test_finish_expired_or_unknown(self):
        """An expired or unknown request cannot be finished (NotFound)."""
        row = self.create()
        error = self.assertRaises(NotFound, resolve, self.store.finish(row.auth_id, "rejected", now=T0 + LIFETIME))
        self.assertIn("expired", str(error))
        self.assertRaises(NotFound, resolve, self.store.finish("missing", "rejected", now=T0))
        self.assertEqual(resolve(self.store.get(row.auth_id)).state_at(T0 + LIFETIME), "expired")

    def test_set_node(self):
        """The node of a finished registration is recorded and read back."""
        user = resolve(self.db.users.create("alice"))
        from headscale_tw.storage.models import Node

        node = resolve(self.db.nodes.create(Node(id=0, machine_key="mkey:" + "1" * 64, node_key="nodekey:" + "1" * 64,
                                                 hostname="laptop", given_name="laptop", user_id=user.id)))
        row = self.create()
        resolve(self.store.finish(row.auth_id, "approved", user_id=user.id, now=T0))
        self.assertEqual(resolve(self.store.set_node(row.auth_id, node.id)).node_id, node.id)
        self.assertRaises(NotFound, resolve, self.store.set_node("missing", node.id))

    def test_reopen(self):
        """An approved registration without a node goes back to pending once; one with a node does not."""
        user = resolve(self.db.users.create("alice"))
        row = self.create()
        resolve(self.store.finish(row.auth_id, "approved", user_id=user.id, now=T0))
        self.assertTrue(resolve(self.store.reopen(row.auth_id)))
        reopened = resolve(self.store.get(row.auth_id))
        self.assertEqual((reopened.state, reopened.user_id, reopened.finished_at), ("pending", None, None))
        self.assertFalse(resolve(self.store.reopen(row.auth_id)))
        rejected = self.create()
        resolve(self.store.finish(rejected.auth_id, "rejected", now=T0))
        self.assertFalse(resolve(self.store.reopen(rejected.auth_id)))

    def test_delete_expired(self):
        """The sweep deletes every request past its expiry, pending or finished, and keeps the rest."""
        old = self.create()
        finished = self.create()
        resolve(self.store.finish(finished.auth_id, "rejected", now=T0))
        young = self.create(now=T0 + timedelta(minutes=10))
        self.assertEqual(resolve(self.store.delete_expired(now=T0 + LIFETIME)), 2)
        self.assertIsNone(resolve(self.store.get(old.auth_id)))
        self.assertIsNone(resolve(self.store.get(finished.auth_id)))
        self.assertIsNotNone(resolve(self.store.get(young.auth_id)))
        self.assertEqual(resolve(self.store.delete_expired(now=T0 + LIFETIME)), 0)

    def test_unknown_kind(self):
        """Only the known kinds can be stored."""
        self.assertRaises(ValueError, self.create, kind="door")


class SqliteAuthRequestStoreTests(AuthRequestStoreTestsMixin, unittest.TestCase):
    """The auth request store on SQLite."""

    def make_config(self):
        return sqlite_config()


class PostgresAuthRequestStoreTests(AuthRequestStoreTestsMixin, unittest.TestCase):
    """The auth request store on PostgreSQL."""

    def make_config(self):
        return create_postgres_database(self)


class AuthRequestMigrationTestsMixin:
    """A version 1 database is upgraded to hold auth requests, keeping its rows."""

    def make_config(self):
        raise NotImplementedError

    def test_upgrade_from_version_1(self):
        """Delta 02 adds the auth_requests table to a version 1 database; its users survive."""
        self.assertGreaterEqual(SCHEMA_VERSION, 2)
        schema = Path(self.mktemp())
        shutil.copytree(str(resources.files("headscale_tw.storage").joinpath("schema")), schema)
        config = self.make_config()
        pool = make_pool(config, ThreadlessReactor(), threadpool=NonThreadPool())
        self.addCleanup(lambda: resolve(pool.close()))
        resolve(prepare_database(pool, schema_dir=schema, schema_version=1))
        resolve(pool.run_interaction("w", lambda txn: txn.execute("INSERT INTO users (name) VALUES ('a')")))
        self.assertEqual(resolve(prepare_database(pool, schema_dir=schema, schema_version=2)), 2)
        rows = resolve(pool.run_interaction("r", lambda txn: (txn.query("SELECT name FROM users"),
                                                              txn.query("SELECT COUNT(*) FROM auth_requests"),
                                                              txn.query("SELECT file FROM applied_schema_deltas"))))
        self.assertEqual(rows, ([("a",)], [(0,)], [("01_auth_requests.%s.sql" % pool.engine.name,)]))

    def test_fresh_matches_upgraded(self):
        """A fresh version 2 database has the same auth_requests columns as an upgraded one."""
        fresh = open_test_database(self, self.make_config())
        upgraded_config = self.make_config()
        schema = Path(self.mktemp())
        shutil.copytree(str(resources.files("headscale_tw.storage").joinpath("schema")), schema)
        pool = make_pool(upgraded_config, ThreadlessReactor(), threadpool=NonThreadPool())
        self.addCleanup(lambda: resolve(pool.close()))
        resolve(prepare_database(pool, schema_dir=schema, schema_version=1))
        resolve(prepare_database(pool, schema_dir=schema, schema_version=2))

        def columns_txn(txn):
            txn.execute("SELECT * FROM auth_requests WHERE 1 = 0")
            return [d[0] for d in txn._cursor.description]

        self.assertEqual(resolve(fresh.pool.run_interaction("c", columns_txn)),
                         resolve(pool.run_interaction("c", columns_txn)))


class SqliteAuthRequestMigrationTests(AuthRequestMigrationTestsMixin, unittest.TestCase):
    """The version 2 migration on SQLite."""

    def make_config(self):
        return sqlite_config()


class PostgresAuthRequestMigrationTests(AuthRequestMigrationTestsMixin, unittest.TestCase):
    """The version 2 migration on PostgreSQL."""

    def make_config(self):
        return create_postgres_database(self)
