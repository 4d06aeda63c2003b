"""
Incremental policy views equal a full rebuild after random changes.

Policies and starting tailnets come from the conformance corpus; each run
applies a seeded random sequence of node changes (join, delete, retag,
re-address, route announcements/approvals, online flips for the HA election)
through :meth:`TailnetPolicy.update`, and after each one compares every view
and the reported differences with a full recomputation, and checks that
visibility is symmetric (:meth:`TailnetPolicy.watchers` names every viewer).
"""

from __future__ import annotations

import collections
import ipaddress
import json
import os
import random
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from types import SimpleNamespace

from twisted.trial import unittest

from headscale_tw.control.policy import NodeView, TailnetPolicy, all_peer_views
from headscale_tw.control.viewcache import ViewCache
from headscale_tw.policy.compile import PolicyEngine
from headscale_tw.policy.conformance import build_topology, load_scenarios, scenario_policy_text
from headscale_tw.policy.model import PolicyError

CORPUS = os.path.join(os.path.dirname(__file__), "..", "data", "policy-conformance.json.xz")

ROUTES = ["10.0.0.0/24", "10.0.1.0/24", "192.168.0.0/16", "10.33.0.0/16", "0.0.0.0/0", "::/0"]


class _State:
    """The parts of ControlState a TailnetPolicy reads."""

    def __init__(self):
        self.users = {}
        self.nodes = {}
        self.runtime = {}

    def now(self):
        return datetime(2026, 1, 1, tzinfo=timezone.utc)


def _row(node_id, hostname, user_id, tags, ipv4, ipv6, routable=(), approved=()):
    return SimpleNamespace(
        id=node_id, hostname=hostname, given_name=hostname, user_id=user_id, tags=tuple(tags),
        ipv4=ipv4, ipv6=ipv6, hostinfo={"RoutableIPs": list(routable)}, approved_routes=tuple(approved),
    )


def _group_tailnet(groups: int, extra_rules=(), extra_nodes=()):
    """
    A policy of ``groups`` tags each reaching itself (plus ``extra_rules``) and
    three tagged nodes per tag (plus ``extra_nodes``), synced into a TailnetPolicy.
    """
    text = json.dumps({
        "tagOwners": {f"tag:g{g}": ["alice@"] for g in range(groups)},
        "acls": [{"action": "accept", "src": [f"tag:g{g}"], "dst": [f"tag:g{g}:*"]} for g in range(groups)]
        + list(extra_rules),
    })
    state = _State()
    state.users[1] = SimpleNamespace(id=1, name="alice", email="alice@example.com", idp_groups=())
    for i in range(1, 3 * groups + 1):
        state.nodes[i] = _row(i, f"n{i}", None, (f"tag:g{i % groups}",), f"100.64.{i // 250}.{i % 250 + 1}",
                              f"fd7a:115c:a1e0::{i:x}")
        state.runtime[i] = SimpleNamespace(online=True)
    for row in extra_nodes:
        state.nodes[row.id] = row
        state.runtime[row.id] = SimpleNamespace(online=True)
    pm = TailnetPolicy(state)
    pm.adopt(PolicyEngine(text), text)
    pm.inputs.sync_all()
    return state, pm


