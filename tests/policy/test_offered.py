# -*- test-case-name: tests.policy.test_offered -*-
"""
A router's route masks carried over recompilations: always equal to masks computed afresh.
"""

import ipaddress
import random

from twisted.trial import unittest

from headscale_tw.policy.compile import Match
from headscale_tw.policy.ipset import IPSet, ranges_overlap, ranges_xor
from headscale_tw.policy.model import Node
from headscale_tw.policy.offered import OfferedRoutes, route_masks


def _addresses(ranges):
    return {(f, a) for f, lo, hi in ranges for a in range(lo, hi + 1)}


def _random_ranges(rng, n):
    return IPSet((rng.choice((4, 6)), lo, lo + rng.randrange(8)) for lo in (rng.randrange(64) for _ in range(n)))


class RangeAlgebraTests(unittest.TestCase):
    """ranges_xor and ranges_overlap agree with sets of addresses."""

    def test_xor_and_overlap_against_sets(self):
        """500 random pairs of small range lists: the xor covers exactly the addresses in one of them."""
        rng = random.Random(14)
        for _ in range(500):
            a, b = _random_ranges(rng, rng.randrange(5)), _random_ranges(rng, rng.randrange(5))
            xor = ranges_xor(a.ranges(), b.ranges())
            self.assertEqual(_addresses(xor), _addresses(a.ranges()) ^ _addresses(b.ranges()))
            self.assertEqual(tuple(xor), IPSet(xor).ranges())  # sorted, disjoint, merged
            self.assertEqual(ranges_overlap(a.ranges(), b.ranges()),
                             bool(_addresses(a.ranges()) & _addresses(b.ranges())))


def _router(rng, n):
    nets = tuple(sorted({ipaddress.ip_network(f"10.{rng.randrange(4)}.{rng.randrange(256)}.0/{rng.choice((16, 24))}",
                                              strict=False) for _ in range(n)}, key=str))
    return Node(id=1, hostname="r", tags=("tag:r",), ipv4=ipaddress.ip_address("100.64.0.1"),
                advertised_routes=nets, approved_routes=nets, primary_routes=nets)


def _rule(rng):
    def side():
        nets = [f"10.{rng.randrange(4)}.{rng.randrange(256)}.0/24" if rng.random() < 0.5 else
                f"100.64.0.{rng.randrange(1, 250)}/32" for _ in range(rng.randrange(1, 4))]
        return IPSet.from_networks(ipaddress.ip_network(t) for t in nets)
    return Match(side(), side())


class OfferedRoutesTests(unittest.TestCase):
    """OfferedRoutes keeps a router's masks while they hold and recomputes them when a rule touches its routes."""

    def test_carried_masks_equal_fresh_ones(self):
        """300 random rule changes: the kept or recomputed masks equal route_masks on the new rules."""
        rng = random.Random(15)
        for _ in range(30):
            router = _router(rng, rng.randrange(1, 40))
            offered = OfferedRoutes()
            matches = [_rule(rng) for _ in range(rng.randrange(1, 5))]
            offered.get(router, matches)
            for _ in range(10):
                matches = list(matches)
                i = rng.randrange(len(matches))
                matches[i] = _rule(rng) if rng.random() < 0.7 else matches[i]
                got = offered.get(router, matches)
                want = route_masks(router.primary_routes, matches)
                self.assertEqual([(o.dsts_hit, o.srcs_hit) for o in got], list(want))

    def test_change_elsewhere_keeps_the_same_tuple(self):
        """A rule gaining an address outside the router's routes keeps its masks (same object, no route tested)."""
        rng = random.Random(16)
        router = _router(rng, 1024)
        offered = OfferedRoutes()
        before = IPSet.from_networks([ipaddress.ip_network("100.64.0.0/30")])
        first = offered.get(router, [Match(before, IPSet.from_networks(router.primary_routes))])
        tested = offered.routes_tested
        grown = before | IPSet.from_networks([ipaddress.ip_network("100.64.0.9/32")])
        again = offered.get(router, [Match(grown, IPSet.from_networks(router.primary_routes))])
        self.assertIs(again, first)
        self.assertEqual((offered.routes_tested - tested, offered.carried), (0, 1))

    def test_change_within_routes_recomputes(self):
        """A rule gaining one of the router's routes recomputes its masks."""
        nets = tuple(ipaddress.ip_network(f"10.0.{i}.0/24") for i in range(50))
        router = Node(id=1, hostname="r", tags=("tag:r",), ipv4=ipaddress.ip_address("100.64.0.1"),
                      advertised_routes=nets, approved_routes=nets, primary_routes=nets)
        offered = OfferedRoutes()
        nobody = IPSet.from_networks([ipaddress.ip_network("100.64.0.0/30")])
        offered.get(router, [Match(nobody, nobody)])
        one = IPSet.from_networks(router.primary_routes[:1])
        got = offered.get(router, [Match(nobody, nobody | one)])
        self.assertEqual(got[0].dsts_hit, 1)
        self.assertEqual([o.dsts_hit for o in got[1:]], [0] * (len(got) - 1))
        self.assertEqual(offered.routes_tested, 2 * len(got))
