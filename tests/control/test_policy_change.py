"""
A change of policy (API set, SIGHUP reload) compiles once, keeps the peer
lists the new rules leave as they were, and still gives every stream the
bytes a from-scratch build gives.

Tailnets of tag groups plus a hub that reaches every node (the benchmark's
groups policy, ``tests.bench.test_work_per_change.group_policy``), driven
through the ``Harness`` with streaming nodes; and the conformance corpus'
tailnets with routes, exit nodes and retags, compared with a full rebuild.
"""

from __future__ import annotations

import json

from twisted.trial import unittest

from headscale_tw.control.framing import encode_json
from headscale_tw.control.policy import PolicyRejected, all_peer_views
from headscale_tw.policy.model import PolicyError
from tests.bench.test_work_per_change import GROUP, _Sized
from tests.control.test_policy_incremental import corpus_runs, rebuilt_views

N = 30


def ports_policy(n: int, ports: str, extra_rules=(), tests=()) -> str:
    """The groups-plus-hub policy for ``n`` nodes with every rule on ``ports``."""
    groups = n // GROUP + 1
    owners = {f"tag:g{g}": ["alice@"] for g in range(groups)}
    owners["tag:hub"] = ["alice@"]
    acls = [{"action": "accept", "src": [f"tag:g{g}"], "dst": [f"tag:g{g}:{ports}"]} for g in range(groups)]
    acls.append({"action": "accept", "src": ["tag:hub"], "dst": [f"*:{ports}"]})
    body: dict = {"tagOwners": owners, "acls": acls + list(extra_rules)}
    if tests:
        body["tests"] = list(tests)
    return json.dumps(body)