class _Run:
    """One scenario's tailnet driven through random changes."""

    def __init__(self, testcase, scenario, seed):
        self.t = testcase
        self.rng = random.Random(seed)
        text = scenario_policy_text(scenario)
        engine = PolicyEngine(text)
        topology = build_topology(scenario)
        self.state = state = _State()
        for u in topology.users:
            state.users[u.id] = SimpleNamespace(id=u.id, name=u.name, email=u.email, idp_groups=())
        for n in topology.nodes:
            state.nodes[n.id] = _row(n.id, n.hostname, n.user_id, n.tags,
                                     n.ipv4 and str(n.ipv4), n.ipv6 and str(n.ipv6),
                                     [str(r) for r in n.advertised_routes], [str(r) for r in n.approved_routes])
            state.runtime[n.id] = SimpleNamespace(online=True)
        self.tags = sorted(set(engine.policy.tag_owners) | {t for n in topology.nodes for t in n.tags})
        self.pm = TailnetPolicy(state)
        self.pm.adopt(engine, text or "")
        self.pm.inputs.sync_all()
        self.pm.rebuild_views()
        self.next_id = max(state.nodes, default=0) + 1
        self.used = {r.ipv4 for r in state.nodes.values()}

    def _address(self):
        while True:
            v4 = f"100.{self.rng.randrange(64, 128)}.{self.rng.randrange(256)}.{self.rng.randrange(1, 255)}"
            if v4 not in self.used:
                self.used.add(v4)
                v6 = str(ipaddress.IPv6Address("fd7a:115c:a1e0::") + int(ipaddress.IPv4Address(v4)))
                return v4, v6

    def _owner(self):
        if self.tags and self.rng.random() < 0.5:
            return None, tuple(self.rng.sample(self.tags, self.rng.randint(1, min(2, len(self.tags)))))
        users = sorted(self.state.users)
        return (self.rng.choice(users) if users else None), ()

    def check_symmetric(self, when: str):
        """Every viewer of a node is among the node's watchers (the fan-out visits only those)."""
        pm = self.pm
        for viewer, view in pm.views.views.items():
            for peer in view.peers:
                self.t.assertIn(viewer, pm.watchers(peer), f"{viewer} sees {peer} {when}")

    def step(self):
        rng, nodes = self.rng, self.state.nodes
        ops = ["add", "remove", "retag", "readdress", "routes", "online"] if nodes else ["add"]
        op = rng.choice(ops)
        if op == "add":
            node_id, self.next_id = self.next_id, self.next_id + 1
            user_id, tags = self._owner()
            v4, v6 = self._address()
            nodes[node_id] = _row(node_id, f"new{node_id}", user_id, tags, v4, v6)
            self.state.runtime[node_id] = SimpleNamespace(online=True)
        else:
            node_id = rng.choice(sorted(nodes))
            row = nodes[node_id]
            if op == "remove":
                del nodes[node_id]
                del self.state.runtime[node_id]
            elif op == "retag":
                row.user_id, row.tags = self._owner()
            elif op == "readdress":
                row.ipv4, row.ipv6 = self._address()
            elif op == "routes":
                routable = rng.sample(ROUTES, rng.randint(0, 3))
                row.hostinfo = {"RoutableIPs": routable}
                row.approved_routes = tuple(r for r in routable if rng.random() < 0.7)
            else:
                self.state.runtime[node_id].online = not self.state.runtime[node_id].online
        before = {k: NodeView(v.filter, dict(v.peers), v.ssh, v.caps, v.self_allowed, v.self_primary)
                  for k, v in self.pm.views.views.items()}
        changes = self.pm.update([node_id])
        full = rebuilt_views(self.pm)
        self.t.assertEqual(self.pm.views.views, full, f"views after {op} of node {node_id}")
        self.check_symmetric(f"after {op} of node {node_id}")
        want = ViewCache.diff(before, full)
        got = {k: (v.filter, v.ssh, v.self_changed, v.peers_changed, v.peers_removed)
               for k, v in changes.viewers.items()}
        self.t.assertEqual(got, {k: (v.filter, v.ssh, v.self_changed, v.peers_changed, v.peers_removed)
                                 for k, v in want.viewers.items()}, f"changes after {op} of node {node_id}")


class IncrementalViewTests(unittest.TestCase):
    """TailnetPolicy.update's incremental path agrees with the full rebuild."""

    def test_random_changes_on_corpus_policies(self):
        """Random change sequences on 60 corpus policies give the views and deltas of a full rebuild."""
        scenarios = []
        for scenario in load_scenarios(CORPUS):
            policy = scenario.get("policy")
            if not policy:
                continue
            try:
                PolicyEngine(policy if isinstance(policy, str) else json.dumps(policy))
            except PolicyError:
                continue
            scenarios.append(scenario)
        rng = random.Random(20261122)
        incremental = 0
        for i, scenario in enumerate(rng.sample(scenarios, 60)):
            run = _Run(self, scenario, seed=i)
            for _ in range(25):
                run.step()
            incremental += run.pm.views.incremental_updates
        self.assertGreater(incremental, 500)


def rebuilt_views(pm) -> dict:
    """Every node's view built from scratch under ``pm``'s compiled policy: what incremental updates must equal."""
    cp = pm.compiled()
    everyone = all_peer_views(cp)
    return {k: pm.views.build_view(cp, k, everyone.get(k, {})) for k in pm.inputs.nodes}


def corpus_runs(testcase, seed: Callable[[], int]) -> Iterator[tuple[dict, _Run]]:
    """``(scenario, run)`` for each corpus scenario whose policy compiles; ``seed()`` is read as each run starts."""
    for scenario in load_scenarios(CORPUS):
        if not scenario.get("policy"):
            continue
        try:
            run = _Run(testcase, scenario, seed=seed())
        except PolicyError:
            continue
        yield scenario, run


