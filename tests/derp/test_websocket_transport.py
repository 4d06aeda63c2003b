"""Tests for DERP over WebSocket: headscale_tw.derp.websocket and the /derp handshake."""

import random

from nacl.public import PrivateKey
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.test import iosim
from twisted.trial import unittest
from twisted.web import server as web_server
from twisted.web.resource import Resource

from headscale_tw.derp import _client as ev
from headscale_tw.derp import _frames as f
from headscale_tw.derp import _websocket as ws
from headscale_tw.derp.resource import mount_derp_resources
from headscale_tw.derp.server import DERPServer
from headscale_tw.metrics import make_registry
from headscale_tw.testing.derp_client import DERPClientConnection, RecordingDERPClient
from headscale_tw.testing.ws_derp_client import WebSocketDERPClient, websocket_request

RFC_KEY = b"dGhlIHNhbXBsZSBub25jZQ=="


def make_site(**kwargs):
    clock = Clock()
    derp = DERPServer(PrivateKey.generate(), clock, **kwargs)
    root = Resource()
    mount_derp_resources(root, derp)
    return derp, root, clock


def connect(root, clock):
    site = web_server.Site(root, reactor=clock)
    http = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1234))
    transport = StringTransport(peerAddress=IPv4Address("TCP", "192.0.2.9", 5555))
    http.makeConnection(transport)
    return http, transport


class _WireClient:
    """A hand-driven WebSocket DERP client over a StringTransport."""

    def __init__(self, root, clock, key=RFC_KEY, extra=""):
        self.http, self.transport = connect(root, clock)
        self.ws = ws.WebSocketConnection(client=True, mask_source=random.Random(7).randbytes)
        self.derp = DERPClientConnection(PrivateKey.generate())
        self.http.dataReceived(websocket_request("ctl", "/derp", key, extra=extra))
        self.head = b""
        value = self.transport.value()
        if value.startswith(b"HTTP/1.1 101 "):
            self.head, _, rest = value.partition(b"\r\n\r\n")
            self.transport.clear()
            self.pending = rest
        else:
            self.head = value
            self.pending = b""

    @property
    def protocol(self):
        return self.transport.protocol

    def ws_events(self):
        data, self.pending = self.pending + self.transport.value(), b""
        self.transport.clear()
        return self.ws.receive_data(data)

    def derp_events(self):
        out = []
        for e in self.ws_events():
            if isinstance(e, ws.BinaryData):
                out += self.derp.receive_data(e.data)
        return out

    def send(self, raw: bytes):
        self.protocol.dataReceived(raw)

    def send_derp(self, split=None):
        data = self.derp.data_to_send()
        if split is None:
            self.send(self.ws.send_binary(data))
        else:
            for i in range(0, len(data), split):
                self.send(self.ws.send_binary(data[i : i + split]))

    def handshake(self):
        self.derp_events()
        self.send_derp()
        return self.derp_events()


class HandshakeTests(unittest.TestCase):
    """GET /derp with Upgrade: websocket."""

    def test_101_then_server_key_in_a_binary_message(self):
        """The 101 carries the RFC accept value and subprotocol derp; ServerKey follows as one binary message."""
        derp, root, clock = make_site()
        c = _WireClient(root, clock)
        self.assertTrue(c.head.startswith(b"HTTP/1.1 101 Switching Protocols\r\n"))
        self.assertIn(b"\r\nUpgrade: websocket", c.head)
        self.assertIn(b"\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=", c.head)
        self.assertIn(b"\r\nSec-WebSocket-Protocol: derp", c.head)
        self.assertEqual(c.ws_events(), [ws.BinaryData(f.server_key_frame(derp.public_key), True)])
        self.assertEqual(derp.websocket_accepts, 1)

    def test_handshake_over_one_byte_messages(self):
        """ClientInfo split into one-byte binary messages still completes the DERP handshake."""
        derp, root, clock = make_site()
        c = _WireClient(root, clock)
        c.derp_events()
        c.send_derp(split=1)
        self.assertEqual(c.derp_events(), [ev.ServerInfoReceived({"version": 2})])
        self.assertTrue(derp.is_connected(c.derp.public_key))

    def test_bad_handshake_400(self):
        """A malformed key gets 400 naming the problem and no upgrade."""
        derp, root, clock = make_site()
        c = _WireClient(root, clock, key=b"AAAA")
        self.assertTrue(c.head.startswith(b"HTTP/1.1 400 "))
        self.assertIn(b"bad WebSocket handshake: Sec-WebSocket-Key must encode 16 bytes", c.head)
        self.assertEqual(derp.websocket_accepts, 0)

    def test_wrong_version_426(self):
        """A WebSocket version other than 13 gets 426 with Sec-WebSocket-Version: 13."""
        derp, root, clock = make_site()
        http, transport = connect(root, clock)
        request = websocket_request("ctl", "/derp", RFC_KEY).replace(b"Version: 13", b"Version: 8")
        http.dataReceived(request)
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 426 "))
        self.assertIn(b"Sec-Websocket-Version: 13", transport.value())

    def test_websocket_without_derp_is_plain_derp(self):
        """``Upgrade: websocket`` without the derp subprotocol still gets raw DERP (derper's rule)."""
        derp, root, clock = make_site()
        http, transport = connect(root, clock)
        http.dataReceived(b"GET /derp HTTP/1.1\r\nHost: ctl\r\nUpgrade: WebSocket\r\nConnection: Upgrade\r\n\r\n")
        head, _, rest = transport.value().partition(b"\r\n\r\n")
        self.assertIn(b"Upgrade: DERP", head)
        self.assertEqual(rest, f.server_key_frame(derp.public_key))
        self.assertEqual(derp.websocket_accepts, 0)


