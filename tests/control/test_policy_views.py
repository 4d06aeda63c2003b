"""The control plane's fast peer computation agrees with the policy engine on the whole conformance corpus."""

import os

from twisted.trial import unittest

from headscale_tw.control.policy import all_peer_views
from headscale_tw.policy.conformance import compiled_scenarios

CORPUS = os.path.join(os.path.dirname(__file__), "..", "data", "policy-conformance.json.xz")


class AllPeerViewsTests(unittest.TestCase):
    """all_peer_views equals CompiledPolicy.peers_for for every node of every scenario."""

    def test_corpus(self):
        """Every accepted scenario of the corpus gives identical peers, AllowedIPs and PrimaryRoutes."""
        checked = 0
        for scenario, engine, topology in compiled_scenarios(CORPUS):
            cp = engine.compile(topology)
            fast = all_peer_views(cp)
            for node in topology.nodes:
                slow = {pv.node.id: (pv.allowed_ips, pv.primary_routes) for pv in cp.peers_for(node)}
                self.assertEqual(fast[node.id], slow, f"{scenario['id']} node {node.hostname}")
            checked += 1
        self.assertGreater(checked, 500)
