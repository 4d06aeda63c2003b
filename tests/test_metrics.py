"""Tests for headscale_tw.metrics."""

from nacl.public import PrivateKey
from prometheus_client import generate_latest
from twisted.internet.task import Clock
from twisted.trial import unittest

from headscale_tw.config.model import Config
from headscale_tw.control.plane import ControlPlane
from headscale_tw.derp.server import DERPServer
from headscale_tw.derp.stun import STUNServerProtocol
from headscale_tw.metrics import make_registry
from headscale_tw.testing.db import open_test_database, resolve


class ServerCollectorTests(unittest.TestCase):
    """/metrics shows the live figures of the control plane, relay and STUN responder."""

    def test_scrape(self):
        """A scrape reports node and user counts and the relay's and STUN's counters as they are now."""
        clock = Clock()
        db = open_test_database(self)
        resolve(db.users.create("alice"))
        plane = ControlPlane(Config(), db, clock)
        resolve(plane.start())
        self.addCleanup(plane.stop)
        derp = DERPServer(PrivateKey.generate(), clock)
        stun = STUNServerProtocol()
        derp.packets_dropped_queue_full = 7
        stun.malformed = 3
        text = generate_latest(make_registry(plane, derp, stun, process=False)).decode()
        self.assertIn("headscale_users 1.0", text)
        resolve(plane.admin.users.create("bob"))  # created after start, through the admin service
        self.assertIn("headscale_users 2.0", generate_latest(make_registry(plane, process=False)).decode())
        self.assertIn("headscale_nodes 0.0", text)
        self.assertIn("headscale_map_sessions 0.0", text)
        self.assertIn("headscale_derp_packets_dropped_queue_full_total 7.0", text)
        self.assertIn("headscale_stun_malformed_total 3.0", text)
        self.assertIn("headscale_derp_clients 0.0", text)

    def test_registries_independent(self):
        """Two registries (two servers in one process, as in tests) each carry the process figures."""
        for registry in (make_registry(), make_registry()):
            self.assertIn("process_resident_memory_bytes", generate_latest(registry).decode())
