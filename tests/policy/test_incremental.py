"""
The incremental compiler gives the same results as a fresh compilation.

Every scenario of the vendored conformance corpus (real policies and
topologies captured from Tailscale) is replayed through an
:class:`IncrementalCompiler`: it starts with a few nodes, then nodes are
added one at a time, changed (retagged, re-addressed) and removed, and after
every step the compiled rules, per-node filters, SSH policies, capabilities
and peers are compared with ``engine.compile(topology)`` of the same nodes.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import os

from twisted.trial import unittest

from headscale_tw.policy.compile import PolicyEngine
from headscale_tw.policy.conformance import compiled_scenarios
from headscale_tw.policy.incremental import DependencyMemo, IncrementalCompiler, TopologyIndex
from headscale_tw.policy.model import Node, Topology, User

CORPUS = os.path.join(os.path.dirname(__file__), "..", "data", "policy-conformance.json.xz")


def _snapshot(cp) -> dict:
    """Everything the control plane reads from a compilation, in comparable form."""
    out = {}
    for n in cp.topology.nodes:
        out[n.id] = (
            [r.to_wire() for r in cp.unreduced_rules(n)],
            cp.filter_wire_for(n),
            json.dumps(cp.ssh_policy_for(n), sort_keys=True),
            sorted(cp.cap_map_for(n)),
            [(p.node.id, p.allowed_ips, p.primary_routes) for p in cp.peers_for(n)],
            cp.self_allowed_ips(n),
        )
    return out


def _scenarios():
    for scenario, engine, topology in compiled_scenarios(CORPUS):
        if scenario.get("api_response_code") == 200:
            yield scenario["id"], engine, topology


class IncrementalEqualsFreshTests(unittest.TestCase):
    """Replaying every corpus topology node by node matches fresh compilations."""

    def check(self, sid, compiler, engine, nodes, users) -> None:
        fresh = engine.compile(Topology(users, tuple(sorted(nodes.values(), key=lambda n: n.id))))
        got = compiler.compile()
        self.assertEqual([n.id for n in got.topology.nodes], sorted(nodes), sid)
        self.assertEqual(_snapshot(got), _snapshot(fresh), sid)

    def test_corpus_replayed_node_by_node(self) -> None:
        """Add each node in turn (highest id first), retag/readdress one, remove one: equal each time."""
        replayed = 0
        reused = 0
        for sid, engine, topology in _scenarios():
            users = topology.users
            ordered = list(topology.nodes)
            start, rest = ordered[:1], list(reversed(ordered[1:]))  # ids arrive out of order too
            compiler = IncrementalCompiler(engine, users, start)
            nodes = {n.id: n for n in start}
            self.check(sid, compiler, engine, nodes, users)
            for n in rest:
                compiler.put(n)
                nodes[n.id] = n
                self.check(sid, compiler, engine, nodes, users)
            victim = ordered[-1]
            tags = () if victim.tags else ("tag:incremental-test",)
            user_id = None if tags else (users[0].id if users else None)
            changed = dataclasses.replace(victim, tags=tags, user_id=user_id,
                                          ipv4=ipaddress.IPv4Address("100.100.100.100"))
            compiler.put(changed)
            nodes[changed.id] = changed
            self.check(sid, compiler, engine, nodes, users)
            compiler.remove(ordered[0].id)
            del nodes[ordered[0].id]
            self.check(sid, compiler, engine, nodes, users)
            replayed += 1
            reused += compiler.memo.hits
        self.assertGreater(replayed, 500)
        self.assertGreater(reused, 0)

    def test_users_change_resolves_again(self) -> None:
        """Renaming a user (so ``alice@`` names nobody) changes what its ACL compiles to."""
        engine = PolicyEngine(json.dumps({"acls": [{"action": "accept", "src": ["alice@"], "dst": ["*:22"]}]}))
        node = Node(id=1, hostname="a", user_id=1, ipv4=ipaddress.IPv4Address("100.64.0.1"))
        compiler = IncrementalCompiler(engine, (User(1, "alice"),), (node,))
        self.assertEqual([r.src_ips for r in compiler.compile().unreduced_rules(node)], [("100.64.0.1",)])
        compiler.set_users((User(1, "bob"),))
        self.assertEqual(compiler.compile().unreduced_rules(node), [])


class DependencyWorkTests(unittest.TestCase):
    """A join recompiles only the grants that can select the new node."""

    def test_join_recompiles_one_grant(self) -> None:
        """With 50 tag groups, a node joining one tag misses the memo for that tag and its grant only."""
        groups = 50
        engine = PolicyEngine(json.dumps({
            "tagOwners": {f"tag:g{g}": ["alice@"] for g in range(groups)},
            "acls": [{"action": "accept", "src": [f"tag:g{g}"], "dst": [f"tag:g{g}:*"]} for g in range(groups)],
        }))
        nodes = [Node(id=i, hostname=f"n{i}", tags=(f"tag:g{i % groups}",),
                      ipv4=ipaddress.IPv4Address(f"100.64.{i // 200}.{i % 200 + 1}")) for i in range(200)]
        compiler = IncrementalCompiler(engine, (User(1, "alice"),), nodes)
        compiler.compile()
        misses, grants = compiler.memo.misses, compiler.grants_compiled
        compiler.put(Node(id=500, hostname="new", tags=("tag:g7",), ipv4=ipaddress.IPv4Address("100.65.0.1")))
        compiler.compile()
        # the alias tag:g7 (shared by src and dst) and the one grant naming it; the other 49 not even visited
        self.assertEqual(compiler.memo.misses - misses, 2)
        self.assertEqual(compiler.grants_compiled - grants, 1)


class IdPGroupTests(unittest.TestCase):
    """A change of users' IdP groups re-resolves only what names the groups it touched."""

    GROUPS = 20

    def setUp(self) -> None:
        groups = self.GROUPS
        self.engine = PolicyEngine(json.dumps({
            "groups": {"group:admins": ["idpgroup:g0", "carol@"]},
            "tagOwners": {"tag:srv": ["idpgroup:g1"]},
            "acls": [{"action": "accept", "src": [f"idpgroup:g{g}"], "dst": [f"idpgroup:g{g}:*", "tag:srv:22"]}
                     for g in range(groups)]
            + [{"action": "accept", "src": ["group:admins"], "dst": ["*:*"]},
               {"action": "accept", "src": ["idpgroup:g2"], "dst": ["autogroup:self:*"]}],
            "ssh": [{"action": "accept", "src": ["idpgroup:g3"], "dst": ["autogroup:self"], "users": ["root"]}],
            "nodeAttrs": [{"target": ["idpgroup:g4"], "attr": ["funnel"]}],
        }))
        self.users = [User(u, f"u{u}", f"u{u}@example.com", frozenset({f"g{u % groups}"})) for u in range(1, 31)]
        self.nodes = [Node(id=i, hostname=f"n{i}", user_id=1 + i % 30,
                           ipv4=ipaddress.IPv4Address(f"100.64.0.{i + 1}")) for i in range(45)]
        self.nodes.append(Node(id=45, hostname="srv", tags=("tag:srv",), ipv4=ipaddress.IPv4Address("100.65.0.1")))

    def regroup(self, users: list[User], user_id: int, groups: set[str]) -> list[User]:
        """``users`` with user ``user_id`` in ``groups`` instead."""
        return [dataclasses.replace(u, idp_groups=frozenset(groups)) if u.id == user_id else u for u in users]

    def test_equals_fresh_compilation(self) -> None:
        """After each of a series of group changes, the incremental compilation equals a fresh one."""
        compiler = IncrementalCompiler(self.engine, self.users, self.nodes)
        compiler.compile()
        users = self.users
        changes = [(7, {"g0"}), (7, set()), (8, {"g1", "g2", "g3", "g4"}), (9, {"g3"}), (8, {"g9"}),
                   (10, {"g0", "g4"}), (11, {"no-rule-names-this"})]
        for user_id, groups in changes:
            users = self.regroup(users, user_id, groups)
            compiler.set_users(users)
            fresh = self.engine.compile(Topology(tuple(users), tuple(self.nodes)))
            self.assertEqual(_snapshot(compiler.compile()), _snapshot(fresh), (user_id, groups))

    def test_work_follows_the_changed_groups(self) -> None:
        """A user joining one group recompiles only the grants naming it; a rename still starts over."""
        compiler = IncrementalCompiler(self.engine, self.users, self.nodes)
        compiler.compile()
        grants, misses = compiler.grants_compiled, compiler.memo.misses
        users = self.regroup(self.users, 17, {"g17", "g13"})  # user 17 was in g17 only
        compiler.set_users(users)
        compiler.compile()
        naming = [g for g in self.engine.grant_list() if any(a.name == "idpgroup:g13" for a in g.src + g.dst)]
        self.assertEqual(len(naming), 2)  # the ACL's two port sets are two grants
        self.assertEqual(compiler.grants_compiled - grants, len(naming))
        self.assertEqual(compiler.memo.misses - misses, 1 + len(naming))  # the alias idpgroup:g13, its grants
        grants = compiler.grants_compiled
        compiler.set_users(users)  # the same users again: nothing to do
        compiler.compile()
        self.assertEqual(compiler.grants_compiled, grants)
        renamed = [dataclasses.replace(u, name="renamed") if u.id == 17 else u for u in users]
        compiler.set_users(renamed)
        compiler.compile()
        self.assertEqual(compiler.grants_compiled - grants, len(self.engine.grant_list()))


