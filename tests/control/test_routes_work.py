# -*- test-case-name: tests.control.test_routes_work -*-
"""
Work on routes grows linearly with their number (issue 10, item 1).

Each test runs one operation on N and on 10N routes and counts comparisons
and hashes of ``ipaddress`` objects (:mod:`tests.control._workcount`): a list
scan per route, as deduplicating with ``x not in list`` did, makes the count
grow about a hundred times; linear work about ten.
"""

import ipaddress
import json
from types import SimpleNamespace

from twisted.trial import unittest

from headscale_tw.control.routes import (
    RouteElection,
    announced_routes,
    approved_routes,
    clear_parse_caches,
    normalize_approval,
    served_routes,
)
from headscale_tw.policy.compile import CompiledPolicy
from headscale_tw.policy.model import Node as PNode
from tests.control._harness import Harness
from tests.control._workcount import ComparisonCounter, assert_linear, routes

N = 60

POLICY = json.dumps({
    "tagOwners": {"tag:router": ["alice@"]},
    "acls": [
        {"action": "accept", "src": ["autogroup:member", "tag:router"], "dst": ["10.33.0.0/16:*", "tag:router:*"]},
    ],
    "autoApprovers": {"routes": {"10.33.0.0/16": ["tag:router"]}},
})


def _node(announced=(), approved=()):
    hostinfo = {"Hostname": "r", "RoutableIPs": list(announced)} if announced else {}
    return SimpleNamespace(hostinfo=hostinfo, approved_routes=tuple(approved))


class RouteFunctionWorkTests(unittest.TestCase):
    """The pure route functions of ``control/routes.py`` do linear work."""

    def setUp(self):
        self.counter = ComparisonCounter(self)

    def _both(self, operation, what):
        small = self.counter.measure(lambda: operation(N))
        large = self.counter.measure(lambda: operation(10 * N))
        assert_linear(self, small, large, what)

    def test_announced_dedupe(self):
        """Deduplicating announced prefixes (each sent twice) is linear."""
        self._both(lambda n: announced_routes(_node(routes(n) * 2)), "announced_routes")

    def test_served(self):
        """Announced ∩ approved is linear."""
        self._both(lambda n: served_routes(_node(routes(n), routes(n))), "served_routes")

    def test_approval(self):
        """Parsing, deduplicating and sorting an approval is at most N·log N."""
        def approve(n):
            nets = approved_routes(_node((), routes(n)))
            normalize_approval(nets)

        self._both(approve, "approval")

    def test_primary_lookup(self):
        """Asking every node for its primary routes costs in total what the election holds, not nodes × prefixes."""
        counter = self.counter

        class NodeId(int):
            """A node id whose comparisons are counted (a scan of every prefix's primary compares ids)."""

            __hash__ = int.__hash__

            def __eq__(self, other):
                counter.count += 1
                return isinstance(other, int) and int(self) == int(other)

        def elect_and_ask(n):
            election = RouteElection()
            candidates = {NodeId(i): [ipaddress.ip_network(r)] for i, r in enumerate(routes(n))}
            election.elect(candidates)
            for node_id in candidates:
                election.primary_routes(node_id)

        self._both(elect_and_ask, "election and primary lookup")


class PolicyRouteWorkTests(unittest.TestCase):
    """The policy engine's route checks do linear work per viewer and peer."""

    def setUp(self):
        self.counter = ComparisonCounter(self)

    def _routers(self, n):
        nets = tuple(ipaddress.ip_network(r) for r in routes(n))
        router = PNode(id=1, hostname="a", tags=("tag:router",), ipv4=ipaddress.ip_address("100.64.0.1"),
                       advertised_routes=nets, approved_routes=nets, primary_routes=nets)
        # an HA secondary serving the same prefixes: it is told who is primary for each
        second = PNode(id=2, hostname="b", tags=("tag:router",), ipv4=ipaddress.ip_address("100.64.0.2"),
                       advertised_routes=nets, approved_routes=nets)
        return router, second

    def test_subnet_routes(self):
        """A node's served subnet routes are found with a set, not a scan of the approved tuple."""
        self._both(lambda n: self._routers(n)[0].subnet_routes, "Node.subnet_routes")

    def test_routes_for_peer(self):
        """What an HA secondary gets in the primary's AllowedIPs is computed in linear work."""
        from headscale_tw.policy.compile import PolicyEngine
        from headscale_tw.policy.model import Topology, User

        engine = PolicyEngine(POLICY)

        def view(n):
            router, second = self._routers(n)
            topology = Topology(users=(User(id=1, name="alice", email="alice@example.com"),),
                                nodes=(router, second))
            compiled: CompiledPolicy = engine.compile(topology)
            peers = compiled.peers_for(second)
            self.assertEqual(len(peers[0].primary_routes), n)

        self._both(view, "routes_for_peer")

    def _both(self, operation, what):
        small = self.counter.measure(lambda: operation(N))
        large = self.counter.measure(lambda: operation(10 * N))
        assert_linear(self, small, large, what)