class StreamTests(unittest.TestCase):
    """The adapter's control frames, closing handshake and failures."""

    def setUp(self):
        self.derp, self.root, self.clock = make_site()
        self.c = _WireClient(self.root, self.clock)
        self.assertEqual(self.c.handshake(), [ev.ServerInfoReceived({"version": 2})])

    def test_ping_pong(self):
        """A ping is answered with a pong echoing its payload."""
        self.c.send(self.c.ws.send_ping(b"hi"))
        self.assertEqual(self.c.ws_events(), [ws.Pong(b"hi")])

    def test_several_derp_frames_in_one_message(self):
        """Two DERP pings coalesced in one binary message both get pongs."""
        self.c.send(self.c.ws.send_binary(f.ping_frame(b"12345678") + f.ping_frame(b"abcdefgh")))
        self.assertEqual(
            self.c.derp_events(), [ev.PongReceived(b"12345678"), ev.PongReceived(b"abcdefgh")]
        )

    def test_client_close(self):
        """The client's close is echoed, TCP is dropped and the DERP client is unregistered once lost."""
        self.c.send(self.c.ws.send_close(1001, "bye"))
        self.assertEqual(self.c.ws_events(), [ws.CloseReceived(1001, "")])
        self.assertTrue(self.c.transport.disconnecting)
        self.c.protocol.connectionLost(None)
        self.assertFalse(self.derp.is_connected(self.c.derp.public_key))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_server_close_waits_for_client_close(self):
        """A server-side close sends Close 1000 and drops TCP when the client answers."""
        self.derp.close_peer(self.c.derp.public_key)
        events = self.c.ws_events()
        self.assertEqual(events[-1], ws.CloseReceived(1000, ""))
        self.assertFalse(self.c.transport.disconnecting)
        self.c.send(self.c.ws.send_close(1000))
        self.assertTrue(self.c.transport.disconnecting)
        self.c.protocol.connectionLost(None)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_server_close_timeout(self):
        """If the client never answers the Close, TCP is dropped after the close timeout."""
        self.derp.close_peer(self.c.derp.public_key)
        self.c.ws_events()
        self.clock.advance(1.9)
        self.assertFalse(self.c.transport.disconnecting)
        self.clock.advance(0.2)
        self.assertTrue(self.c.transport.disconnecting)
        self.c.protocol.connectionLost(None)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_timers_cancelled_on_connection_lost(self):
        """Losing the connection mid closing handshake cancels every timer."""
        self.derp.close_peer(self.c.derp.public_key)
        self.assertNotEqual(self.clock.getDelayedCalls(), [])
        self.c.protocol.connectionLost(None)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_unmasked_frame_fails_only_that_connection(self):
        """An unmasked frame closes that connection with 1002 and counts; another client is unaffected."""
        other = _WireClient(self.root, self.clock)
        other.handshake()
        self.c.send(ws.encode_frame(ws.Opcode.BINARY, b"x"))
        events = self.c.ws_events()
        self.assertEqual(events[-1].code, 1002)
        self.assertIn("client frames must be masked", events[-1].reason)
        self.assertTrue(self.c.transport.disconnecting)
        self.assertEqual(self.derp.websocket_protocol_errors, 1)
        self.c.protocol.connectionLost(None)
        other.send(other.ws.send_ping(b"ok"))
        self.assertEqual(other.ws_events(), [ws.Pong(b"ok")])

    def test_text_message_1003(self):
        """A text message closes the connection with 1003."""
        self.c.send(self.c.ws.send_text("hello"))
        events = self.c.ws_events()
        self.assertEqual(events[-1].code, 1003)
        self.assertTrue(self.c.transport.disconnecting)

    def test_refused_client_gets_health_then_close(self):
        """A refused node key gets the Health frame in a binary message, then Close 1000."""
        derp, root, clock = make_site(verify_client=lambda key: False)
        c = _WireClient(root, clock)
        events = c.handshake()
        self.assertIsInstance(events[0], ev.HealthReceived)
        self.assertIn("refused", events[0].problem)
        c.send(c.ws.send_close(1000))
        self.assertTrue(c.transport.disconnecting)
        c.protocol.connectionLost(None)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_metrics(self):
        """The WebSocket counters are exported."""
        registry = make_registry(derp=self.derp, process=False)
        self.assertEqual(registry.get_sample_value("headscale_derp_websocket_accepts_total"), 1.0)
        self.assertEqual(registry.get_sample_value("headscale_derp_websocket_protocol_errors_total"), 0.0)


