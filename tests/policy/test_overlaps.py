# -*- test-case-name: tests.policy.test_overlaps -*-
"""
A rule against a router's many routes: one merge of sorted ranges, same answer as a scan.
"""

import ipaddress
import random

from twisted.trial import unittest

from headscale_tw.policy.ipset import IPSet
from headscale_tw.policy.reduce import _overlaps_any, _sorted_ranges_overlap


def _scan(s, nets):
    return any(s.overlaps_network(n) for n in nets)


class OverlapsAnyTests(unittest.TestCase):
    """_overlaps_any gives the scan's answer for long route tuples, through the sorted-range merge."""

    def test_same_answer_as_scan(self):
        """500 random rule sets against random tuples of 17-200 IPv4 and IPv6 routes agree with the scan."""
        rng = random.Random(10)
        for _ in range(500):
            nets = tuple({
                ipaddress.ip_network(f"10.{rng.randrange(4)}.{rng.randrange(256)}.0/{rng.choice((16, 24, 28))}",
                                     strict=False) if rng.random() < 0.8 else
                ipaddress.ip_network(f"fd00:{rng.randrange(16):x}::/{rng.choice((48, 64))}", strict=False)
                for _ in range(rng.randrange(17, 200))
            })
            if len(nets) <= 16:
                continue
            rule = IPSet.from_networks([
                ipaddress.ip_network(f"10.{rng.randrange(8)}.{rng.randrange(256)}.{rng.randrange(256)}/"
                                     f"{rng.choice((8, 16, 30, 32))}", strict=False)
                for _ in range(rng.randrange(1, 4))
            ] + ([ipaddress.ip_network("fd00:3::/32")] if rng.random() < 0.3 else []))
            self.assertEqual(_overlaps_any(rule, nets), _scan(rule, nets), (rule, len(nets)))

    def test_merge_edges(self):
        """Touching, nested, disjoint and other-family ranges."""
        self.assertTrue(_sorted_ranges_overlap([(4, 10, 20)], [(4, 20, 30)]))
        self.assertFalse(_sorted_ranges_overlap([(4, 10, 19)], [(4, 20, 30)]))
        self.assertTrue(_sorted_ranges_overlap([(4, 0, 100)], [(4, 40, 41)]))
        self.assertFalse(_sorted_ranges_overlap([(4, 10, 20)], [(6, 10, 20)]))
        self.assertTrue(_sorted_ranges_overlap([(4, 1, 2), (6, 5, 9)], [(4, 50, 60), (6, 9, 9)]))
        self.assertFalse(_sorted_ranges_overlap([], [(4, 1, 2)]))
