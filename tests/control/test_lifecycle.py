"""Tests for headscale_tw.control.lifecycle: ephemeral garbage collection, and the jobs under leases."""

from twisted.trial import unittest

from headscale_tw.config.model import Config, DNSConfig, NodeConfig
from headscale_tw.control.audit import AuditLog
from headscale_tw.control.lease import LeaseKeeper
from headscale_tw.control.lifecycle import EXPIRY_LEASE, LIFECYCLE_LEASES, NodeLifecycle
from tests.control._harness import Harness


class EphemeralTests(unittest.TestCase):
    """Ephemeral nodes go away after their last session has been idle long enough."""

    def setUp(self):
        config = Config(node=NodeConfig(ephemeral_inactivity_timeout=120.0), dns=DNSConfig(base_domain="t.example"))
        self.h = Harness(self, config=config)
        self.h.make_key("eph", ephemeral=True, reusable=True)
        self.e, _ = self.h.register("e", auth="eph")
        self.p, _ = self.h.register("p")
        self.sp = self.h.stream(self.p)

    def test_deleted_after_timeout(self):
        """An ephemeral node idle past the timeout is deleted and peers get PeersRemoved."""
        se = self.h.stream(self.e)
        self.h.clock.advance(500)
        self.assertEqual(self.h.run(self.h.lifecycle.collect_ephemeral()), [])
        se.session.connection_lost()
        self.h.clock.advance(119)
        self.assertEqual(self.h.run(self.h.lifecycle.collect_ephemeral()), [])
        self.h.clock.advance(1)
        self.assertEqual(self.h.run(self.h.lifecycle.collect_ephemeral()), [self.e.id])
        self.assertNotIn(self.e.id, self.sp.applier.peers)
        self.assertIsNone(self.h.run(self.h.db.nodes.get_by_machine_key(self.e.machine_key)))

    def test_never_connected(self):
        """An ephemeral node that never streams is collected a timeout after start."""
        self.h.clock.advance(120)
        self.assertEqual(self.h.run(self.h.lifecycle.collect_ephemeral()), [self.e.id])

    def test_registered_late_gets_its_full_timeout(self):
        """An ephemeral node registered long after start, not yet streaming, is idle since it registered, not since start."""
        self.h.clock.advance(10_000)
        late, _ = self.h.register("late", auth="eph")
        self.assertNotIn(late.id, self.h.run(self.h.lifecycle.collect_ephemeral()))
        self.h.clock.advance(119)
        self.assertNotIn(late.id, self.h.run(self.h.lifecycle.collect_ephemeral()))
        self.h.clock.advance(1)
        self.assertIn(late.id, self.h.run(self.h.lifecycle.collect_ephemeral()))

    def test_regular_nodes_kept(self):
        """Non-ephemeral nodes are never collected."""
        self.h.clock.advance(10_000)
        self.assertNotIn(self.p.id, self.h.run(self.h.lifecycle.collect_ephemeral()))
        self.assertIn(self.p.id, self.h.state.nodes)


class LeasedJobTests(unittest.TestCase):
    """With leases (several instances), only the holder of a job's lease does it, and its audit rows are fenced."""

    def setUp(self):
        config = Config(node=NodeConfig(ephemeral_inactivity_timeout=120.0), dns=DNSConfig(base_domain="t.example"))
        self.h = Harness(self, config=config)
        self.keepers = {}
        for holder in ("a", "b"):
            self.keepers[holder] = {name: LeaseKeeper(self.h.db.leases, name, holder, self.h.clock)
                                    for name in LIFECYCLE_LEASES}
            for keeper in self.keepers[holder].values():
                keeper.startService()
                self.addCleanup(keeper.stopService)
        self.h.make_key("eph", ephemeral=True, reusable=True)
        self.e, _ = self.h.register("e", auth="eph")

    def lifecycle(self, holder, lease_for=None):
        keepers = self.keepers[holder]
        return NodeLifecycle(self.h.state, self.h.notifier, self.h.registrar, self.h.config,
                             audit=AuditLog(self.h.db.audit, self.h.now, instance=holder),
                             lease_for=lease_for or (lambda name: keepers[name].lease))

    def audit_instances(self, action):
        return [row.instance for row in self.h.run(self.h.db.audit.list(action=action))]

    def test_only_the_holder_collects(self):
        """The ephemeral sweep of the instance without the lease deletes nothing; the holder's deletes once."""
        a, b = self.lifecycle("a"), self.lifecycle("b")
        self.h.clock.advance(120)
        self.assertEqual(self.h.run(b.collect_ephemeral()), [])
        self.assertEqual(self.h.run(a.collect_ephemeral()), [self.e.id])
        self.assertEqual(self.audit_instances("node.delete"), ["a"])

    def test_expiry_announced_by_all_recorded_by_the_holder(self):
        """Both sweeps announce an expiry; only the holder's writes the node.expired row."""
        a, b = self.lifecycle("a"), self.lifecycle("b")
        self.h.run(self.h.state.update_node(self.e.id, expiry=self.h.now()))
        self.assertEqual(self.h.run(b.expire_due()), [self.e.id])
        self.assertEqual(self.h.run(a.expire_due()), [self.e.id])
        self.assertEqual(self.audit_instances("node.expired"), ["a"])

    def test_holder_that_lost_its_lease_writes_no_row(self):
        """A holder acting on a tenure another instance has since taken over writes no audit row."""
        stale = self.keepers["a"][EXPIRY_LEASE].lease
        for keeper in self.keepers["a"].values():
            keeper.stopService()  # releases: b takes over at its next attempt
        self.h.clock.advance(10)
        self.assertIsNotNone(self.keepers["b"][EXPIRY_LEASE].lease)
        paused = self.lifecycle("a", lease_for=lambda name: stale)
        self.h.run(self.h.state.update_node(self.e.id, expiry=self.h.now()))
        self.assertEqual(self.h.run(paused.expire_due()), [self.e.id])
        self.assertEqual(self.audit_instances("node.expired"), [])

    def test_single_instance_acts_without_leases(self):
        """Without lease_for (one instance) every job runs and records."""
        self.h.clock.advance(120)
        self.assertEqual(self.h.run(self.h.lifecycle.collect_ephemeral()), [self.e.id])
