"""Tests for headscale_tw.derp.mesh: two of our instances relaying for each other over iosim."""

from nacl.public import PrivateKey
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.test import iosim
from twisted.trial import unittest

from headscale_tw.derp import _frames as f
from headscale_tw.derp.mesh import MeshPeerProtocol, load_mesh_key, mesh_peer_endpoint, mesh_peer_service
from headscale_tw.derp.server import DERPServer
from headscale_tw.testing.derp_client import RecordingDERPClient

MESH_KEY = bytes(range(32))


class _Net:
    """Servers and clients joined by iosim pumps."""

    def __init__(self):
        self.clock = Clock()
        self.pumps = []

    def connect(self, server, client):
        proto = server.build_protocol()
        s, c, pump = iosim.connectedServerAndClient(lambda: proto, lambda: client, greet=False, clock=self.clock)
        self.pumps.append(pump)
        return proto, pump

    def flush(self):
        for _ in range(4):
            for p in self.pumps:
                p.flush()


class MeshTests(unittest.TestCase):
    """Mesh peers learn each other's clients and forward packets."""

    def setUp(self):
        self.net = _Net()
        self.a = DERPServer(PrivateKey.generate(), self.net.clock, mesh_key=MESH_KEY)
        self.b = DERPServer(PrivateKey.generate(), self.net.clock, mesh_key=MESH_KEY)
        self.client_a = RecordingDERPClient()
        self.client_b = RecordingDERPClient()
        self.net.connect(self.a, self.client_a)
        self.net.connect(self.b, self.client_b)
        self.a_to_b = MeshPeerProtocol(self.a)
        self.b_to_a = MeshPeerProtocol(self.b)
        self.proto_on_b, self.pump_ab = self.net.connect(self.b, self.a_to_b)
        self.net.connect(self.a, self.b_to_a)
        self.net.flush()

    def test_mesh_peer_admitted(self):
        """A client with the right mesh key is marked as a mesh peer."""
        self.assertTrue(self.proto_on_b.is_mesh_peer)
        self.assertEqual(self.proto_on_b.present_flags(), f.PeerPresentFlags.IS_MESH_PEER)

    def test_routes_learnt(self):
        """Each instance learns the other's client through WatchConns / PeerPresent."""
        self.assertIs(self.a.mesh_route(self.client_b.public_key), self.a_to_b)
        self.assertIs(self.b.mesh_route(self.client_a.public_key), self.b_to_a)
        self.assertIsNone(self.a.mesh_route(self.b.public_key))

    def test_forward_both_ways(self):
        """Packets between clients on different instances arrive with the original source key."""
        self.client_a.send_packet(self.client_b.public_key, b"a->b")
        self.client_b.send_packet(self.client_a.public_key, b"b->a")
        self.net.flush()
        self.assertEqual(self.client_b.packets, [(self.client_a.public_key, b"a->b")])
        self.assertEqual(self.client_a.packets, [(self.client_b.public_key, b"b->a")])
        self.assertEqual((self.a.packets_forwarded_out, self.b.packets_forwarded_in), (1, 1))

    def test_new_client_after_watch(self):
        """A client connecting later is announced to the watching peer."""
        late = RecordingDERPClient()
        self.net.connect(self.b, late)
        self.net.flush()
        self.client_a.send_packet(late.public_key, b"hi")
        self.net.flush()
        self.assertEqual(late.packets, [(self.client_a.public_key, b"hi")])

    def test_departure_removes_route(self):
        """When a client leaves its instance, the peer forgets the route."""
        self.client_b.transport.loseConnection()
        self.net.flush()
        self.assertIsNone(self.a.mesh_route(self.client_b.public_key))

    def test_mesh_conn_broke_forgets_routes(self):
        """Losing the mesh connection forgets every route learnt over it."""
        self.a_to_b.transport.loseConnection()
        self.net.flush()
        self.assertIsNone(self.a.mesh_route(self.client_b.public_key))

    def test_wrong_mesh_key_cannot_forward(self):
        """A client with a wrong mesh key is an ordinary client: ForwardPacket closes it."""
        other = DERPServer(PrivateKey.generate(), self.net.clock, mesh_key=b"\x01" * 32)
        intruder = MeshPeerProtocol(other)
        proto, _ = self.net.connect(self.b, intruder)
        self.net.flush()
        self.assertFalse(proto.is_mesh_peer)
        self.assertIsNotNone(proto.close_reason)
        self.assertIn("insufficient permissions", proto.close_reason)

    def test_self_connection_dropped(self):
        """Connecting to ourselves is detected from the ServerKey and dropped."""
        me = MeshPeerProtocol(self.a)
        self.net.connect(self.a, me)
        self.net.flush()
        self.assertEqual(me.failure_reason, "mesh peer is ourselves")

    def test_service_retries(self):
        """mesh_peer_service builds a ClientService that retries every 5 s."""
        attempts = []

        class _Failing:
            def connect(self, factory):
                attempts.append(factory)
                return defer.fail(ConnectionRefusedError())

        clock = Clock()
        service = mesh_peer_service(self.a, _Failing(), upgrade_host="b.example", clock=clock)
        service.startService()
        self.assertEqual(len(attempts), 1)
        clock.advance(4.9)
        self.assertEqual(len(attempts), 1)
        clock.advance(0.2)
        self.assertEqual(len(attempts), 2)
        self.successResultOf(service.stopService())
        self.assertEqual(clock.getDelayedCalls(), [])


