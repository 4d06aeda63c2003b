"""Tests for headscale_tw.derp.resource."""

import json

from nacl.public import PrivateKey
from treq.testing import StubTreq
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial import unittest
from twisted.web import server as web_server
from twisted.web.resource import Resource

from headscale_tw.derp import _client as ev
from headscale_tw.derp import _frames as f
from headscale_tw.derp.resource import BootstrapDNSResource, derp_map_hostnames, mount_derp_resources
from headscale_tw.derp.server import DERPServer
from headscale_tw.testing.derp_client import DERPClientConnection


def make_site(bootstrap=None):
    derp = DERPServer(PrivateKey.generate(), Clock())
    root = Resource()
    mount_derp_resources(root, derp, bootstrap)
    return derp, root


def connect(root):
    site = web_server.Site(root, reactor=Clock())
    http = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1234))
    transport = StringTransport(peerAddress=IPv4Address("TCP", "192.0.2.9", 5555))
    http.makeConnection(transport)
    return http, transport


class UpgradeTests(unittest.TestCase):
    """GET /derp with Upgrade: DERP."""

    def test_upgrade_and_handshake(self):
        """The 101 head names the DERP version and key; the ServerKey frame follows; ClientInfo completes."""
        derp, root = make_site()
        http, transport = connect(root)
        http.dataReceived(b"GET /derp HTTP/1.1\r\nHost: ctl\r\nUpgrade: DERP\r\nConnection: Upgrade\r\n\r\n")
        value = transport.value()
        head, _, rest = value.partition(b"\r\n\r\n")
        self.assertTrue(head.startswith(b"HTTP/1.1 101 Switching Protocols\r\n"))
        self.assertIn(b"\r\nUpgrade: DERP", head)
        self.assertIn(b"\r\nDerp-Version: 2", head)
        self.assertIn(b"\r\nDerp-Public-Key: " + derp.public_key.hex().encode(), head)
        self.assertEqual(rest, f.server_key_frame(derp.public_key))
        client = DERPClientConnection(PrivateKey.generate())
        client.receive_data(rest)
        transport.clear()
        transport.protocol.dataReceived(client.data_to_send())
        self.assertEqual(client.receive_data(transport.value()), [ev.ServerInfoReceived({"version": 2})])
        self.assertTrue(derp.is_connected(client.public_key))

    def test_fast_start(self):
        """With Derp-Fast-Start: 1 and ClientInfo right after the headers, no 101 head is written."""
        derp, root = make_site()
        http, transport = connect(root)
        client = DERPClientConnection(PrivateKey.generate())
        client.receive_data(f.server_key_frame(derp.public_key))  # learnt from the meta cert
        request = b"GET /derp HTTP/1.1\r\nHost: ctl\r\nUpgrade: DERP\r\nConnection: Upgrade\r\nDerp-Fast-Start: 1\r\n\r\n"
        http.dataReceived(request + client.data_to_send())
        value = transport.value()
        self.assertTrue(value.startswith(f.server_key_frame(derp.public_key)))
        events = client.receive_data(value)
        self.assertEqual(events[-1], ev.ServerInfoReceived({"version": 2}))

    def test_no_upgrade_426(self):
        """A plain GET /derp gets 426 with the explanation."""
        derp, root = make_site()
        http, transport = connect(root)
        http.dataReceived(b"GET /derp HTTP/1.1\r\nHost: ctl\r\n\r\n")
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 426 "))
        self.assertIn(b"DERP requires connection upgrade", transport.value())

    def test_ideal_node_flag(self):
        """An Ideal-Node header marks the connection NotIdeal."""
        derp, root = make_site()
        http, transport = connect(root)
        http.dataReceived(b"GET /derp HTTP/1.1\r\nHost: ctl\r\nUpgrade: derp\r\nIdeal-Node: 999b\r\n\r\n")
        self.assertIn(b"101 Switching", transport.value())
        proto = transport.protocol
        self.assertEqual(proto.present_flags(), f.PeerPresentFlags.NOT_IDEAL)


class SmallEndpointTests(unittest.TestCase):
    """Probe, latency-check, generate_204 and bootstrap-dns."""

    def test_probe(self):
        """GET and HEAD on /derp/probe and /derp/latency-check give 200 with CORS; POST gives 405."""
        _, root = make_site()
        treq = StubTreq(root)
        for path in ("probe", "latency-check"):
            resp = self.successResultOf(treq.get(f"http://ctl/derp/{path}"))
            self.assertEqual(resp.code, 200)
            self.assertEqual(resp.headers.getRawHeaders("access-control-allow-origin"), ["*"])
            self.assertEqual(self.successResultOf(treq.content(resp)), b"")
            self.assertEqual(self.successResultOf(treq.head(f"http://ctl/derp/{path}")).code, 200)
        self.assertEqual(self.successResultOf(treq.post("http://ctl/derp/probe", b"")).code, 405)

    def test_generate_204(self):
        """A valid challenge is echoed; an invalid one is not; cache headers are set."""
        _, root = make_site()
        treq = StubTreq(root)
        resp = self.successResultOf(
            treq.get("http://ctl/generate_204", headers={"X-Tailscale-Challenge": "ts_192.0.2.1"})
        )
        self.assertEqual(resp.code, 204)
        self.assertEqual(resp.headers.getRawHeaders("x-tailscale-response"), ["response ts_192.0.2.1"])
        self.assertIn("no-store", resp.headers.getRawHeaders("cache-control")[0])
        resp = self.successResultOf(
            treq.get("http://ctl/generate_204", headers={"X-Tailscale-Challenge": "bad challenge!"})
        )
        self.assertIsNone(resp.headers.getRawHeaders("x-tailscale-response"))

    def test_bootstrap_dns(self):
        """bootstrap-dns maps every DERP host name to its addresses; failures are left out."""
        derp_map = {"Regions": {999: {"Nodes": [{"HostName": "ctl.example.com"}, {"HostName": "bad.example"}]}}}

        def resolve(name):
            if name == "bad.example":
                return defer.fail(OSError("nxdomain"))
            return defer.succeed(["203.0.113.7"])

        bootstrap = BootstrapDNSResource(lambda: derp_map_hostnames(derp_map), resolve)
        _, root = make_site(bootstrap)
        treq = StubTreq(root)
        resp = self.successResultOf(treq.get("http://ctl/bootstrap-dns?q=ctl.example.com"))
        body = json.loads(self.successResultOf(treq.content(resp)))
        self.assertEqual(body, {"ctl.example.com": ["203.0.113.7"]})
