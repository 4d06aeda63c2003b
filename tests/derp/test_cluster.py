"""Tests for :mod:`headscale_tw.derp.cluster`: live instances become mesh links and DERP map nodes."""

from datetime import datetime, timedelta, timezone

from nacl.public import PrivateKey
from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs
from twisted.test import iosim
from twisted.trial import unittest

from headscale_tw.clock import utc_now
from headscale_tw.control.instances import Advertised, InstanceRegistry, Membership
from headscale_tw.derp.cluster import DERPMeshMembership, mesh_link_factory
from headscale_tw.derp.derpmap import DERPMapProvider
from headscale_tw.derp.mesh import mesh_peer_service
from headscale_tw.derp.server import DERPServer
from headscale_tw.storage.stores.instances import Instance
from headscale_tw.testing.db import open_test_database, resolve
from headscale_tw.testing.derp_client import RecordingDERPClient
from tests.derp.test_derpmap import make_config

MESH_KEY = bytes(range(32))
START = 1_796_000_000.0  # a December 2026 wall-clock time
_EPOCH = datetime(2026, 12, 4, tzinfo=timezone.utc)


def instance(ident, derp_url, started=0):
    """An ``instances`` row as the registry reports it, started ``started`` seconds after the first."""
    begun = _EPOCH + timedelta(seconds=started)
    return Instance(id=ident, started_at=begun, heartbeat_at=begun, expires_at=begun, derp_url=derp_url)


def membership(*rows):
    """A :class:`Membership` whose live set is ``rows`` (joined and left do not matter to the consumer)."""
    return Membership(live=tuple(rows), joined=(), left=())


class _Link(Service):
    """A stand-in mesh link: records start and stop; its stop finishes when the test says so."""

    def __init__(self, url):
        self.url = url
        self.stopping = None

    def stopService(self):
        super().stopService()
        self.stopping = defer.Deferred()
        return self.stopping


