"""
Work done per change grows with the nodes it affects, not with N².

The control plane is driven in-process (threadless SQLite, a Clock) at two
sizes; for each change we count peer entries serialized
(``Mapper.serializations``), frames built (``MapNotifier.frames_built``),
policy views recomputed (``ViewCache.views_built``), sessions the
notifier examined to find who a change concerns
(``MapNotifier.viewers_visited``) and frames written to streams. Extends ``tests/control/test_notifier.py`` ``WorkTests`` (one size,
no policy) with the size comparison and a policy with small visibility.
"""

from __future__ import annotations

import json

from twisted.trial import unittest

from headscale_tw.control.framing import encode_json
from tests.control._harness import Harness

GROUP = 5


def group_policy(groups: int, hub: bool = False) -> str:
    """Tag groups that see each other; with ``hub``, a ``tag:hub`` node reaches every node (as in the benchmark)."""
    owners = {f"tag:g{g}": ["alice@"] for g in range(groups)}
    acls = [{"action": "accept", "src": [f"tag:g{g}"], "dst": [f"tag:g{g}:*"]} for g in range(groups)]
    if hub:
        owners["tag:hub"] = ["alice@"]
        acls.append({"action": "accept", "src": ["tag:hub"], "dst": ["*:*"]})
    return json.dumps({"tagOwners": owners, "acls": acls})


