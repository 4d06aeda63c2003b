"""
Tests for the wiring of headscale_tw.control.policy.TailnetPolicy: its
interface, reads without side effects, and writers that bring nodes in.
"""

from __future__ import annotations

import json

from twisted.trial import unittest
from zope.interface.verify import verifyObject

from headscale_tw.control.framing import ZSTD
from headscale_tw.interfaces import ITailnetPolicy
from headscale_tw.testing.netmap import NetmapApplier
from tests.control._harness import Harness

GROUP = json.dumps({
    "tagOwners": {"tag:g": ["alice@"]},
    "acls": [{"action": "accept", "src": ["tag:g"], "dst": ["tag:g:*"]}],
    "ssh": [{"action": "check", "src": ["tag:g"], "dst": ["tag:g"], "users": ["root"]}],
})


def _tagged(name: str) -> dict:
    return {"Hostinfo": {"Hostname": name, "OS": "linux", "RequestTags": ["tag:g"]}}


class InterfaceTests(unittest.TestCase):
    """The facade provides exactly what its callers use."""

    def test_provides(self):
        """``TailnetPolicy`` provides :class:`ITailnetPolicy`, with and without a policy."""
        self.assertTrue(verifyObject(ITailnetPolicy, Harness(self).policy))
        self.assertTrue(verifyObject(ITailnetPolicy, Harness(self, policy=GROUP).policy))

    def test_no_notifier(self):
        """The policy side holds no notifier and offers no way to attach one."""
        policy = Harness(self, policy=GROUP).policy
        self.assertFalse(hasattr(policy, "attach"))
        self.assertFalse(hasattr(policy, "notifier"))


class _HeldJoin:
    """A streaming tag:g node, then a second one whose join is held in a batch window."""

    def build(self):
        self.h = h = Harness(self, policy=GROUP)
        h.notifier.batch_delay = 0.005
        self.first, _ = h.register("first", **_tagged("first"))
        self.stream = h.stream(self.first)
        h.clock.advance(0.005)
        self.writes = len(self.stream.writes)
        self.new, _ = h.register("new", **_tagged("new"))
        self.assertEqual(h.notifier.held, 1)  # the join waits for the flush
        self.addCleanup(h.notifier.stop)


class ReadTests(_HeldJoin, unittest.TestCase):
    """Reads of a node the policy side has not taken in change nothing and push nothing."""

    def setUp(self):
        self.build()

    def test_reads_of_unknown_node(self):
        """Every read of the held node answers from what is known and leaves the policy side as it was."""
        policy, new, first = self.h.policy, self.new.id, self.first.id
        known, dirty = dict(policy.inputs.nodes), set(policy.inputs.dirty)
        views, recompiles = dict(policy.views.views), policy.compilation.recompiles
        self.assertEqual(policy.peer_ids(new), [])
        self.assertEqual(policy.filter_bytes(new), b"[]")
        self.assertIsNone(policy.ssh_bytes(new))
        self.assertEqual(policy.self_view(new), ((), (), ()))
        self.assertFalse(policy.sees(first, new))
        self.assertIsNone(policy.watchers(new))
        self.assertEqual(policy.variant(first, new)[0][0], f"{self.new.ipv4}/32")
        self.assertEqual(policy.inputs.nodes, known)
        self.assertEqual(policy.inputs.dirty, dirty)
        self.assertEqual(policy.views.views, views)
        self.assertEqual(policy.compilation.recompiles, recompiles)
        self.assertEqual(len(self.stream.writes), self.writes)
        self.assertEqual(self.h.notifier.held, 1)


class OneShotAfterHeldJoinTests(_HeldJoin, unittest.TestCase):
    """A one-shot map request of a node whose join is still held brings the node in first."""

    def setUp(self):
        self.build()

    def test_one_shot_map_is_complete(self):
        """The new node's one-shot map has its peer and filter; the peer learns of it at the flush."""
        applier = NetmapApplier(ZSTD)
        applier.feed(self.h.notifier.one_shot(self.new.id, ZSTD))
        self.assertEqual(set(applier.peers), {self.first.id})
        self.assertIn(self.first.ipv4, json.dumps(applier.packet_filter))
        self.assertEqual(len(self.stream.writes), self.writes)  # held, not sent at once
        self.h.clock.advance(0.005)
        self.assertEqual(set(self.stream.applier.peers), {self.new.id})
        self.assertIn(self.new.ipv4, json.dumps(self.stream.applier.packet_filter))


class SSHCheckAfterHeldJoinTests(_HeldJoin, unittest.TestCase):
    """An SSH check naming a node whose join is still held brings the node in before asking the policy."""

    def setUp(self):
        self.build()

    def test_check_rule_found(self):
        """A check from the new node to the first is delegated (the policy's check rule applies), not refused."""
        from twisted.internet.defer import Deferred

        from headscale_tw.control.ssh_check import SSHChecks

        h = self.h
        checks = SSHChecks(h.state, h.policy, h.notifier, h.registrar.auth_requests, h.config.server_url)
        d = Deferred.fromCoroutine(checks.action(self.first.machine_key, str(self.new.id), str(self.first.id),
                                                 {"local_user": "root"}, source="192.0.2.9"))
        self.assertIn("holdAndDelegate", self.successResultOf(d))
        self.assertIn(self.new.id, h.policy.inputs.nodes)
