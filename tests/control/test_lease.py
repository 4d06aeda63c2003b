"""Tests for :mod:`headscale_tw.control.lease`: keepers on one real (threadless SQLite) lease table and a Clock."""

from twisted.internet.task import Clock
from twisted.trial import unittest

from headscale_tw.control.lease import LeaseKeeper
from headscale_tw.testing.db import UnreachableStore, open_test_database, resolve

NAME = "acme:hs.example.com"
START = 1_796_000_000.0  # a December 2026 wall-clock time


class LeaseKeeperTests(unittest.TestCase):
    """Keepers take, renew, lose, hand over and release one lease on the injected clock."""

    def setUp(self):
        self.db = open_test_database(self)
        self.clock = Clock()
        self.clock.advance(START)
        self.events = []

    def keeper(self, holder, store=None):
        keeper = LeaseKeeper(store or self.db.leases, NAME, holder, self.clock,
                             on_change=lambda lease: self.events.append((holder, lease and lease.token)),
                             duration=30.0)
        self.addCleanup(lambda: keeper.running and resolve(keeper.stopService()))
        return keeper

    def advance_to(self, seconds):
        """Move the clock to START + seconds, one second at a time, so every timer fires in order."""
        while self.clock.seconds() < START + seconds:
            self.clock.advance(1)

    def test_first_takes_second_waits(self):
        """The first keeper holds token 1; the second holds nothing and is told nothing."""
        a, b = self.keeper("a"), self.keeper("b")
        a.startService()
        b.startService()
        self.assertEqual((a.lease.holder, a.lease.token), ("a", 1))
        self.assertIsNone(b.lease)
        self.assertEqual(self.events, [("a", 1)])

    def test_renewal_keeps_tenure(self):
        """Over ten minutes of renewals the holder keeps token 1 and nobody is told of a change."""
        a, b = self.keeper("a"), self.keeper("b")
        a.startService()
        b.startService()
        self.advance_to(600)
        self.assertEqual(a.lease.token, 1)
        self.assertGreater(a.lease.expires_at.timestamp(), self.clock.seconds())
        self.assertIsNone(b.lease)
        self.assertEqual(self.events, [("a", 1)])

    def test_holder_cut_off_stops_before_takeover(self):
        """A holder that cannot renew drops the lease at expiry minus margin, before another takes token 2."""
        store = UnreachableStore(self.db.leases)
        a, b = self.keeper("a", store), self.keeper("b")
        a.startService()
        b.startService()
        store.down = True  # right after a's first tenure began at START
        self.advance_to(25)
        self.assertIsNone(a.lease)
        self.assertEqual(self.events, [("a", 1), ("a", None)])
        self.advance_to(40)
        self.assertEqual((b.lease.holder, b.lease.token), ("b", 2))
        self.assertEqual(self.events, [("a", 1), ("a", None), ("b", 2)])
        store.down = False
        self.advance_to(80)
        self.assertIsNone(a.lease)  # b renews; a keeps waiting
        self.assertEqual(b.lease.token, 2)

    def test_stop_releases_for_quick_handover(self):
        """A stopped holder releases the lease; the other takes it at its next attempt, not after expiry."""
        a, b = self.keeper("a"), self.keeper("b")
        a.startService()
        b.startService()
        resolve(a.stopService())
        self.assertEqual(self.events, [("a", 1), ("a", None)])
        self.advance_to(10)
        self.assertEqual((b.lease.holder, b.lease.token), ("b", 2))

    def test_stop_cancels_timers(self):
        """After stop no timer of the keeper is left on the clock."""
        a = self.keeper("a")
        a.startService()
        self.assertEqual(len(self.clock.getDelayedCalls()), 2)  # next attempt, local expiry
        resolve(a.stopService())
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_failing_on_change_is_logged(self):
        """An exception from on_change is logged and the keeper goes on renewing."""
        def broken(lease):
            raise RuntimeError("boom")

        a = LeaseKeeper(self.db.leases, NAME, "a", self.clock, on_change=broken, duration=30.0)
        a.startService()
        self.addCleanup(self.flushLoggedErrors, RuntimeError)  # the release on stop is told too
        self.addCleanup(lambda: resolve(a.stopService()))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.advance_to(100)
        self.assertEqual(a.lease.token, 1)
