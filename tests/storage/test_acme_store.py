"""Tests for :mod:`headscale_tw.storage.stores.acme` on SQLite and PostgreSQL."""

from datetime import datetime, timedelta, timezone

from twisted.trial import unittest
from zope.interface.verify import verifyObject

from headscale_tw.interfaces import IAcmeStore
from headscale_tw.storage.stores.acme import HTTP01, TLS_ALPN01, StoredChallenge
from headscale_tw.testing.db import create_postgres_database, open_test_database, resolve, sqlite_config

T0 = datetime(2026, 12, 4, 3, 0, tzinfo=timezone.utc)
HOST = "hs.example.com"
LEASE = f"acme:{HOST}"


class AcmeStoreTestsMixin:
    """Behaviour shared by both engines."""

    def make_config(self):
        raise NotImplementedError

    def setUp(self):
        self.db = open_test_database(self, self.make_config())
        self.store = self.db.acme
        self.lease = resolve(self.db.leases.acquire(LEASE, "a", 30.0, now=T0))

    def test_provides_interface(self):
        """The store provides IAcmeStore."""
        verifyObject(IAcmeStore, self.store)

    def test_account_key_first_wins(self):
        """The first stored account key is the one every later caller gets, per directory URL."""
        first = resolve(self.store.account_key("https://acme/dir", lambda: b"KEY-A\n", now=T0))
        second = resolve(self.store.account_key("https://acme/dir", lambda: b"KEY-B\n", now=T0))
        other = resolve(self.store.account_key("https://other/dir", lambda: b"KEY-C\n", now=T0))
        self.assertEqual((first, second, other), (b"KEY-A\n", b"KEY-A\n", b"KEY-C\n"))

    def test_certificate_round_trip_and_serial(self):
        """A stored certificate reads back; each store raises the serial."""
        self.assertIsNone(resolve(self.store.certificate(HOST)))
        self.assertEqual(resolve(self.store.store_certificate(HOST, b"CHAIN1", b"KEY1", self.lease, now=T0)), 1)
        stored = resolve(self.store.certificate(HOST))
        self.assertEqual((stored.chain_pem, stored.key_pem, stored.serial, stored.lease_token),
                         (b"CHAIN1", b"KEY1", 1, 1))
        resolve(self.store.store_certificate(HOST, b"CHAIN2", b"KEY2", self.lease, now=T0 + timedelta(seconds=1)))
        self.assertEqual(resolve(self.store.poll(HOST, now=T0))[0], 2)
        self.assertEqual(resolve(self.store.certificate(HOST)).chain_pem, b"CHAIN2")

    def test_store_fenced_by_lease(self):
        """A holder whose tenure was taken over cannot store a certificate or publish challenges."""
        resolve(self.store.store_certificate(HOST, b"CHAIN1", b"KEY1", self.lease, now=T0))
        later = T0 + timedelta(seconds=31)
        newer = resolve(self.db.leases.acquire(LEASE, "b", 30.0, now=later))
        self.assertIsNone(resolve(self.store.store_certificate(HOST, b"OLD", b"OLD", self.lease, now=later)))
        challenge = StoredChallenge(HTTP01, "tok", "tok.thumb", "", later + timedelta(minutes=5))
        self.assertFalse(resolve(self.store.add_challenges([challenge], self.lease, now=later)))
        self.assertEqual(resolve(self.store.certificate(HOST)).chain_pem, b"CHAIN1")
        self.assertEqual(resolve(self.store.store_certificate(HOST, b"NEW", b"NEW", newer, now=later)), 2)
        self.assertEqual(resolve(self.store.certificate(HOST)).lease_token, 2)

    def test_challenges_published_polled_withdrawn(self):
        """Published challenges are polled until withdrawn or expired."""
        live = T0 + timedelta(minutes=5)
        http = StoredChallenge(HTTP01, "tok", "tok.thumb", "", live)
        alpn = StoredChallenge(TLS_ALPN01, HOST, "CERT", "KEY", live)
        self.assertTrue(resolve(self.store.add_challenges([http, alpn], self.lease, now=T0)))
        serial, found = resolve(self.store.poll(HOST, now=T0))
        self.assertIsNone(serial)
        self.assertEqual(sorted(found, key=lambda c: c.kind), [http, alpn])
        resolve(self.store.remove_challenges([(HTTP01, "tok")]))
        self.assertEqual(resolve(self.store.poll(HOST, now=T0))[1], [alpn])
        self.assertEqual(resolve(self.store.poll(HOST, now=live))[1], [])  # expired


class SqliteAcmeStoreTests(AcmeStoreTestsMixin, unittest.TestCase):
    """The ACME store on SQLite."""

    def make_config(self):
        return sqlite_config()


class PostgresAcmeStoreTests(AcmeStoreTestsMixin, unittest.TestCase):
    """The ACME store on PostgreSQL."""

    def make_config(self):
        return create_postgres_database(self)