class MembershipTests(unittest.TestCase):
    """DERPMeshMembership links to every other live instance and reports all of them, oldest first, as map nodes."""

    def setUp(self):
        self.links = []
        self.nodes = []

        def link(url):
            self.links.append(_Link(url))
            return self.links[-1]

        self.mesh = DERPMeshMembership("me", "https://me.example/derp", link, on_nodes=self.nodes.append,
                                       static_peers=["https://static.example/derp/"])
        self.mesh.startService()

    def running_urls(self):
        return sorted(url for url, link in self.mesh.links.items() if link.running)

    def test_join_links_others_and_lists_all_oldest_first(self):
        """Each other instance gets a started link; the map nodes are every instance with a URL, oldest first
        (then by id), this one included wherever its age puts it."""
        self.mesh.membership_changed(membership(
            instance("me", "https://me.example/derp", started=5), instance("c", "https://c.example/derp", started=9),
            instance("b", "https://b.example/derp", started=1), instance("a", "https://a.example/derp", started=9),
            instance("quiet", "", started=0)))
        self.assertEqual(self.running_urls(), ["https://a.example/derp", "https://b.example/derp",
                                               "https://c.example/derp"])
        self.assertEqual([ident for ident, _ in self.nodes[-1]], ["b", "me", "a", "c"])
        self.assertTrue(all(link.parent is self.mesh for link in self.links))

    def test_leave_stops_link_and_unlists(self):
        """An instance that left has its link stopped and removed, and the map nodes drop it."""
        me = instance("me", "https://me.example/derp")
        self.mesh.membership_changed(membership(me, instance("b", "https://b.example/derp"),
                                                instance("c", "https://c.example/derp")))
        b_link = self.mesh.links["https://b.example/derp"]
        self.mesh.membership_changed(membership(me, instance("c", "https://c.example/derp")))
        self.assertFalse(b_link.running)
        self.assertIsNone(b_link.parent)
        self.assertEqual(self.running_urls(), ["https://c.example/derp"])
        self.assertEqual(self.nodes[-1], (("c", "https://c.example/derp"), ("me", "https://me.example/derp")))
        b_link.stopping.callback(None)

    def test_unchanged_set_is_not_reported_again(self):
        """A round with the same instances neither relinks nor reports the nodes again."""
        rows = membership(instance("me", "https://me.example/derp"), instance("b", "https://b.example/derp"))
        self.mesh.membership_changed(rows)
        self.mesh.membership_changed(rows)
        self.assertEqual(len(self.links), 1)
        self.assertEqual(len(self.nodes), 1)

    def test_static_peer_listed_but_not_linked_twice(self):
        """A live instance also in mesh_peers is a map node, but its link is the static one."""
        self.mesh.membership_changed(membership(instance("s", "https://static.example/derp")))
        self.assertEqual(self.links, [])
        self.assertEqual(self.nodes, [(("s", "https://static.example/derp"),)])

    def test_own_duplicate_and_bad_urls_skipped(self):
        """Another instance with our URL, a second instance with one URL, and malformed URLs are skipped, warned once."""
        rows = membership(
            instance("me", "https://me.example/derp"),
            instance("a", "https://b.example/derp"), instance("b", "https://b.example/derp/", started=1),
            instance("lb", "https://me.example/derp"), instance("x", "ftp://x.example/derp"),
            instance("y", "https://y.example:port/derp"))
        with capturedLogs() as events:
            self.mesh.membership_changed(rows)
            self.mesh.membership_changed(rows)
        self.assertEqual(self.running_urls(), ["https://b.example/derp"])
        self.assertEqual(self.nodes, [(("a", "https://b.example/derp"), ("me", "https://me.example/derp"))])
        warned = sorted(e["id"] for e in events if e["log_level"] == LogLevel.warn)
        self.assertEqual(warned, ["b", "lb", "x", "y"])

    def test_ignored_when_not_running(self):
        """Before start and after stop, membership changes start nothing."""
        resolve(self.mesh.stopService())
        self.mesh.membership_changed(membership(instance("b", "https://b.example/derp")))
        self.assertEqual((self.links, self.nodes), ([], []))

    def test_stop_waits_for_every_link(self):
        """stopService fires only once running links and links stopping after a leave have stopped."""
        self.mesh.membership_changed(membership(instance("b", "https://b.example/derp"),
                                                instance("c", "https://c.example/derp")))
        b_link, c_link = self.links
        self.mesh.membership_changed(membership(instance("c", "https://c.example/derp")))
        stopped = self.mesh.stopService()
        self.assertNoResult(stopped)
        c_link.stopping.callback(None)
        self.assertNoResult(stopped)
        b_link.stopping.callback(None)
        self.assertIsNone(self.successResultOf(stopped))

    def test_link_factory_builds_client_service(self):
        """The default link is a ClientService to the URL's host, not started until added."""
        from twisted.application.internet import ClientService
        from twisted.internet.testing import MemoryReactorClock

        server = DERPServer(PrivateKey.generate(), Clock(), mesh_key=MESH_KEY)
        link = mesh_link_factory(server, MemoryReactorClock())("https://b.example/derp")
        self.assertIsInstance(link, ClientService)
        self.assertFalse(link.running)
        self.assertRaises(ValueError, mesh_link_factory(server, MemoryReactorClock()), "b.example/derp")


class _Net:
    """DERP servers joined by iosim; an endpoint per server that connects a client protocol to it."""

    def __init__(self, clock):
        self.clock = clock
        self.pumps = []

    def connect(self, server, client):
        proto = server.build_protocol()
        _, _, pump = iosim.connectedServerAndClient(lambda: proto, lambda: client, greet=False, clock=self.clock)
        self.pumps.append(pump)
        return proto

    def endpoint(self, server):
        net = self

        class _Endpoint:
            def connect(self, factory):
                client = factory.buildProtocol(None)
                net.connect(server, client)
                return defer.succeed(client)

        return _Endpoint()

    def flush(self):
        for _ in range(4):
            for pump in self.pumps:
                pump.flush()