class TopologyIndexTests(unittest.TestCase):
    """The index groups nodes by selection and names the keys a change touches."""

    def test_put_names_old_and_new_keys(self) -> None:
        """Retagging a node reports both the old and the new tag, and the groups follow."""
        index = TopologyIndex()
        a = Node(id=1, hostname="a", user_id=7, ipv4=ipaddress.IPv4Address("100.64.0.1"))
        self.assertEqual(index.put(a), {("member",), ("user", 7)})
        b = dataclasses.replace(a, tags=("tag:x",), user_id=None)
        self.assertEqual(index.put(b), {("member",), ("user", 7), ("tagged",), ("tag", "tag:x")})
        self.assertEqual(index.by_user, {})
        self.assertEqual(list(index.by_tag["tag:x"]), [1])
        self.assertEqual(index.put(b), set())
        self.assertEqual(index.remove(1), {("tagged",), ("tag", "tag:x")})
        self.assertEqual((index.nodes, index.by_tag, index.tagged), ({}, {}, {}))

    def test_memo_follows_versions(self) -> None:
        """A memoised value is recomputed only after one of its keys changed."""
        memo = DependencyMemo()
        calls = []

        def compute():
            calls.append(1)
            return [("tag", "a")], len(calls)

        self.assertEqual(memo.get("x", compute), 1)
        self.assertEqual(memo.get("x", compute), 1)
        memo.changed([("tag", "b")])
        self.assertEqual(memo.get("x", compute), 1)
        memo.changed([("tag", "a")])
        self.assertEqual(memo.get("x", compute), 2)
