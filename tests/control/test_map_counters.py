"""The notifier types the map messages it builds as Headscale types its changes (``response_type``)."""

import json

from twisted.trial import unittest

from tests.control._harness import Harness

_ALL = json.dumps({"acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}]})
_SSH_ONLY = json.dumps({"acls": [{"action": "accept", "src": ["*"], "dst": ["*:22"]}]})


class ResponseTypeTests(unittest.TestCase):
    """headscale_mapresponse_generated_total's response_type follows what a message carries."""

    def test_types(self):
        """Full maps, a join (peers), an endpoint report (patch), a rename (self) and a new policy (policy)."""
        h = Harness(self, policy=_ALL)
        counters = h.notifier.map_counters
        a, _ = h.register("alpha")
        h.stream(a)
        self.assertEqual(counters.generated, {"full": 1})
        b, _ = h.register("bravo")
        self.assertEqual(counters.generated.get("peers"), 1)
        h.stream(b)
        self.assertEqual(counters.generated["full"], 2)
        patches = counters.generated.get("patch", 0)  # bravo coming online and its disco key were patches too
        h.run(h.poll.apply(h.state.get(b.id), _lite(h, b, Endpoints=["192.0.2.7:41641"])))
        self.assertEqual(counters.generated.get("patch"), patches + 1)
        before = dict(counters.generated)
        h.run(h.admin.rename(a.id, "first"))
        # alpha's own stream gets only its new entry, bravo's the peer change
        self.assertEqual((counters.generated.get("self"), counters.generated["peers"]), (1, before["peers"] + 1))
        h.run(h.set_policy(_SSH_ONLY))
        self.assertGreaterEqual(counters.generated.get("policy", 0), 1)
        self.assertLessEqual(set(counters.generated), {"full", "self", "peers", "patch", "policy", "config"})
        self.assertEqual(counters.sent[("ok", "full")], 2)


def _lite(h, node, **extra):
    from headscale_tw.control.poll import parse_map_request

    return parse_map_request(h.map_request(node, OmitPeers=True, **extra))
