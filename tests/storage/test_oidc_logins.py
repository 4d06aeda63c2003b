"""
Tests for headscale_tw.storage.stores.oidc_logins: one suite, run on SQLite and on PostgreSQL.
"""

from datetime import datetime, timedelta, timezone

from twisted.trial import unittest
from zope.interface.verify import verifyObject

from headscale_tw.interfaces import IOIDCLoginStore
from headscale_tw.storage.models import OIDCLogin
from headscale_tw.storage.stores.oidc_logins import key_hash, take_oidc_login_txn
from headscale_tw.testing.db import create_postgres_database, open_test_database, resolve, sqlite_config

T0 = datetime(2026, 12, 4, 3, 0, tzinfo=timezone.utc)
LIFETIME = timedelta(minutes=15)


class OIDCLoginStoreTestsMixin:
    """The OIDC login store contract; subclasses choose the engine in ``make_config``."""

    def make_config(self):
        raise NotImplementedError

    def setUp(self):
        self.config = self.make_config()
        self.db = open_test_database(self, self.config)
        self.store = self.db.oidc_logins

    def add(self, kind="login", key="state-1", auth_id="auth-1", limit=10, now=T0, **kw):
        resolve(self.store.add(kind, key, auth_id, created_at=now, expires_at=now + LIFETIME, limit=limit, **kw))

    def test_interface(self):
        """The store provides IOIDCLoginStore."""
        self.assertTrue(verifyObject(IOIDCLoginStore, self.store))

    def test_login_taken_once(self):
        """A started login reads back whole once; the second take finds nothing."""
        self.add(nonce="n-1", code_verifier="v" * 43, pkce_method="S256")
        row = resolve(self.store.take("login", "state-1"))
        self.assertIsInstance(row, OIDCLogin)
        self.assertEqual((row.kind, row.auth_id, row.nonce, row.code_verifier, row.pkce_method),
                         ("login", "auth-1", "n-1", "v" * 43, "S256"))
        self.assertEqual((row.created_at, row.expires_at), (T0, T0 + LIFETIME))
        self.assertIsNone(resolve(self.store.take("login", "state-1")))

    def test_confirmation_keeps_identity(self):
        """A confirmation keeps the identity it was given, and is not found as a login."""
        identity = {"issuer": "https://idp", "subject": "alice", "groups": ["eng"]}
        self.add(kind="confirmation", key="token-1", identity=identity)
        self.assertIsNone(resolve(self.store.take("login", "token-1")))
        row = resolve(self.store.take("confirmation", "token-1"))
        self.assertEqual((row.identity, row.code_verifier), (identity, None))

    def test_key_not_stored(self):
        """The table holds the SHA-256 of the key, never the key itself."""
        self.add(key="secret-state")
        rows = resolve(self.db.pool.run_interaction("read", lambda txn: txn.query("SELECT key_hash FROM oidc_logins")))
        self.assertEqual(rows, [(key_hash("secret-state"),)])
        self.assertNotIn("secret-state", rows[0][0])

    def test_capped_per_kind(self):
        """Past the cap the oldest rows of that kind go; the other kind is untouched."""
        self.add(kind="confirmation", key="token-1", limit=3)
        for n in range(5):
            self.add(key=f"state-{n}", limit=3)
        self.assertEqual(resolve(self.store.count("login")), 3)
        self.assertEqual(resolve(self.store.count()), 4)
        self.assertIsNone(resolve(self.store.take("login", "state-0")))
        self.assertIsNone(resolve(self.store.take("login", "state-1")))
        self.assertIsNotNone(resolve(self.store.take("login", "state-4")))

    def test_delete_expired(self):
        """Rows past their expiry go; younger ones stay."""
        self.add(key="old")
        self.add(kind="confirmation", key="old-token")
        self.add(key="young", now=T0 + timedelta(minutes=10))
        self.assertEqual(resolve(self.store.delete_expired(now=T0 + LIFETIME)), 2)
        self.assertEqual(resolve(self.store.count()), 1)
        self.assertIsNotNone(resolve(self.store.take("login", "young")))

    def test_unknown_kind(self):
        """Only the two known kinds can be stored or taken."""
        self.assertRaises(ValueError, self.add, kind="door")
        self.assertRaises(ValueError, resolve, self.store.take("door", "k"))


class SqliteOIDCLoginStoreTests(OIDCLoginStoreTestsMixin, unittest.TestCase):
    """The OIDC login store on SQLite."""

    def make_config(self):
        return sqlite_config()


class PostgresOIDCLoginStoreTests(OIDCLoginStoreTestsMixin, unittest.TestCase):
    """The OIDC login store on PostgreSQL."""

    def make_config(self):
        return create_postgres_database(self)

    def test_taken_once_across_instances(self):
        """A row added through one database connection is taken once, by whichever instance asks first."""
        other = open_test_database(self, self.config)
        self.add()
        self.assertIsNotNone(resolve(other.oidc_logins.take("login", "state-1")))
        self.assertIsNone(resolve(self.store.take("login", "state-1")))

    def test_concurrent_take_has_one_winner(self):
        """When another instance deletes the row between our read and our delete, we get nothing."""
        other = open_test_database(self, self.config)
        self.add(nonce="n-1")
        taken_by_other = []

        class Interleaved:
            """A transaction whose read is followed, before our delete, by the other instance's take."""

            def __init__(self, txn):
                self._txn = txn

            def query_one(self, sql, args=()):
                row = self._txn.query_one(sql, args)
                taken_by_other.append(resolve(other.oidc_logins.take("login", "state-1")))
                return row

            def execute(self, sql, args=()):
                return self._txn.execute(sql, args)

            @property
            def rowcount(self):
                return self._txn.rowcount

        ours = resolve(self.db.pool.run_interaction(
            "take_interleaved", lambda txn: take_oidc_login_txn(Interleaved(txn), "login", key_hash("state-1"))))
        self.assertIsNone(ours)
        self.assertEqual([row.nonce for row in taken_by_other], ["n-1"])
        self.assertEqual(resolve(self.store.count()), 0)
