"""Tests for headscale_tw.metrics."""

import os
from datetime import datetime, timedelta, timezone

from nacl.public import PrivateKey
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
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


def _scrape(registry) -> dict:
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(generate_latest(registry).decode())
            for sample in family.samples}


class NodeStateTests(unittest.TestCase):
    """Nodes by state and route counts are counted from the live state at each scrape."""

    def test_states_and_routes(self):
        """Expired, online, offline and ephemeral nodes and advertised/approved/serving routes are counted."""
        clock = Clock()
        clock.advance(1_800_000_000)
        db = open_test_database(self)
        user = resolve(db.users.create("alice"))
        plane = ControlPlane(Config(), db, clock)
        resolve(plane.start())
        self.addCleanup(plane.stop)
        now = datetime.fromtimestamp(clock.seconds(), timezone.utc)

        def node(name, **fields):
            return resolve(plane.state.create_node(machine_key="mkey:" + os.urandom(32).hex(),
                                                   node_key="nodekey:" + os.urandom(32).hex(),
                                                   hostname=name, user_id=user.id, **fields))

        node("expired", expiry=now - timedelta(hours=1))
        online = node("router", hostinfo={"RoutableIPs": ["10.0.0.0/24", "10.1.0.0/24"]},
                      approved_routes=("10.0.0.0/24",))
        node("laptop", ephemeral=True, approved_routes=("192.168.0.0/24",))
        plane.state.runtime.came_online(online.id)
        values = _scrape(make_registry(plane, process=False))
        self.assertEqual({state: values[("headscale_nodes_by_state", (("state", state),))]
                          for state in ("online", "offline", "expired")}, {"online": 1, "offline": 1, "expired": 1})
        self.assertEqual(values[("headscale_nodes_ephemeral", ())], 1)
        self.assertEqual({state: values[("headscale_routes", (("state", state),))]
                          for state in ("advertised", "approved", "serving")},
                         {"advertised": 2, "approved": 2, "serving": 1})
        self.assertEqual(values[("headscale_nodestore_operations_total", (("operation", "put"),))], 3)

    def test_users_follow_deletions(self):
        """headscale_users drops when a user is deleted through the admin service."""
        clock = Clock()
        db = open_test_database(self)
        plane = ControlPlane(Config(), db, clock)
        resolve(plane.start())
        self.addCleanup(plane.stop)
        user = resolve(plane.admin.users.create("bob"))
        self.assertEqual(_scrape(make_registry(plane, process=False))[("headscale_users", ())], 1)
        resolve(plane.admin.users.delete(user.id))
        self.assertEqual(_scrape(make_registry(plane, process=False))[("headscale_users", ())], 0)
