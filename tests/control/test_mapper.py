"""Tests for headscale_tw.control.mapper: the first message and its shape."""

import json
import os

from twisted.trial import unittest

from headscale_tw.config.model import Config
from headscale_tw.control.framing import FrameDecoder
from headscale_tw.control.mapper import ALLOW_ALL_FILTER, embedded_derp_map
from tests.control._harness import Harness

DATA = os.path.join(os.path.dirname(__file__), "data")


def _load(name):
    with open(os.path.join(DATA, name)) as f:
        return json.load(f)


def _same_shape(testcase, ours, theirs, where):
    """Every key of ``theirs`` is in ``ours`` with a value of the same JSON type."""
    for key, value in theirs.items():
        testcase.assertIn(key, ours, f"{where}.{key} missing")
        expected = type(value)
        if expected is int:
            testcase.assertIsInstance(ours[key], int, f"{where}.{key}")
        else:
            testcase.assertIsInstance(ours[key], expected, f"{where}.{key}")


class FirstMessageTests(unittest.TestCase):
    """The first map message is complete and shaped like one 1.96.4 accepted."""

    def setUp(self):
        self.h = Harness(self)
        self.a, _ = self.h.register("node1")
        self.b, _ = self.h.register("node2")
        self.h.stream(self.b, Endpoints=["127.0.0.1:41642"])
        self.stream = self.h.stream(self.a, Endpoints=["127.0.0.1:41641"])
        self.first = self.stream.applier.messages[0]

    def test_matches_capture(self):
        """Top-level, Node and peer keys of the capture are present with the same types."""
        capture = _load("map-response-minimal.json")
        _same_shape(self, self.first, capture, "MapResponse")
        _same_shape(self, self.first["Node"], capture["Node"], "Node")
        _same_shape(self, self.first["Peers"][0], capture["Peers"][0], "Peers[0]")
        self.assertIsInstance(self.first["DERPMap"]["Regions"], dict)

    def test_self_node(self):
        """The self node has addresses, FQDN name, authorization and the captive-portal cap."""
        node = self.first["Node"]
        self.assertEqual(node["ID"], self.a.id)
        self.assertEqual(node["Name"], "node1.tail.example.")
        self.assertEqual(node["Addresses"], ["100.64.0.1/32", "fd7a:115c:a1e0::1/128"])
        self.assertTrue(node["MachineAuthorized"])
        self.assertIn("disable-captive-portal-detection", node["CapMap"])
        self.assertEqual(node["Cap"], 133)
        self.assertEqual(node["Endpoints"], ["127.0.0.1:41641"])

    def test_rest(self):
        """Peers, filter, profiles, DNS, debug and control time are all present."""
        self.assertEqual([p["ID"] for p in self.first["Peers"]], [self.b.id])
        self.assertTrue(self.first["Peers"][0]["Online"])
        self.assertEqual(self.first["PacketFilter"], ALLOW_ALL_FILTER)
        self.assertEqual(self.first["UserProfiles"][0]["LoginName"], "alice@example.com")
        self.assertEqual(self.first["DNSConfig"]["Domains"], ["tail.example"])
        self.assertTrue(self.first["DNSConfig"]["Proxied"])
        self.assertIs(self.first["CollectServices"], False)
        self.assertEqual(self.first["Debug"], {"DisableLogTail": True})
        self.assertEqual(self.first["ControlTime"], "2027-01-15T08:00:00Z")

    def test_embedded_derp_map(self):
        """The default DERP map is region 999 "headscale" at server_url's host and port."""
        derp = embedded_derp_map(Config(server_url="https://hs.example.com:8443"))
        region = derp["Regions"]["999"]
        self.assertEqual((region["RegionID"], region["RegionCode"]), (999, "headscale"))
        self.assertEqual((region["Nodes"][0]["HostName"], region["Nodes"][0]["DERPPort"]), ("hs.example.com", 8443))

    def test_one_shot(self):
        """A non-streaming, non-lite request gets exactly one decodable full message."""
        messages = FrameDecoder().feed(self.h.notifier.one_shot(self.a.id))
        self.assertEqual(len(messages), 1)
        self.assertEqual(messages[0]["Node"]["ID"], self.a.id)
