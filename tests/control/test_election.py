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
