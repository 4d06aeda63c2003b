# -*- test-case-name: tests.policy.test_compile -*-
"""Tests for :mod:`headscale_tw.policy.compile` and :mod:`headscale_tw.policy.ssh`."""

__all__ = ["PolicyEngineTests", "IPSetTests"]

import ipaddress

from twisted.trial import unittest

from headscale_tw.policy.compile import PolicyEngine
from headscale_tw.policy.ipset import TAILSCALE_ALL, IPSet
from headscale_tw.policy.model import Node, PolicyError, Topology, User

net = ipaddress.ip_network


def _node(i: int, name: str, user=None, tags=(), adv=(), appr=()) -> Node:
    return Node(
        id=i, hostname=name, user_id=user, tags=tuple(tags),
        ipv4=ipaddress.IPv4Address(f"100.64.0.{i}"),
        ipv6=ipaddress.IPv6Address(f"fd7a:115c:a1e0::{i}"),
        advertised_routes=tuple(net(r) for r in adv),
        approved_routes=tuple(net(r) for r in appr),
        primary_routes=tuple(net(r) for r in adv if r in appr and not r.endswith("/0")),
    )


USERS = (User(1, "alice", "alice@example.com"), User(2, "bob", "bob@example.com"))
LAPTOP = _node(1, "laptop", user=1)
SRV = _node(2, "srv1", tags=["tag:server"])
BOB = _node(3, "bobpc", user=2)
ALICE2 = _node(4, "alice2", user=1)
ROUTER = _node(5, "router", tags=["tag:router"], adv=["10.0.0.0/24"], appr=["10.0.0.0/24"])
TOPO = Topology(USERS, (LAPTOP, SRV, BOB, ALICE2, ROUTER))
OWNERS = '"tagOwners": {"tag:server": ["alice@"], "tag:router": ["alice@"]}'