class PolicyChangeTests(unittest.TestCase):
    """A policy set or reloaded over streaming nodes in tag groups with a hub."""

    def setUp(self):
        self.s = _Sized(self, N, grouped=True, hub=True)
        h = self.s.h
        node, response = h.register("hub", Hostinfo={"Hostname": "hub", "OS": "linux", "RequestTags": ["tag:hub"]})
        assert "Error" not in response, response
        self.hub = node
        h.run(h.set_policy(ports_policy(N, "*")))
        self.s.reset()
        self.compilations = h.policy.compilation.compilations

    def compiled_since(self) -> int:
        return self.s.h.policy.compilation.compilations - self.compilations

    def assert_streams_as_rebuilt(self):
        """Every stream's filter and peers equal those built from scratch under the policy in force."""
        h = self.s.h
        cp = h.policy.compiled()
        everyone = all_peer_views(cp)
        for node, stream in zip(self.s.nodes, self.s.streams):
            pnode = h.policy.inputs.nodes[node.id]
            self.assertEqual(stream.applier.packet_filter, json.loads(encode_json(cp.filter_wire_for(pnode))),
                             f"filter of node {node.id}")
            self.assertEqual(set(stream.applier.peers), set(everyone.get(node.id, {})), f"peers of node {node.id}")
        self.assertEqual(h.policy.views.views, rebuilt_views(h.policy))

    def test_set_compiles_once(self):
        """Setting a new policy compiles it once: the checked compilation is the one put in force."""
        h = self.s.h
        h.run(h.set_policy(ports_policy(N, "22,443")))
        self.assertEqual(self.compiled_since(), 1)
        self.assert_streams_as_rebuilt()

    def test_reload_compiles_once(self):
        """A reload (SIGHUP) of a changed stored policy compiles it once."""
        h = self.s.h
        h.run(h.db.policies.set(ports_policy(N, "80"), now=h.now()))
        self.assertTrue(h.run(h.reload_policy()))
        self.assertEqual(self.compiled_since(), 1)
        self.assert_streams_as_rebuilt()

    def test_filter_only_change_keeps_every_peer_list(self):
        """
        Other ports on every rule change every filter and no peer list: each
        view keeps its peers (the same dict), every stream gets its new
        filter, no stream is told of a peer, and the bytes match a rebuild.
        """
        h = self.s.h
        before = {k: v.peers for k, v in h.policy.views.views.items()}
        changes = h.run(h.policy.set_policy(ports_policy(N, "22,443,1000-2000")))
        views = h.policy.views.views
        self.assertTrue(all(views[k].peers is before[k] for k in before))
        self.assertEqual(set(changes.viewers), set(views))
        self.assertFalse(any(c.peers_changed or c.peers_removed for c in changes.viewers.values()))
        h.notifier.push(changes)
        self.assertEqual(self.s.work()["streams_written"], N)
        self.assertEqual(self.s.work()["peer_lists"], 0)
        self.assert_streams_as_rebuilt()

    def test_change_of_reach_rebuilds_those_peers(self):
        """A rule that joins two groups gives their members new peers, as a rebuild does; others keep theirs."""
        h = self.s.h
        before = {k: v.peers for k, v in h.policy.views.views.items()}
        join = {"action": "accept", "src": ["tag:g0"], "dst": ["tag:g1:*"]}
        h.run(h.set_policy(ports_policy(N, "*", extra_rules=[join])))
        views = h.policy.views.views
        joined = {n.id for n in self.s.nodes[:2 * GROUP]}
        self.assertTrue(all(views[k].peers is not before[k] for k in joined))
        self.assertTrue(all(views[k].peers is before[k] for k in before if k not in joined))
        self.assert_streams_as_rebuilt()

    def test_rejected_change_loses_nothing(self):
        """A policy whose tests fail is refused naming the test; the next good one still compiles once."""
        h = self.s.h
        text = h.policy.get_policy()
        writes = [len(s.writes) for s in self.s.streams]
        bad = ports_policy(N, "22", tests=[{"src": "tag:g0", "accept": ["tag:g1:22"]}])
        e = self.failureResultOf(self._deferred(h.set_policy(bad)), PolicyRejected).value
        self.assertIn("tag:g1:22", str(e))
        self.assertEqual(h.policy.get_policy(), text)
        self.assertEqual([len(s.writes) for s in self.s.streams], writes)
        self.assert_streams_as_rebuilt()
        self.compilations = h.policy.compilation.compilations
        h.run(h.set_policy(ports_policy(N, "22")))
        self.assertEqual(self.compiled_since(), 1)
        self.assert_streams_as_rebuilt()

    def test_node_change_between_check_and_apply(self):
        """A node changed after the check (before the apply) is taken in: the compilation is made again."""
        h = self.s.h
        engine = h.policy._checked(ports_policy(N, "22"))
        node = self.s.nodes[0]
        h.run(h.state.update_node(node.id, tags=("tag:g1",)))
        changes = h.run(h.policy._apply(engine, ports_policy(N, "22")))
        self.assertEqual(self.compiled_since(), 2)
        h.notifier.push(changes)
        self.assert_streams_as_rebuilt()

    @staticmethod
    def _deferred(coroutine):
        from twisted.internet.defer import Deferred

        return Deferred.fromCoroutine(coroutine)


class CorpusPolicyChangeTests(unittest.TestCase):
    """On the corpus' tailnets (routes, exit nodes, retags) a re-applied policy gives the views of a rebuild."""

    def test_reapplied_policy_equals_rebuild(self):
        """Every view after applying a policy again (new text, same rules) equals its full rebuild."""
        checked = 0
        for scenario, run in corpus_runs(self, lambda: checked):
            pm = run.pm
            run.state.update_node = self._update_node(run.state)
            for _ in range(5):
                run.step()
            if pm.uniform:
                continue
            text = pm.get_policy() + "\n"
            try:
                engine = pm._checked(text)
            except PolicyError:
                continue
            self.successResultOf(self._deferred(pm._apply(engine, text)))
            self.assertEqual(pm.views.views, rebuilt_views(pm), f"views of scenario {scenario.get('name')!r}")
            checked += 1
        self.assertGreater(checked, 100)

    @staticmethod
    def _update_node(state):
        """``ControlState.update_node`` for the rows of a ``_State`` (auto-approval writes routes)."""
        async def update_node(node_id, **fields):
            row = state.nodes[node_id]
            for name, value in fields.items():
                setattr(row, name, tuple(str(v) for v in value) if name == "approved_routes" else value)
            return row

        return update_node

    @staticmethod
    def _deferred(coroutine):
        from twisted.internet.defer import Deferred

        return Deferred.fromCoroutine(coroutine)
