# -*- test-case-name: tests.control.test_variants -*-
"""
A router's entry is built once per class of viewers, not once per viewer (issue 10, item 1).

Before :class:`~headscale_tw.control.variants.PeerVariants`, a node announcing
N routes while V peers streamed cost V passes over its N routes in the policy
update (70-190 ms with 1,024 routes and 20 peers in-process).
"""

from twisted.trial import unittest

from headscale_tw.control.variants import PeerVariants
from tests.control._harness import Harness
from tests.control._workcount import ComparisonCounter, routes
from tests.control.test_routes_work import POLICY

N = 200


class PeerVariantWorkTests(unittest.TestCase):
    """Work of a router's announcement with 5 and with 50 streaming viewers of one kind."""

    def setUp(self):
        self.counter = ComparisonCounter(self)

    def _announce(self, viewers: int) -> tuple[int, int]:
        """(route lists built, ipaddress comparisons and hashes) for the announcement of N routes."""
        h = Harness(self, policy=POLICY)
        h.make_key("router", reusable=True, tags=("tag:router",))
        streams = []
        for i in range(viewers):
            node, _ = h.register(f"laptop{i}")
            streams.append(h.stream(node))
        router, _ = h.register("router", auth="router")
        h.stream(router)
        hostinfo = {"Hostname": "router", "OS": "linux", "RoutableIPs": routes(N)}
        before = h.policy.views.variants.computed
        work = self.counter.measure(lambda: h.lite(router, Hostinfo=hostinfo))
        for stream in streams:  # every viewer got the routes
            self.assertEqual(len(stream.applier.peers[router.id]["PrimaryRoutes"]), N)
        return h.policy.views.variants.computed - before, work

    def test_viewers_share_the_entry(self):
        """Ten times the viewers build the router's entry as often and do about the same route work."""
        few_lists, few_work = self._announce(5)
        many_lists, many_work = self._announce(50)
        self.assertEqual(many_lists, few_lists)
        self.assertLessEqual(few_lists, 2)
        self.assertLessEqual(many_work, few_work * 1.5, f"{few_work} operations for 5 viewers, {many_work} for 50")


class PeerVariantsTests(unittest.TestCase):
    """The cache itself: a new router object, or rules changed within its routes, start over."""

    def test_kept_per_router_object_and_matches(self):
        """An entry is reused for the same router and equal rules, rebuilt when a rule changes within its routes."""
        import ipaddress

        from headscale_tw.policy.compile import Match, PolicyEngine
        from headscale_tw.policy.ipset import IPSet
        from headscale_tw.policy.model import Node, Topology, User

        nets = tuple(ipaddress.ip_network(r) for r in routes(4))
        router = Node(id=1, hostname="r", tags=("tag:router",), ipv4=ipaddress.ip_address("100.64.0.1"),
                      advertised_routes=nets, approved_routes=nets, primary_routes=nets)
        a = Node(id=2, hostname="a", user_id=1, ipv4=ipaddress.ip_address("100.64.0.2"))
        b = Node(id=3, hostname="b", user_id=1, ipv4=ipaddress.ip_address("100.64.0.3"))
        cp = PolicyEngine(POLICY).compile(Topology(users=(User(id=1, name="alice", email="alice@example.com"),),
                                                   nodes=(router, a, b)))
        matches = cp.matches_for(a)
        variants = PeerVariants(lambda v: v)
        first = variants.variant(cp, a, router, matches, IPSet.from_addresses(a.addresses), False)
        self.assertEqual(first[1], tuple(str(n) for n in nets))
        self.assertIs(variants.variant(cp, b, router, matches, IPSet.from_addresses(b.addresses), False), first)
        self.assertEqual(variants.computed, 1)
        # a recompilation's new but equal rules: the router's masks and entries carry over
        self.assertIs(variants.variant(cp, a, router, list(matches), IPSet.from_addresses(a.addresses), False),
                      first)
        self.assertEqual(variants.computed, 1)
        # a rule whose destinations no longer take in the router's routes: rebuilt, and narrower
        narrowed = [Match(m.srcs, m.dsts - IPSet.from_networks(nets[1:])) for m in matches]
        second = variants.variant(cp, a, router, narrowed, IPSet.from_addresses(a.addresses), False)
        self.assertEqual((variants.computed, second[1]), (2, (str(nets[0]),)))
        variants.forget(router.id)
        variants.variant(cp, a, router, narrowed, IPSet.from_addresses(a.addresses), False)
        self.assertEqual(variants.computed, 3)