class ControlPlaneRouteWorkTests(unittest.TestCase):
    """The paths of the issue: a node announcing routes, an admin approving them, a restart."""

    def setUp(self):
        self.counter = ComparisonCounter(self)

    def _announce(self, n):
        """A tag:router node announces n routes in a lite map request; a member streams its map."""
        h = Harness(self, policy=POLICY)
        h.make_key("router", reusable=True, tags=("tag:router",))
        client, _ = h.register("laptop")
        stream = h.stream(client)
        router, _ = h.register("router", auth="router")
        second, _ = h.register("second", auth="router")
        h.stream(router), h.stream(second)  # online: candidates for the election
        hostinfo = {"Hostname": "router", "OS": "linux", "RoutableIPs": routes(n)}
        work = self.counter.measure(lambda: (h.lite(router, Hostinfo=hostinfo), h.lite(second, Hostinfo=hostinfo)))
        self.assertEqual(len(h.state.get(router.id).approved_routes), n)
        self.assertEqual(len(stream.applier.peers[router.id]["PrimaryRoutes"]), n)
        return h, router, work

    def test_announce(self):
        """Announcing N routes from two HA routers (auto-approved, elected, sent to peers) is linear."""
        small = self._announce(N)[2]
        large = self._announce(10 * N)[2]
        assert_linear(self, small, large, "announce")

    def _approve(self, n):
        h, router, _ = self._announce(n)
        extra = routes(n, base="10.44")
        return self.counter.measure(
            lambda: h.run(h.admin.approve_routes(router.id, extra))
        )

    def test_approve(self):
        """Replacing N approved routes with N others through NodeAdmin (the admin API's path) is linear."""
        assert_linear(self, self._approve(N), self._approve(10 * N), "approve_routes")

    def _restart(self, n):
        h, router, _ = self._announce(n)
        work = self.counter.measure(lambda: Harness(self, db=h.db, policy=POLICY))
        return work

    def test_restart(self):
        """Loading the state and policy with a node's N stored routes is linear."""
        assert_linear(self, self._restart(N), self._restart(10 * N), "restart")

    def _routes_listing(self, n):
        h, router, _ = self._announce(n)
        clear_parse_caches()  # count the listing's own work, not answers cached by the announcement
        return self.counter.measure(lambda: h.admin.routes(router.id))

    def test_routes_listing(self):
        """Listing a node's announced, approved, served and primary routes is linear."""
        assert_linear(self, self._routes_listing(N), self._routes_listing(10 * N), "routes listing")


class RecompileWorkTests(unittest.TestCase):
    """A recompilation redoes none of a router's per-route work that it cannot change (issue 10)."""

    def setUp(self):
        from headscale_tw.policy import offered as offered_module

        self.tested = 0
        original = offered_module.route_masks

        def counting(nets, matches):
            self.tested += len(nets)
            return original(nets, matches)

        self.patch(offered_module, "route_masks", counting)

    def _tailnet(self, n):
        """A streaming member, and a router (primary) announcing ``n`` routes with its HA secondary online."""
        h = Harness(self, policy=POLICY)
        h.make_key("router", reusable=True, tags=("tag:router",))
        laptop, _ = h.register("laptop")
        stream = h.stream(laptop)
        router, _ = h.register("router", auth="router")
        second, _ = h.register("second", auth="router")
        h.stream(router), h.stream(second)
        hostinfo = {"Hostname": "router", "OS": "linux", "RoutableIPs": routes(n)}
        before = self.tested
        h.lite(router, Hostinfo=hostinfo)
        self.assertEqual(self.tested - before, n)  # the announcement: each route tested once
        self.assertEqual(len(stream.applier.peers[router.id]["PrimaryRoutes"]), n)
        return h, stream, router, second, hostinfo

    def test_join_elsewhere(self):
        """A member joining recompiles the policy but tests none of the router's 1,024 routes and builds no entry."""
        h, stream, router, _, _ = self._tailnet(1024)
        recompiles, tested, computed = h.policy.compilation.recompiles, self.tested, h.policy.views.variants.computed
        newcomer, _ = h.register("laptop2")
        self.assertGreater(h.policy.compilation.recompiles, recompiles)
        self.assertEqual((self.tested - tested, h.policy.views.variants.computed - computed), (0, 0))
        new_stream = h.stream(newcomer)
        self.assertEqual(len(new_stream.applier.peers[router.id]["PrimaryRoutes"]), 1024)

    def test_secondary_announces(self):
        """The HA secondary announcing the same 1,024 routes tests none of the primary's routes again."""
        h, stream, router, second, hostinfo = self._tailnet(1024)
        tested = self.tested
        h.lite(h.state.get(second.id), Hostinfo=dict(hostinfo, Hostname="second"))
        self.assertEqual(len(h.state.get(second.id).approved_routes), 1024)
        self.assertEqual(self.tested - tested, 0)
        self.assertEqual(len(stream.applier.peers[router.id]["PrimaryRoutes"]), 1024)
        self.assertNotIn("PrimaryRoutes", stream.applier.peers[second.id])