class PolicyEngineTests(unittest.TestCase):
    """Per-node filters, peers, SSH policies and caps."""

    def test_worked_example(self) -> None:
        """The documented alice -> tag:server:22,80-81 example compiles exactly."""
        cp = PolicyEngine('{%s, "acls": [{"action": "accept", "src": ["alice@example.com"],'
                          ' "dst": ["tag:server:22,80-81"]}]}' % OWNERS).compile(TOPO)
        self.assertEqual(cp.filter_wire_for(SRV), [{
            "SrcIPs": ["100.64.0.1", "100.64.0.4", "fd7a:115c:a1e0::1", "fd7a:115c:a1e0::4"],
            "DstPorts": [
                {"IP": "100.64.0.2", "Ports": {"First": 22, "Last": 22}},
                {"IP": "100.64.0.2", "Ports": {"First": 80, "Last": 81}},
                {"IP": "fd7a:115c:a1e0::2", "Ports": {"First": 22, "Last": 22}},
                {"IP": "fd7a:115c:a1e0::2", "Ports": {"First": 80, "Last": 81}},
            ],
        }])
        self.assertEqual(cp.filter_for(LAPTOP), [])
        self.assertEqual([p.node.hostname for p in cp.peers_for(LAPTOP)], ["srv1"])
        self.assertEqual([p.node.hostname for p in cp.peers_for(SRV)], ["laptop", "alice2"])
        self.assertEqual(cp.peers_for(BOB), [])

    def test_no_policy_allows_all(self) -> None:
        """Without a policy every node may reach and see every node."""
        cp = PolicyEngine(None).compile(TOPO)
        self.assertEqual(cp.filter_wire_for(BOB), [
            {"SrcIPs": ["*"], "DstPorts": [{"IP": "*", "Ports": {"First": 0, "Last": 65535}}]}])
        self.assertEqual(len(cp.peers_for(BOB)), 4)

    def test_empty_acls_denies(self) -> None:
        """An explicit empty acls list gives every node an empty filter."""
        cp = PolicyEngine('{"acls": []}').compile(TOPO)
        self.assertEqual(cp.filter_for(LAPTOP), [])
        self.assertEqual(cp.peers_for(LAPTOP), [])

    def test_wildcard_source_includes_subnets(self) -> None:
        """A * source is the Tailscale range plus approved subnet routes."""
        cp = PolicyEngine('{"acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}]}').compile(TOPO)
        rule = cp.filter_wire_for(LAPTOP)[0]
        self.assertEqual(rule["SrcIPs"], TAILSCALE_ALL.strings() + ["10.0.0.0/24"])
        self.assertIn("100.64.0.0-100.115.91.255", rule["SrcIPs"])
        router = [p for p in cp.peers_for(LAPTOP) if p.node.hostname == "router"][0]
        self.assertIn("10.0.0.0/24", router.allowed_ips)
        self.assertEqual(router.primary_routes, ("10.0.0.0/24",))

    def test_autogroup_self(self) -> None:
        """autogroup:self lets a user's devices reach each other only."""
        cp = PolicyEngine('{"acls": [{"action": "accept", "src": ["autogroup:member"],'
                          ' "dst": ["autogroup:self:*"]}]}').compile(TOPO)
        rules = cp.filter_wire_for(LAPTOP)
        self.assertEqual(rules[0]["SrcIPs"], ["100.64.0.1", "100.64.0.4", "fd7a:115c:a1e0::1", "fd7a:115c:a1e0::4"])
        self.assertEqual([p.node.hostname for p in cp.peers_for(LAPTOP)], ["alice2"])
        self.assertEqual(cp.filter_for(SRV), [])

    def test_ssh_policy(self) -> None:
        """SSH rules reach only destination nodes, with nodeIP principals."""
        cp = PolicyEngine('{%s, "ssh": [{"action": "accept", "src": ["alice@example.com"],'
                          ' "dst": ["tag:server"], "users": ["root", "ubuntu"]}]}' % OWNERS).compile(TOPO)
        pol = cp.ssh_policy_for(SRV)
        self.assertEqual(len(pol["rules"]), 1)
        self.assertEqual(pol["rules"][0]["sshUsers"], {"root": "root", "ubuntu": "ubuntu"})
        self.assertEqual(pol["rules"][0]["principals"][0], {"nodeIP": "100.64.0.1"})
        self.assertTrue(pol["rules"][0]["action"]["accept"])
        self.assertEqual(cp.ssh_policy_for(LAPTOP), {"rules": []})

    def test_ssh_check_uses_server_url(self) -> None:
        """check rules delegate to the control server URL."""
        engine = PolicyEngine('{"ssh": [{"action": "check", "src": ["autogroup:member"],'
                              ' "dst": ["autogroup:self"], "users": ["autogroup:nonroot"]}]}',
                              server_url="https://hs.example/")
        action = engine.ssh_policy_for(LAPTOP, TOPO)["rules"][0]["action"]
        self.assertTrue(action["holdAndDelegate"].startswith("https://hs.example/machine/ssh/action/"))

    def test_cap_map(self) -> None:
        """nodeAttrs give capabilities (and their companions) to their targets only."""
        engine = PolicyEngine('{%s, "nodeAttrs": [{"target": ["tag:server"], "attr": ["funnel"]}]}' % OWNERS)
        self.assertEqual(engine.cap_map_for(SRV, TOPO), {
            "funnel": None,
            "https://tailscale.com/cap/funnel-ports?ports=443,8443,10000": None,
            "https://tailscale.com/cap/warn-funnel-no-https": None,
        })
        self.assertEqual(engine.cap_map_for(LAPTOP, TOPO), {})

    def test_auto_approval(self) -> None:
        """autoApprovers approve sub-prefixes of listed routes (a /0 entry covers every subnet) but exit routes need exitNode."""
        node = _node(6, "r2", tags=["tag:router"], adv=["10.1.2.0/24", "0.0.0.0/0", "192.168.0.0/24"])
        topo = Topology(USERS, TOPO.nodes + (node,))
        cp = PolicyEngine('{%s, "autoApprovers": {"routes": {"10.0.0.0/8": ["tag:router"],'
                          ' "0.0.0.0/0": ["tag:router"]}}}' % OWNERS).compile(topo)
        self.assertEqual(cp.auto_approved_routes(node), (net("10.1.2.0/24"), net("192.168.0.0/24")))

    def test_failing_policy_test_rejects(self) -> None:
        """A policy whose tests fail is rejected by check()."""
        engine = PolicyEngine('{%s, "acls": [{"action": "accept", "src": ["alice@example.com"],'
                              ' "dst": ["tag:server:22"]}], "tests": [{"src": "bob@example.com",'
                              ' "accept": ["tag:server:22"]}]}' % OWNERS)
        self.assertRaises(PolicyError, engine.check, TOPO)
        PolicyEngine('{%s, "acls": [{"action": "accept", "src": ["alice@example.com"],'
                     ' "dst": ["tag:server:22"]}], "tests": [{"src": "alice@example.com",'
                     ' "accept": ["tag:server:22"], "deny": ["tag:server:80"]}]}' % OWNERS).check(TOPO)


class IPSetTests(unittest.TestCase):
    """Address sets render like Tailscale's wire strings."""

    def test_strings(self) -> None:
        """Singles, exact prefixes and ranges render distinctly."""
        s = IPSet.from_networks([net("10.0.0.0/8"), net("100.64.0.1/32")]) | IPSet.from_strings(["1.0.0.1-1.0.0.5"])
        self.assertEqual(s.strings(), ["1.0.0.1-1.0.0.5", "10.0.0.0/8", "100.64.0.1"])

    def test_subtract_and_contains(self) -> None:
        """Subtraction splits ranges and membership follows."""
        s = IPSet.from_networks([net("10.0.0.0/8")]) - IPSet.from_networks([net("10.1.0.0/16")])
        self.assertTrue(s.contains(ipaddress.ip_address("10.0.0.1")))
        self.assertFalse(s.contains(ipaddress.ip_address("10.1.0.1")))
        self.assertEqual(len(s.networks()), 8)
