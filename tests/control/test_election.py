# -*- test-case-name: tests.control.test_election -*-
"""
The HA route election does work in what changed (issue 10, item 1).

Before it was incremental, every policy update re-elected every prefix of
every router: a router announcing 1,024 routes made each later change of any
node cost 1,024 prefix look-ups.
"""

import ipaddress

from twisted.trial import unittest

from headscale_tw.control.election import RouteElection
from tests.control._harness import Harness
from tests.control._workcount import routes
from tests.control.test_routes_work import POLICY

N = 64


def _nets(count: int, base: str) -> tuple:
    return tuple(ipaddress.ip_network(r) for r in routes(count, base=base))


class RouteElectionWorkTests(unittest.TestCase):
    """Prefixes visited per election grow with the change, not with the routers."""

    def _one_change(self, routers: int) -> int:
        election = RouteElection()
        candidates = {i: _nets(N, f"10.{i}") for i in range(1, routers + 1)}
        election.elect(candidates)
        before = election.visited
        election.elect(candidates)  # nothing changed
        self.assertEqual(election.visited, before)
        candidates = dict(candidates)
        candidates[1] = candidates[1][: N // 2]  # one router stops serving half its prefixes
        self.assertEqual(election.elect(candidates), {1})
        self.assertEqual(len(election.primary_routes(1)), N // 2)
        return election.visited - before

    def test_one_router_changes(self):
        """A change of one router visits its changed prefixes only, with 2 or 20 other routers."""
        self.assertEqual(self._one_change(2), N // 2)
        self.assertEqual(self._one_change(20), N // 2)

    def test_failover_in_one_call(self):
        """Candidates leaving and arriving in one call elect once per prefix, with no transient primary."""
        net = ipaddress.ip_network("10.9.0.0/24")
        election = RouteElection()
        self.assertEqual(election.elect({1: (net,), 2: (net,)}), {1})
        self.assertEqual(election.elect({2: (net,), 3: (net,)}), {1, 2})
        self.assertEqual(election.elect({}), {2})
        self.assertEqual((election.primaries, election.by_node), ({}, {}))

    def test_primary_routes_sorted_and_kept(self):
        """A node's primary prefixes are sorted once and kept until they change."""
        election = RouteElection()
        nets = _nets(8, "10.7")
        election.elect({5: tuple(reversed(nets))})
        first = election.primary_routes(5)
        self.assertEqual(first, nets)
        self.assertIs(election.primary_routes(5), first)
        election.elect({5: nets[:4]})
        self.assertEqual(election.primary_routes(5), nets[:4])


class RankedElectionTests(unittest.TestCase):
    """With a rank (several instances), the primary is a function of the candidates and their ranks only."""

    def test_same_primary_whatever_the_history(self):
        """Two elections that saw routers come online in different orders end with the same primary."""
        net = ipaddress.ip_network("10.9.0.0/24")
        since = {1: 20, 2: 10, 3: 30}  # router 2 came online first
        first, second = RouteElection(rank=lambda n: (since[n], n)), RouteElection(rank=lambda n: (since[n], n))
        first.elect({1: (net,)})
        first.elect({1: (net,), 2: (net,), 3: (net,)})
        second.elect({3: (net,), 2: (net,), 1: (net,)})
        self.assertEqual(first.primaries, {net: 2})
        self.assertEqual(second.primaries, {net: 2})
        sticky = RouteElection()
        sticky.elect({1: (net,)})
        sticky.elect({1: (net,), 2: (net,)})
        self.assertEqual(sticky.primaries, {net: 1})  # without a rank the first seen stays

    def test_later_router_does_not_take_over(self):
        """A router that comes online after the primary ranks after it; the primary leaving fails over."""
        net = ipaddress.ip_network("10.9.0.0/24")
        since = {1: 50, 2: 10}
        election = RouteElection(rank=lambda n: (since[n], n))
        election.elect({2: (net,)})
        self.assertEqual(election.elect({1: (net,), 2: (net,)}), set())
        self.assertEqual(election.elect({1: (net,)}), {1, 2})
        self.assertEqual(election.primaries, {net: 1})

    def test_reconsider_after_a_rank_change(self):
        """A rank that changes without a change of candidacy is taken in after ``reconsider``."""
        net = ipaddress.ip_network("10.9.0.0/24")
        since = {1: 20, 2: 30}
        election = RouteElection(rank=lambda n: (since[n], n))
        candidates = {1: (net,), 2: (net,)}
        election.elect(candidates)
        since[2] = 5  # another instance's older row of router 2 became known
        self.assertEqual(election.elect(candidates), set())  # not looked at yet
        election.reconsider(2)
        self.assertEqual(election.elect(candidates), {1, 2})
        self.assertEqual(election.primaries, {net: 2})


class PolicyElectionWorkTests(unittest.TestCase):
    """Through the control plane: a router's many routes cost nothing in other nodes' changes."""

    def test_other_changes_skip_the_election(self):
        """Once a router serves N routes, a name change of another node visits no prefix."""
        h = Harness(self, policy=POLICY)
        h.make_key("router", reusable=True, tags=("tag:router",))
        laptop, _ = h.register("laptop")
        h.stream(laptop)
        router, _ = h.register("router", auth="router")
        h.stream(router)
        h.lite(router, Hostinfo={"Hostname": "router", "OS": "linux", "RoutableIPs": routes(N)})
        election = h.policy.inputs.election
        self.assertEqual(len(election.primary_routes(router.id)), N)
        before = election.visited
        h.lite(laptop, Hostinfo={"Hostname": "laptop-renamed", "OS": "linux"})
        self.assertEqual(h.state.get(laptop.id).hostname, "laptop-renamed")
        self.assertEqual(election.visited, before)
