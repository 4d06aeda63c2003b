"""Tests for :mod:`headscale_tw.storage.stores.leases` on SQLite and PostgreSQL."""

from dataclasses import replace
from datetime import datetime, timedelta, timezone

from twisted.internet import reactor
from twisted.internet.defer import DeferredList, ensureDeferred
from twisted.trial import unittest
from zope.interface.verify import verifyObject

from headscale_tw.interfaces import ILeaseStore
from headscale_tw.storage.database import Database, make_pool
from headscale_tw.storage.prepare import prepare_database
from headscale_tw.storage.stores.leases import holds_lease_txn
from headscale_tw.testing.db import create_postgres_database, open_test_database, resolve, sqlite_config

T0 = datetime(2026, 12, 4, 3, 0, tzinfo=timezone.utc)
NAME = "acme:hs.example.com"


class LeaseStoreTestsMixin:
    """Behaviour shared by both engines."""

    def make_config(self):
        raise NotImplementedError

    def setUp(self):
        self.db = open_test_database(self, self.make_config())
        self.store = self.db.leases

    def acquire(self, holder, at, duration=30.0):
        return resolve(self.store.acquire(NAME, holder, duration, now=at))

    def test_provides_interface(self):
        """The store provides ILeaseStore."""
        verifyObject(ILeaseStore, self.store)

    def test_first_acquire(self):
        """The first holder gets token 1 and an expiry ``duration`` ahead."""
        lease = self.acquire("a", T0)
        self.assertEqual((lease.name, lease.holder, lease.token), (NAME, "a", 1))
        self.assertEqual((lease.acquired_at, lease.expires_at), (T0, T0 + timedelta(seconds=30)))
        self.assertEqual(resolve(self.store.get(NAME)), lease)

    def test_live_lease_refused_to_others(self):
        """Another holder gets nothing while the lease is live, and the row is unchanged."""
        lease = self.acquire("a", T0)
        self.assertIsNone(self.acquire("b", T0 + timedelta(seconds=29)))
        self.assertEqual(resolve(self.store.get(NAME)), lease)

    def test_renew_keeps_token(self):
        """The holder renewing a live lease keeps its token and start, and moves the expiry."""
        self.acquire("a", T0)
        renewed = self.acquire("a", T0 + timedelta(seconds=10))
        self.assertEqual(renewed.token, 1)
        self.assertEqual(renewed.acquired_at, T0)
        self.assertEqual(renewed.expires_at, T0 + timedelta(seconds=40))

    def test_take_over_after_expiry(self):
        """Once expired, another holder takes the lease with the next token."""
        self.acquire("a", T0)
        taken = self.acquire("b", T0 + timedelta(seconds=30))
        self.assertEqual((taken.holder, taken.token, taken.acquired_at), ("b", 2, T0 + timedelta(seconds=30)))
        self.assertIsNone(self.acquire("a", T0 + timedelta(seconds=31)))

    def test_same_holder_after_expiry_is_new_tenure(self):
        """A holder whose lease lapsed gets a new token when it takes it again."""
        self.acquire("a", T0)
        again = self.acquire("a", T0 + timedelta(seconds=60))
        self.assertEqual(again.token, 2)
        self.assertEqual(again.acquired_at, T0 + timedelta(seconds=60))

    def test_release_lets_others_in_at_once(self):
        """A released lease is free at once and the next holder's token is larger."""
        lease = self.acquire("a", T0)
        self.assertTrue(resolve(self.store.release(lease, now=T0 + timedelta(seconds=1))))
        taken = self.acquire("b", T0 + timedelta(seconds=1))
        self.assertEqual((taken.holder, taken.token), ("b", 2))

    def test_release_of_old_tenure_does_nothing(self):
        """Releasing a tenure that was taken over leaves the new holder's lease alone."""
        old = self.acquire("a", T0)
        new = self.acquire("b", T0 + timedelta(seconds=31))
        self.assertFalse(resolve(self.store.release(old, now=T0 + timedelta(seconds=32))))
        self.assertEqual(resolve(self.store.get(NAME)), new)

    def test_fencing_check(self):
        """holds_lease_txn accepts the live tenure only: not an expired or superseded one."""
        old = self.acquire("a", T0)
        pool = self.db.pool

        def holds(lease, at):
            return resolve(pool.run_interaction("check", holds_lease_txn, lease, at))

        self.assertTrue(holds(old, T0 + timedelta(seconds=5)))
        self.assertFalse(holds(old, T0 + timedelta(seconds=30)))
        new = self.acquire("b", T0 + timedelta(seconds=31))
        self.assertFalse(holds(old, T0 + timedelta(seconds=32)))
        self.assertTrue(holds(new, T0 + timedelta(seconds=32)))

    def test_names_are_independent(self):
        """Two lease names are held independently."""
        self.acquire("a", T0)
        other = resolve(self.store.acquire("gc", "b", 30.0, now=T0))
        self.assertEqual((other.holder, other.token), ("b", 1))

    def test_bad_arguments(self):
        """An empty or overlong name, an empty holder or a non-positive duration is refused naming the problem."""
        with self.assertRaises(ValueError) as e:
            resolve(self.store.acquire("", "a", 30.0, now=T0))
        self.assertIn("lease name", str(e.exception))
        with self.assertRaises(ValueError):
            resolve(self.store.acquire("x" * 201, "a", 30.0, now=T0))
        with self.assertRaises(ValueError) as e:
            resolve(self.store.acquire(NAME, "", 30.0, now=T0))
        self.assertIn("lease holder", str(e.exception))
        with self.assertRaises(ValueError) as e:
            resolve(self.store.acquire(NAME, "a", 0, now=T0))
        self.assertIn("positive", str(e.exception))


class SqliteLeaseStoreTests(LeaseStoreTestsMixin, unittest.TestCase):
    """The lease store on SQLite."""

    def make_config(self):
        return sqlite_config()


class PostgresLeaseStoreTests(LeaseStoreTestsMixin, unittest.TestCase):
    """The lease store on PostgreSQL."""

    def make_config(self):
        return create_postgres_database(self)


class PostgresLeaseContentionTests(unittest.TestCase):
    """Two pools (two instances) with several connections each race for one lease on real PostgreSQL."""

    timeout = 120

    async def open(self, config) -> Database:
        config = replace(config, postgres=replace(config.postgres, max_open_conns=4))
        pool = make_pool(config, reactor)
        self.addCleanup(lambda: ensureDeferred(pool.close()))
        await prepare_database(pool)
        return Database(pool, reactor)

    async def test_one_winner_per_round(self):
        """In each round 16 concurrent attempts from two pools after expiry yield one holder and token + 1."""
        config = create_postgres_database(self)
        first, second = await self.open(config), await self.open(config)
        rounds = 15
        for n in range(rounds):
            at = T0 + timedelta(seconds=60 * n)  # every round starts after the last tenure expired
            attempts = []
            for i in range(8):
                for db, side in ((first, "a"), (second, "b")):
                    attempts.append(ensureDeferred(db.leases.acquire(NAME, f"{side}{i}", 30.0, now=at)))
            results = await DeferredList(attempts, fireOnOneErrback=True, consumeErrors=True)
            won = [lease for _, lease in results if lease is not None]
            self.assertEqual(len(won), 1, f"round {n}: {won}")
            self.assertEqual(won[0].token, n + 1)
            self.assertEqual(await first.leases.get(NAME), won[0])