class MeshConfigTests(unittest.TestCase):
    """derp.server.mesh_key_path / mesh_peers: key file, peer URLs and the service wiring."""

    def key_file(self, text):
        path = self.mktemp()
        with open(path, "w") as fp:
            fp.write(text)
        return path

    def test_load_mesh_key(self):
        """64 hex digits with surrounding white space load as 32 bytes."""
        self.assertEqual(load_mesh_key(self.key_file("\n" + MESH_KEY.hex() + "\n")), MESH_KEY)

    def test_bad_mesh_key_files(self):
        """A missing file, non-hex text or the wrong length is refused, naming the file."""
        for path, fragment in [
            (self.mktemp(), "does not exist"),
            (self.key_file("not hex"), "must hold 64 hex digits"),
            (self.key_file("abcd"), "holds 2 bytes, expected 32"),
        ]:
            e = self.assertRaises(ValueError, load_mesh_key, path)
            self.assertIn(fragment, str(e))
            self.assertIn(repr(path), str(e))

    def test_peer_endpoint_https(self):
        """An https URL gives a TLS endpoint to host:443, its Host header and the /derp default path."""
        from twisted.internet.testing import MemoryReactorClock

        reactor = MemoryReactorClock()
        endpoint, host, path = mesh_peer_endpoint(reactor, "https://derp2.example.com")
        self.assertEqual((host, path), ("derp2.example.com", "/derp"))
        self.assertEqual(type(endpoint).__name__, "_WrapperEndpoint")
        _, host, path = mesh_peer_endpoint(reactor, "http://10.0.0.2:8080/custom/derp")
        self.assertEqual((host, path), ("10.0.0.2:8080", "/custom/derp"))

    def test_peer_endpoint_bad_url(self):
        """A URL that is not http(s) with a host is refused."""
        from twisted.internet.testing import MemoryReactorClock

        self.assertRaises(ValueError, mesh_peer_endpoint, MemoryReactorClock(), "derp2.example.com")

    def test_config_keys(self):
        """The loader reads both keys; peers without a key file, or a bad peer URL, are named problems."""
        from headscale_tw.config.loader import ConfigError, parse_config

        c = parse_config({"derp": {"server": {"mesh_key_path": "/etc/mesh.key",
                                              "mesh_peers": ["https://derp2.example.com/derp"]}}}, environ={})
        self.assertEqual(c.derp.server.mesh_key_path, "/etc/mesh.key")
        self.assertEqual(c.derp.server.mesh_peers, ("https://derp2.example.com/derp",))
        self.assertIsNone(parse_config({}, environ={}).derp.server.mesh_key_path)
        e = self.assertRaises(ConfigError, parse_config,
                              {"derp": {"server": {"mesh_peers": ["https://derp2.example.com"]}}}, environ={})
        self.assertIn("derp.server.mesh_peers: needs derp.server.mesh_key_path", str(e))
        e = self.assertRaises(ConfigError, parse_config,
                              {"derp": {"server": {"mesh_key_path": "k", "mesh_peers": ["derp2:443"]}}}, environ={})
        self.assertIn("derp.server.mesh_peers[0]", str(e))

    def test_advertise_url_key(self):
        """derp.server.advertise_url is read; a malformed one, or one without the embedded server, is a named problem."""
        from headscale_tw.config.loader import ConfigError, parse_config

        c = parse_config({"derp": {"server": {"advertise_url": "https://hs1.example.com/derp"}}}, environ={})
        self.assertEqual(c.derp.server.advertise_url, "https://hs1.example.com/derp")
        self.assertIsNone(parse_config({"derp": {"server": {"advertise_url": ""}}}, environ={}).derp.server.advertise_url)
        e = self.assertRaises(ConfigError, parse_config,
                              {"derp": {"server": {"advertise_url": "hs1.example.com:443"}}}, environ={})
        self.assertIn("derp.server.advertise_url:", str(e))
        self.assertIn("http", str(e))
        e = self.assertRaises(ConfigError, parse_config, {"derp": {"server": {
            "enabled": False, "advertise_url": "https://hs1.example.com/derp"}}}, environ={})
        self.assertIn("derp.server.advertise_url: is only used when derp.server.enabled is true", str(e))

    def test_service_wiring(self):
        """With both keys set, the service's DERP server has the mesh key and one link service per peer."""
        from twisted.application.internet import ClientService
        from twisted.internet.testing import MemoryReactorClock
        from twisted.web.resource import Resource

        from headscale_tw.config.loader import parse_config
        from headscale_tw.service import _DERPParts

        config = parse_config({"derp": {"server": {
            "private_key_path": self.mktemp(),
            "mesh_key_path": self.key_file(MESH_KEY.hex()),
            "mesh_peers": ["https://derp2.example.com/derp", "http://10.0.0.3:8080/derp"],
        }}}, environ={})
        parts = _DERPParts(config, MemoryReactorClock())
        self.assertEqual(parts.server.mesh_key, MESH_KEY)
        links = [s for s in parts.mount(Resource()) if isinstance(s, ClientService)]
        self.assertEqual(len(links), 2)

    def test_instance_services(self):
        """On a shared database: with a mesh key, a mesh membership fed by the registry, which advertises our DERP URL;
        without one, the registry alone, advertising no DERP URL."""
        from types import SimpleNamespace

        from twisted.internet.testing import MemoryReactorClock

        from headscale_tw.config.loader import parse_config
        from headscale_tw.control.instances import InstanceRegistry
        from headscale_tw.derp.cluster import DERPMeshMembership
        from headscale_tw.service import _DERPParts, _instance_services

        db = SimpleNamespace(instances=object())
        meshed = parse_config({"server_url": "https://hs1.example.com", "derp": {"server": {
            "private_key_path": self.mktemp(), "mesh_key_path": self.key_file(MESH_KEY.hex())}}}, environ={})
        mesh, registry = _instance_services(meshed, MemoryReactorClock(), db, "abc",
                                            _DERPParts(meshed, MemoryReactorClock()))
        self.assertIsInstance(mesh, DERPMeshMembership)
        self.assertIsInstance(registry, InstanceRegistry)
        self.assertEqual((mesh.own_url, registry.advertised.derp_url),
                         ("https://hs1.example.com/derp", "https://hs1.example.com/derp"))
        self.assertEqual(registry.advertised.server_url, "https://hs1.example.com")
        plain = parse_config({"derp": {"server": {"private_key_path": self.mktemp()}}}, environ={})
        (registry,) = _instance_services(plain, MemoryReactorClock(), db, "abc", _DERPParts(plain, MemoryReactorClock()))
        self.assertEqual(registry.advertised.derp_url, "")

    def test_verify_clients_asks_the_database(self):
        """With a database look-up (a shared PostgreSQL), verify_clients admits a key the control plane's memory lacks
        but the database holds."""
        from twisted.internet import defer
        from twisted.internet.testing import MemoryReactorClock

        from headscale_tw.config.loader import parse_config
        from headscale_tw.service import _DERPParts

        config = parse_config({"derp": {"server": {"private_key_path": self.mktemp()}}}, environ={})
        rows = {"nodekey:" + "bb" * 32: object()}
        parts = _DERPParts(config, MemoryReactorClock(), lambda key: defer.succeed(rows.get(key)))
        self.assertIs(self.successResultOf(parts.server.verify_client("nodekey:" + "bb" * 32)), True)
        self.assertIs(self.successResultOf(parts.server.verify_client("nodekey:" + "cc" * 32)), False)
        self.assertIs(_DERPParts(config, MemoryReactorClock()).server.verify_client("nodekey:" + "bb" * 32), False)