class FullRebuildTests(unittest.TestCase):
    """The full rebuild (start, reload, big changes) reduces each node's filter from the indexed rules."""

    def test_rebuild_equals_reference_on_corpus_policies(self):
        """After a full rebuild every view equals the one built by reducing every rule for the node."""
        checked = 0
        for scenario, run in corpus_runs(self, lambda: checked):
            pm = run.pm
            for _ in range(5):  # some routes, exit nodes, retags before the rebuild
                run.step()
            pm.rebuild_views()
            if pm.uniform:
                continue
            self.assertEqual(pm.views.views, rebuilt_views(pm), f"views of scenario {scenario.get('name')!r}")
            run.check_symmetric(f"after a rebuild of scenario {scenario.get('name')!r}")
            checked += 1
        self.assertGreater(checked, 100)

    def test_rebuild_reduces_only_rules_naming_the_node(self):
        """With 30 tag groups, a rebuild passes each node only its group's rule instead of all 30."""
        from headscale_tw.control import viewcache as policy_module
        from headscale_tw.policy import compile as compile_module

        groups = 30
        state, pm = _group_tailnet(groups)
        reduced: collections.Counter[int] = collections.Counter()  # node id -> rules reduced for it
        for module in (policy_module, compile_module):
            original = module.reduce_rules

            def counting(node, rules, node_set, _original=original):
                rules = list(rules)
                reduced[node.id] += len(rules)
                return _original(node, rules, node_set)

            self.patch(module, "reduce_rules", counting)

        def counting_one(node, rule, node_set, _original=policy_module.kept_destinations):
            reduced[node.id] += 1
            return _original(node, rule, node_set)

        self.patch(policy_module, "kept_destinations", counting_one)
        pm.rebuild_views()
        self.assertEqual(len(reduced), 3 * groups)
        self.assertEqual(set(reduced.values()), {1})
        self.assertEqual(len(pm.views.views[1].peers), 2)
        self.assertIn(b"100.64.0.32", pm.views.views[1].filter)  # node 31, in node 1's group

    def test_rebuild_finds_peers_without_testing_every_rule_on_every_node(self):
        """With 30 tag groups of 3, a rebuild tests each node against its group's rule only (90 tests, not 2,700)."""
        from headscale_tw.control import viewcache as policy_module
        from headscale_tw.control.viewindex import RuleIndex

        groups = 30
        state, pm = _group_tailnet(groups)
        tests, full_scans = [], []
        original_member = RuleIndex._member

        def member(index, match, internet, node_id):
            tests.append(node_id)
            return original_member(index, match, internet, node_id)

        self.patch(RuleIndex, "_member", member)
        self.patch(policy_module, "all_peer_views", lambda cp: full_scans.append(cp) or {})
        pm.rebuild_views()
        self.assertEqual((len(tests), full_scans), (3 * groups, []))
        self.assertEqual(sorted(pm.views.views[1].peers), [31, 61])


class JoinWorkTests(unittest.TestCase):
    """A join tests the joining node against the rules naming its address, not every rule."""

    def _member_tests_per_join(self, groups: int) -> tuple[int, int]:
        laptop = 3 * groups + 1  # alice's, reaching every tailnet address on port 22 (a wide rule)
        state, pm = _group_tailnet(groups, extra_rules=[{"action": "accept", "src": ["alice@"],
                                                         "dst": ["100.64.0.0/10:22"]}],
                                   extra_nodes=[_row(laptop, "laptop", 1, (), "100.89.0.1", "fd7a:115c:a1e0::fffe")])
        pm.rebuild_views()
        new = laptop + 1
        state.nodes[new] = _row(new, "new", None, ("tag:g1",), "100.90.0.1", "fd7a:115c:a1e0::ffff")
        state.runtime[new] = SimpleNamespace(online=True)
        before = pm.views.index.member_tests
        changes = pm.update([new])
        self.assertEqual(set(changes.viewers), {g * groups + 1 for g in range(3)} | {laptop})
        self.assertEqual(len(pm.views.views[new].peers), 4)
        return pm.views.index.member_tests - before

    def test_member_tests_do_not_grow_with_rules(self):
        """10 or 100 tag groups: the same number of rule-membership tests for one join."""
        self.assertEqual(self._member_tests_per_join(10), self._member_tests_per_join(100))


class IdPGroupChangeTests(unittest.TestCase):
    """A sign-in that changes a user's IdP groups updates the views incrementally."""

    def test_regroup_updates_only_concerned_views(self):
        """Moving one user between IdP groups rebuilds the views of the two groups' members, equal to a full rebuild."""
        groups, per_group = 10, 4
        text = json.dumps({"acls": [{"action": "accept", "src": [f"idpgroup:g{g}"], "dst": [f"idpgroup:g{g}:*"]}
                                    for g in range(groups)]})
        state = _State()
        for u in range(groups * per_group):
            state.users[u + 1] = SimpleNamespace(id=u + 1, name=f"u{u}", email=f"u{u}@example.com",
                                                 idp_groups=(f"g{u % groups}",))
            state.nodes[u + 1] = _row(u + 1, f"n{u}", u + 1, (), f"100.64.0.{u + 1}", f"fd7a:115c:a1e0::{u + 1:x}")
            state.runtime[u + 1] = SimpleNamespace(online=True)
        pm = TailnetPolicy(state)
        pm.adopt(PolicyEngine(text), text)
        pm.inputs.sync_all()
        pm.rebuild_views()
        self.assertEqual(sorted(pm.views.views[1].peers), [11, 21, 31])  # user u0 (node 1) is in g0
        incremental, built = pm.views.incremental_updates, pm.views.views_built
        user = state.users[1]
        state.users[1] = SimpleNamespace(id=1, name=user.name, email=user.email, idp_groups=("g3",))
        changes = pm.update()
        self.assertEqual(pm.views.incremental_updates - incremental, 1)
        # node 1 and the members of g0 (11, 21, 31) and g3 (4, 14, 24, 34): 8 views of 40
        self.assertEqual(pm.views.views_built - built, 8)
        self.assertEqual(set(changes.viewers), {1, 11, 21, 31, 4, 14, 24, 34})
        self.assertEqual(sorted(pm.views.views[1].peers), [4, 14, 24, 34])
        self.assertEqual(pm.views.views, rebuilt_views(pm))
