"""Tests for :mod:`headscale_tw.control.instances`: registries on one real (threadless SQLite) table and a Clock."""

from twisted.internet.task import Clock
from twisted.trial import unittest

from headscale_tw.clock import utc_now
from headscale_tw.control.instances import Advertised, InstanceRegistry, membership_dispatch
from headscale_tw.testing.db import UnreachableStore, open_test_database, resolve

START = 1_796_000_000.0  # a December 2026 wall-clock time


class InstanceRegistryTests(unittest.TestCase):
    """Registries beat, see each other join and leave, and survive a lost database, on the injected clock."""

    def setUp(self):
        self.db = open_test_database(self)
        self.clock = Clock()
        self.clock.advance(START)
        self.seen = {}

    def registry(self, ident, store=None, **advertised):
        def on_membership(membership):
            self.seen.setdefault(ident, []).append((sorted(membership.ids()), [i.id for i in membership.joined],
                                                    list(membership.left)))

        registry = InstanceRegistry(store or self.db.instances, ident, self.clock, Advertised(**advertised),
                                    on_membership=on_membership, interval=2.0, lifetime=6.0)
        self.addCleanup(lambda: registry.running and resolve(registry.stopService()))
        return registry

    def advance(self, seconds):
        """Move the clock on one second at a time, so every timer fires in order."""
        for _ in range(int(seconds)):
            self.clock.advance(1)

    def test_first_round_reports_itself(self):
        """The first round writes the row and reports the live set, this instance included."""
        a = self.registry("a", derp_url="https://a/derp")
        a.startService()
        self.assertEqual(self.seen["a"], [(["a"], ["a"], [])])
        self.assertEqual(resolve(self.db.instances.get("a")).derp_url, "https://a/derp")
        self.assertTrue(a.self_live)

    def test_join_and_clean_leave(self):
        """B's start is seen by A at A's next round; B's clean stop removes its row and A sees it leave."""
        a = self.registry("a")
        a.startService()
        b = self.registry("b")
        b.startService()
        self.advance(2)
        self.assertEqual(self.seen["a"][-1], (["a", "b"], ["b"], []))
        resolve(b.stopService())
        self.assertIsNone(resolve(self.db.instances.get("b")))
        self.advance(2)
        self.assertEqual(self.seen["a"][-1], (["a"], [], ["b"]))
        self.assertFalse(a.is_live("b"))

    def test_dead_instance_expires(self):
        """An instance that stops beating without a clean stop is gone for the others once its beat runs out."""
        a = self.registry("a")
        a.startService()
        store = UnreachableStore(self.db.instances)
        b = self.registry("b", store=store)
        b.startService()
        self.advance(2)
        self.assertTrue(a.is_live("b"))
        store.down = True  # b can no longer write: to a, it is dead
        self.advance(4)
        self.assertTrue(a.is_live("b"))
        self.advance(4)
        self.assertFalse(a.is_live("b"))
        self.assertEqual(self.seen["a"][-1], (["a"], [], ["b"]))

    def test_lost_database_keeps_membership_but_not_self(self):
        """Rounds that fail change no membership, but this instance stops counting itself live when its beat runs out."""
        store = UnreachableStore(self.db.instances)
        a = self.registry("a", store=store)
        a.startService()
        reports = len(self.seen["a"])
        store.down = True
        self.advance(8)
        self.assertEqual(len(self.seen["a"]), reports)
        self.assertTrue(a.is_live("a"))
        self.assertFalse(a.self_live)
        self.assertGreaterEqual(a.failures, 3)
        store.down = False
        self.advance(2)
        self.assertTrue(a.self_live)
        self.assertEqual(a.failures, 0)

    def test_advertised_change_reported(self):
        """A live instance that advertises a new DERP URL is reported again with no one joining or leaving."""
        a = self.registry("a")
        a.startService()
        resolve(self.db.instances.heartbeat("b", 6.0, derp_url="https://b1/derp", now=utc_now(self.clock)))
        self.advance(2)
        resolve(self.db.instances.heartbeat("b", 6.0, derp_url="https://b2/derp", now=utc_now(self.clock)))
        self.advance(2)
        self.assertEqual(self.seen["a"][-1], (["a", "b"], [], []))
        self.assertEqual([i.derp_url for i in a.live() if i.id == "b"], ["https://b2/derp"])

    def test_prunes_long_gone_instances_every_n_rounds(self):
        """Every ``prune_every`` rounds a registry deletes rows expired over an hour ago, and only those."""
        resolve(self.db.instances.heartbeat("gone", 6.0, now=utc_now(self.clock)))
        self.clock.advance(3600 + 7)
        a = InstanceRegistry(self.db.instances, "a", self.clock, interval=2.0, lifetime=6.0, prune_every=3)
        self.addCleanup(lambda: a.running and resolve(a.stopService()))
        a.startService()
        self.advance(2)
        self.assertIsNotNone(resolve(self.db.instances.get("gone")))  # two rounds: not yet
        self.advance(2)
        self.assertIsNone(resolve(self.db.instances.get("gone")))
        self.assertIsNotNone(resolve(self.db.instances.get("a")))

    def test_stop_cancels_timer(self):
        """After stop no timer is left on the clock and the row is gone."""
        a = self.registry("a")
        a.startService()
        resolve(a.stopService())
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertFalse(a.self_live)

    def test_lifetime_must_outlive_interval(self):
        """A heartbeat that would lapse before the next one is refused."""
        with self.assertRaises(ValueError):
            InstanceRegistry(self.db.instances, "a", self.clock, interval=5.0, lifetime=5.0)


class MembershipDispatchTests(unittest.TestCase):
    """The instance registry's ``on_membership`` reaches every consumer, even past a failing one."""

    def test_every_consumer_gets_it(self):
        """Each consumer gets the membership in turn; one that raises is logged and the next still runs."""
        seen = []

        def broken(membership):
            raise RuntimeError("boom")

        dispatch = membership_dispatch([seen.append, broken, lambda m: seen.append(("second", m))])
        dispatch("m1")
        self.assertEqual(seen, ["m1", ("second", "m1")])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