class _Sized:
    """A harness with ``n`` streaming nodes and counters reset."""

    def __init__(self, testcase, n: int, grouped: bool = False, hub: bool = False):
        self.h = Harness(testcase, policy=group_policy(n // GROUP + 1, hub) if grouped else None)
        self.grouped = grouped
        self.nodes = [self.register(i) for i in range(n)]
        self.streams = [self.h.stream(node) for node in self.nodes]
        for node in self.nodes:
            self.h.mapper.peer_entry(node.id)
        self.reset()

    def register(self, i: int, group: int | None = None):
        extra = {}
        if self.grouped:
            tag = f"tag:g{i // GROUP if group is None else group}"
            extra["Hostinfo"] = {"Hostname": f"n{i}", "OS": "linux", "RequestTags": [tag]}
        node, response = self.h.register(f"n{i}", **extra)
        assert "Error" not in response, response
        return node

    def reset(self):
        self.h.mapper.serializations.clear()
        self.h.mapper.peer_lists_built = 0
        self.h.policy.views.rules_encoded = 0
        self.h.policy.views.rules_reduced = 0
        self.h.notifier.frames_built = 0
        self.h.policy.views.views_built = 0
        self.h.notifier.viewers_visited = 0
        self.counts = [len(s.writes) for s in self.streams]

    def work(self) -> dict:
        writes = [len(s.writes) - c for s, c in zip(self.streams, self.counts)]
        return {
            "serialized": sum(self.h.mapper.serializations.values()),
            "frames": self.h.notifier.frames_built,
            "views": self.h.policy.views.views_built,
            "visited": self.h.notifier.viewers_visited,
            "streams_written": sum(1 for w in writes if w),
            "rules_encoded": self.h.policy.views.rules_encoded,
            "rules_reduced": self.h.policy.views.rules_reduced,
            "peer_lists": self.h.mapper.peer_lists_built,
        }


class UniformWorkTests(unittest.TestCase):
    """No policy (everyone sees everyone): per-change work at N=50 and N=200."""

    SIZES = (50, 200)

    def measure(self, change) -> list[dict]:
        out = []
        for n in self.SIZES:
            sized = _Sized(self, n)
            change(sized)
            out.append(sized.work())
        return out

    def test_endpoint_change(self):
        """An endpoint change builds one frame and serializes nothing at either size; writes = N-1."""
        small, big = self.measure(lambda s: s.h.lite(s.h.state.get(s.nodes[0].id), Endpoints=["192.0.2.9:41641"]))
        for work, n in ((small, 50), (big, 200)):
            self.assertEqual((work["serialized"], work["frames"], work["streams_written"]), (0, 1, n - 1))

    def test_hostinfo_change(self):
        """A Hostinfo change serializes the node's entry once and builds one frame, independent of N."""
        def change(s):
            node = s.h.state.get(s.nodes[0].id)
            s.h.lite(node, Hostinfo=dict(node.hostinfo, OSVersion="7.0"))
        small, big = self.measure(change)
        self.assertEqual((small["serialized"], small["frames"]), (1, 1))
        self.assertEqual((big["serialized"], big["frames"]), (1, 1))

    def test_join(self):
        """A joining node costs its own entry, one frame for its peers and its own full map from the cache."""
        def change(s):
            new = s.register(10_000)
            s.streams.append(s.h.stream(new))
            s.counts.append(0)
        small, big = self.measure(change)
        self.assertEqual(small["serialized"], big["serialized"])
        self.assertLessEqual(big["serialized"], 2)
        self.assertEqual(small["frames"], big["frames"])
        self.assertEqual(big["streams_written"], 201)

    def test_delete(self):
        """A deletion builds one frame regardless of N and serializes nothing."""
        small, big = self.measure(lambda s: s.h.run(s.h.admin.delete(s.nodes[-1].id)))
        self.assertEqual((small["serialized"], small["frames"]), (0, 1))
        self.assertEqual((big["serialized"], big["frames"]), (0, 1))


class GroupWorkTests(unittest.TestCase):
    """A policy where each node sees only its group of 5: work should follow the group, not N."""

    SIZES = (15, 60)

    def measure(self, change) -> list[dict]:
        out = []
        for n in self.SIZES:
            sized = _Sized(self, n, grouped=True)
            change(sized)
            out.append(sized.work())
        return out

    def test_endpoint_change(self):
        """An endpoint change recomputes no view and reaches only the group, at both sizes."""
        small, big = self.measure(lambda s: s.h.lite(s.h.state.get(s.nodes[0].id), Endpoints=["192.0.2.9:41641"]))
        self.assertEqual(small, big)
        self.assertEqual((big["views"], big["frames"], big["streams_written"]), (0, 1, GROUP - 1))
        self.assertEqual(big["visited"], GROUP - 1)

    def test_hostinfo_change_visits_group(self):
        """A Hostinfo change (a full entry pushed to its peers) examines only the group's sessions."""
        def change(s):
            node = s.h.state.get(s.nodes[0].id)
            s.h.lite(node, Hostinfo=dict(node.hostinfo, OSVersion="7.0"))
        small, big = self.measure(change)
        self.assertEqual(small, big)
        self.assertEqual((big["frames"], big["streams_written"], big["visited"]), (1, GROUP - 1, GROUP - 1))

    def test_join_and_delete_visit_group(self):
        """A join and a deletion examine as many sessions at both sizes (the group, not every stream)."""
        def change(s):
            new = s.register(10_000, group=0)
            s.streams.append(s.h.stream(new))
            s.counts.append(0)
            s.h.run(s.h.admin.delete(s.nodes[1].id))
        small, big = self.measure(change)
        self.assertEqual(small["visited"], big["visited"])
        self.assertLessEqual(big["visited"], 4 * GROUP)

    def test_join_frames_and_entries(self):
        """A node joining group 0 builds frames and entries for that group only, at both sizes."""
        def change(s):
            new = s.register(10_000, group=0)
            s.streams.append(s.h.stream(new))
            s.counts.append(0)
        small, big = self.measure(change)
        self.assertEqual((small["serialized"], small["frames"], small["streams_written"]),
                         (big["serialized"], big["frames"], big["streams_written"]))
        self.assertEqual(big["streams_written"], GROUP + 1)

    def test_join_views_linear(self):
        """Views recomputed for a join are at most one per node (linear in N, never N²)."""
        def change(s):
            s.register(10_000, group=0)
        small, big = self.measure(change)
        self.assertLessEqual(small["views"], self.SIZES[0] + 1)
        self.assertLessEqual(big["views"], self.SIZES[1] + 1)

    def test_join_views_follow_group(self):
        """Views recomputed for a join stay the same at both sizes (only the affected group)."""
        def change(s):
            s.register(10_000, group=0)
        small, big = self.measure(change)
        self.assertEqual(small["views"], big["views"])


class HubWorkTests(unittest.TestCase):
    """
    Groups of 5 plus a hub every node sees (the benchmark's groups policy): a
    hub's join and deletion reach every stream with a message of its own
    (each node's filter is reduced to its own addresses), but what those
    messages share is built once, at any size.
    """

    SIZES = (20, 80)

    def measure(self, change) -> list[tuple[dict, _Sized]]:
        out = []
        for n in self.SIZES:
            sized = _Sized(self, n, grouped=True, hub=True)
            change(sized)
            out.append((sized.work(), sized))
        return out

    @staticmethod
    def join_hub(s: _Sized):
        node, response = s.h.register("hub", Hostinfo={"Hostname": "hub", "OS": "linux", "RequestTags": ["tag:hub"]})
        assert "Error" not in response, response
        s.hub = node

    def assert_filters_as_rebuilt(self, s: _Sized):
        """Every stream's packet filter equals its filter encoded from scratch by the compiled policy."""
        cp = s.h.policy.compiled()
        for node, stream in zip(s.nodes, s.streams):
            reference = encode_json(cp.filter_wire_for(s.h.policy.inputs.nodes[node.id]))
            self.assertEqual(stream.applier.packet_filter, json.loads(reference), f"filter of node {node.id}")

    def test_hub_join(self):
        """
        A hub's join encodes one filter rule (the hub's) and one ``PeersChanged``
        list at both sizes, though every stream gets its own message.
        """
        for (work, s), n in zip(self.measure(self.join_hub), self.SIZES):
            self.assertEqual((work["rules_encoded"], work["peer_lists"], work["streams_written"]), (1, 1, n))
            self.assertGreater(work["frames"], n // GROUP)  # distinct messages: per-node filters
            self.assertTrue(all(s.hub.id in stream.applier.peers for stream in s.streams))
            self.assert_filters_as_rebuilt(s)

    def test_hub_join_reduces_only_the_hub_rule(self):
        """
        A hub's join reduces one rule per node (the hub's, which names every
        node) and the hub's own: each node's unchanged group rule keeps its
        reduction, so the count is streams + 1, not streams x rules.
        """
        for n in self.SIZES:
            s = _Sized(self, n, grouped=True, hub=True)
            s.reset()
            self.join_hub(s)
            self.assertEqual(s.work()["rules_reduced"], n + 1, f"at {n} streams")
            self.assertTrue(all(s.hub.id in stream.applier.peers for stream in s.streams))
            self.assert_filters_as_rebuilt(s)

    def test_hub_delete_reduces_no_rule(self):
        """A hub's deletion reduces no rule: each node's remaining rule keeps its reduction."""
        for n in self.SIZES:
            s = _Sized(self, n, grouped=True, hub=True)
            self.join_hub(s)
            s.reset()
            s.h.run(s.h.admin.delete(s.hub.id))
            self.assertEqual(s.work()["rules_reduced"], 0, f"at {n} streams")
            self.assertFalse(any(s.hub.id in stream.applier.peers for stream in s.streams))
            self.assert_filters_as_rebuilt(s)

    def test_hub_join_variant_looked_up_once_per_viewer(self):
        """
        A hub's join looks up the hub's variant once per viewer (when the
        viewer's delta is made), not again when its message is built.
        """
        for n in self.SIZES:
            s = _Sized(self, n, grouped=True, hub=True)
            lookups = []
            variant = s.h.policy.variant

            def counted(viewer_id, node_id, variant=variant):
                lookups.append((viewer_id, node_id))
                return variant(viewer_id, node_id)

            s.h.policy.variant = counted  # type: ignore[method-assign]
            self.join_hub(s)
            hub_lookups = [viewer for viewer, peer in lookups if peer == s.hub.id]
            self.assertEqual(sorted(hub_lookups), sorted(node.id for node in s.nodes), f"at {n} streams")
            self.assertTrue(all(s.hub.id in stream.applier.peers for stream in s.streams))
            self.assert_filters_as_rebuilt(s)

    def test_hub_delete(self):
        """A hub's deletion encodes no filter rule at either size (each node's remaining rules are known)."""
        def change(s):
            self.join_hub(s)
            s.reset()
            s.h.run(s.h.admin.delete(s.hub.id))

        for (work, s), n in zip(self.measure(change), self.SIZES):
            self.assertEqual((work["rules_encoded"], work["streams_written"]), (0, n))
            self.assertFalse(any(s.hub.id in stream.applier.peers for stream in s.streams))
            self.assert_filters_as_rebuilt(s)