class RegistryMeshTests(unittest.TestCase):
    """Registries on one table, their memberships, real mesh links over iosim and the DERP map, on a Clock."""

    def setUp(self):
        self.db = open_test_database(self)
        self.clock = Clock()
        self.clock.advance(START)
        self.net = _Net(self.clock)
        self.servers = {name: DERPServer(PrivateKey.generate(), self.clock, mesh_key=MESH_KEY) for name in "ab"}
        self.urls = {name: f"https://{name}.example/derp" for name in "ab"}
        self.maps = []
        self.provider = DERPMapProvider(make_config(), self.clock, on_change=self.maps.append)

    def start(self, name, on_nodes=lambda nodes: None):
        """Start instance ``name``: its mesh membership, then its registry (as service.py orders them)."""
        server = self.servers[name]
        endpoints = {self.urls[other]: self.net.endpoint(self.servers[other]) for other in self.servers}

        def link(url):
            return mesh_peer_service(server, endpoints[url], None, self.clock)

        mesh = DERPMeshMembership(name, self.urls[name], link, on_nodes=on_nodes)
        registry = InstanceRegistry(self.db.instances, name, self.clock, Advertised(derp_url=self.urls[name]),
                                    on_membership=mesh.membership_changed)
        mesh.startService()
        registry.startService()

        def stop():
            d = registry.stopService()
            self.net.flush()
            resolve(d)
            d = mesh.stopService()
            self.net.flush()
            resolve(d)

        return mesh, stop

    def advance(self, seconds):
        for _ in range(int(seconds)):
            self.clock.advance(1)
            self.net.flush()

    def test_instances_mesh_and_map_follow_membership(self):
        """B's start links A to B (A's client reaches B's client through it) and makes A's map one node per
        instance, A (the older) first; B's stop closes the link, forgets its routes and leaves A's own node alone
        in the map; no timer is left."""
        mesh_a, stop_a = self.start("a", on_nodes=self.provider.set_instance_nodes)
        self.assertEqual(len(self.provider.derp_map["Regions"][999]["Nodes"]), 1)
        mesh_b, stop_b = self.start("b")
        self.advance(2)
        self.assertEqual(sorted(mesh_a.links), [self.urls["b"]])
        self.assertEqual(sorted(mesh_b.links), [self.urls["a"]])
        nodes = self.provider.derp_map["Regions"][999]["Nodes"]
        self.assertEqual([(n["Name"], n["HostName"]) for n in nodes], [("999-a", "a.example"), ("999-b", "b.example")])
        self.assertEqual(self.maps[-1], self.provider.derp_map)

        client_a, client_b = RecordingDERPClient(), RecordingDERPClient()
        self.net.connect(self.servers["a"], client_a)
        self.net.connect(self.servers["b"], client_b)
        self.net.flush()
        client_a.send_packet(client_b.public_key, b"over the mesh")
        self.net.flush()
        self.assertEqual(client_b.packets, [(client_a.public_key, b"over the mesh")])

        stop_b()
        self.advance(2)
        self.assertEqual(mesh_a.links, {})
        self.assertIsNone(self.servers["a"].mesh_route(client_b.public_key))
        self.assertEqual([n["Name"] for n in self.provider.derp_map["Regions"][999]["Nodes"]], ["999"])
        self.assertEqual(len(self.maps), 2)
        stop_a()
        client_a.transport.loseConnection()
        client_b.transport.loseConnection()
        self.net.flush()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_dead_instance_leaves_the_mesh(self):
        """An instance that stops beating without a clean stop is unlinked once its heartbeat runs out."""
        mesh_a, stop_a = self.start("a")
        self.addCleanup(stop_a)
        resolve(self.db.instances.heartbeat("b", 6.0, derp_url=self.urls["b"], now=utc_now(self.clock)))
        self.advance(2)
        link = mesh_a.links[self.urls["b"]]
        self.assertTrue(link.running)
        self.advance(6)
        self.assertEqual(mesh_a.links, {})
        self.assertFalse(link.running)