class RelayOverIOSimTests(unittest.TestCase):
    """A WebSocket DERP client and a plain DERP client relay through one server."""

    def test_websocket_to_plain_and_back(self):
        """Packets flow both ways between a WebSocket client and an ``Upgrade: DERP`` client."""
        derp, root, clock = make_site()
        site = web_server.Site(root, reactor=clock)
        wsc = WebSocketDERPClient(clock, mask_source=random.Random(3).randbytes)
        plain = RecordingDERPClient(upgrade_host="ctl")
        pumps = []
        for client in (wsc, plain):
            _s, _c, pump = iosim.connectedServerAndClient(
                lambda: site.buildProtocol(None), lambda c=client: c, greet=False, clock=clock
            )
            pumps.append(pump)
        for p in pumps:
            p.flush()
        headers = self.successResultOf(wsc.upgraded)
        self.assertEqual(headers[b"sec-websocket-protocol"], b"derp")
        self.assertEqual(self.successResultOf(wsc.derp.ready), {"version": 2})
        self.assertEqual(self.successResultOf(plain.ready), {"version": 2})
        big = random.Random(5).randbytes(60000)
        wsc.derp.send_packet(plain.public_key, b"over websocket")
        wsc.derp.send_packet(plain.public_key, big)
        plain.send_packet(wsc.derp.public_key, b"plain reply")
        for _ in range(2):
            for p in pumps:
                p.flush()
        self.assertEqual(plain.packets, [(wsc.derp.public_key, b"over websocket"), (wsc.derp.public_key, big)])
        self.assertEqual(wsc.derp.packets, [(plain.public_key, b"plain reply")])
        self.assertEqual(derp.websocket_accepts, 1)
        self.assertEqual(derp.client_count, 2)
        # The client closes: the closing handshake completes and both sides see the loss.
        wsc.derp.transport.loseConnection()
        for _ in range(3):
            for p in pumps:
                p.flush()
        self.successResultOf(wsc.derp.lost)
        self.assertEqual(derp.client_count, 1)
        self.assertEqual(wsc.stream.close_code, 1000)
        plain.transport.loseConnection()
        for p in pumps:
            p.flush()
        self.assertEqual(derp.client_count, 0)
        self.assertEqual(clock.getDelayedCalls(), [])


class TLSTests(unittest.TestCase):
    """DERP over WebSocket over TLS, as behind the real listener."""

    def test_refusal_over_tls_completes_closing_handshake(self):
        """A refused WebSocket client over TLS gets Health and Close and both sides close, no timer left."""
        import twisted.test
        from twisted.internet import ssl
        from twisted.internet.protocol import Factory
        from twisted.protocols.tls import TLSMemoryBIOFactory
        from twisted.python.filepath import FilePath

        derp, root, clock = make_site(verify_client=lambda key: False)
        site = web_server.Site(root, reactor=clock)
        pem = FilePath(twisted.test.__file__).sibling("server.pem").getContent()
        server_factory = TLSMemoryBIOFactory(ssl.PrivateCertificate.loadPEM(pem).options(), False, site, clock)
        wsc = WebSocketDERPClient(clock, mask_source=random.Random(9).randbytes)
        client_factory = TLSMemoryBIOFactory(
            ssl.CertificateOptions(), True, Factory.forProtocol(lambda: wsc), clock
        )
        _s, _c, pump = iosim.connectedServerAndClient(
            lambda: server_factory.buildProtocol(None), lambda: client_factory.buildProtocol(None),
            greet=False, clock=clock,
        )
        pump.flush()
        self.successResultOf(wsc.upgraded)
        self.assertIsInstance(wsc.derp.events[-1], ev.HealthReceived)
        self.successResultOf(wsc.derp.lost)
        self.assertEqual(wsc.stream.close_code, 1000)
        self.assertEqual(derp.clients_refused, 1)
        self.assertEqual(clock.getDelayedCalls(), [])
