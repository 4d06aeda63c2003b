"""Tests for headscale_tw.control.lifecycle: ephemeral garbage collection."""

from twisted.trial import unittest

from headscale_tw.config.model import Config, DNSConfig, NodeConfig
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
