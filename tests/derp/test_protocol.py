"""Tests for headscale_tw.derp.protocol and headscale_tw.derp.server over fake transports."""

from nacl.public import PrivateKey
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.protocol import Factory
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.test import iosim
from twisted.trial import unittest

from headscale_tw.derp import _client as ev
from headscale_tw.derp import _frames as f
from headscale_tw.derp.server import DERPServer
from headscale_tw.testing.derp_client import DERPClientConnection, RecordingDERPClient


def make_server(**kwargs):
    clock = kwargs.pop("clock", None) or Clock()
    return DERPServer(PrivateKey.generate(), clock, **kwargs), clock


class _Wire:
    """A server protocol on a StringTransport, driven by a sans-IO client."""

    def __init__(self, server, private_key=None, host="192.0.2.7", port=4242):
        self.server = server
        self.transport = StringTransport(peerAddress=IPv4Address("TCP", host, port))
        self.proto = server.build_protocol()
        self.proto.makeConnection(self.transport)
        self.client = DERPClientConnection(private_key or PrivateKey.generate())

    def pump_from_server(self):
        data = self.transport.value()
        self.transport.clear()
        return self.client.receive_data(data)

    def send(self, data=None, one_byte=True):
        data = self.client.data_to_send() if data is None else data
        if one_byte:
            for i in range(len(data)):
                self.proto.dataReceived(data[i : i + 1])
        else:
            self.proto.dataReceived(data)

    def handshake(self):
        events = self.pump_from_server()
        self.send()
        return events + self.pump_from_server()


class HandshakeTests(unittest.TestCase):
    """The server greets, checks ClientInfo and admits or refuses."""

    def test_server_key_first(self):
        """On connect the server writes exactly one ServerKey frame."""
        server, _ = make_server()
        w = _Wire(server)
        self.assertEqual(w.transport.value(), f.server_key_frame(server.public_key))

    def test_handshake_byte_at_a_time(self):
        """ClientInfo fed one byte at a time is answered with a ServerInfo {"version": 2}."""
        server, _ = make_server()
        w = _Wire(server)
        events = w.handshake()
        self.assertEqual(events, [ev.ServerKeyReceived(server.public_key), ev.ServerInfoReceived({"version": 2})])
        self.assertTrue(server.is_connected(w.client.public_key))
        self.assertEqual(server.accepts, 1)

    def test_handshake_timeout(self):
        """A client that never sends ClientInfo is disconnected after 10 s."""
        server, clock = make_server()
        w = _Wire(server)
        clock.advance(9.9)
        self.assertFalse(w.transport.disconnecting)
        clock.advance(0.2)
        self.assertTrue(w.transport.disconnecting)
        w.proto.connectionLost(None)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_first_frame_not_client_info(self):
        """Any frame other than ClientInfo first closes the connection."""
        server, _ = make_server()
        w = _Wire(server)
        w.send(f.keep_alive_frame())
        self.assertTrue(w.transport.disconnecting)
        self.assertIn("expected ClientInfo", w.proto.close_reason)

    def test_refuses_unknown_key(self):
        """verify_client returning False refuses with a Health frame naming the key, and closes."""
        asked = []

        def verify(key):
            asked.append(key)
            return False

        server, _ = make_server(verify_client=verify)
        w = _Wire(server)
        events = w.handshake()
        key_text = "nodekey:" + w.client.public_key.hex()
        self.assertEqual(asked, [key_text])
        self.assertIsInstance(events[-1], ev.HealthReceived)
        self.assertIn(key_text, events[-1].problem)
        self.assertIn("not known", events[-1].problem)
        self.assertTrue(w.transport.disconnecting)
        self.assertFalse(server.is_connected(w.client.public_key))
        self.assertEqual(server.clients_refused, 1)

    def test_verify_deferred_buffers_frames(self):
        """While an asynchronous check runs, frames are held and handled after admission."""
        pending = defer.Deferred()
        server, _ = make_server(verify_client=lambda key: pending)
        w = _Wire(server)
        w.pump_from_server()
        w.client.note_preferred(True)
        w.client.ping(b"abcdefgh")
        w.send()
        self.assertEqual(w.pump_from_server(), [])
        self.assertFalse(w.proto.preferred)
        pending.callback(True)
        events = w.pump_from_server()
        self.assertEqual(events, [ev.ServerInfoReceived({"version": 2}), ev.PongReceived(b"abcdefgh")])
        self.assertTrue(w.proto.preferred)
        self.assertEqual(server.home_clients, 1)

    def test_verify_error_refuses(self):
        """A failing verify_client refuses the client and logs the error."""
        server, _ = make_server(verify_client=lambda key: 1 / 0)
        w = _Wire(server)
        w.handshake()
        self.assertTrue(w.transport.disconnecting)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

    def test_pending_verify_cancelled_on_lost(self):
        """Losing the connection during verification cancels the check and every timer."""
        pending = defer.Deferred()
        server, clock = make_server(verify_client=lambda key: pending)
        w = _Wire(server)
        w.handshake()
        w.proto.connectionLost(None)
        self.assertTrue(pending.called)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_bad_client_info(self):
        """A ClientInfo that does not decrypt closes the connection."""
        server, _ = make_server()
        w = _Wire(server)
        w.send(f.encode_frame(f.FrameType.CLIENT_INFO, b"\x00" * 100))
        self.assertTrue(w.transport.disconnecting)
        self.assertIn("does not decrypt", w.proto.close_reason)


class ConnectedTests(unittest.TestCase):
    """Frames after the handshake."""

    def setUp(self):
        self.server, self.clock = make_server()
        self.a = _Wire(self.server)
        self.b = _Wire(self.server)
        self.a.handshake()
        self.b.handshake()

    def test_relay(self):
        """A SendPacket to a connected key arrives as RecvPacket with the sender's key."""
        self.a.client.send_packet(self.b.client.public_key, b"hello")
        self.a.send()
        self.assertEqual(self.b.pump_from_server(), [ev.PacketReceived(self.a.client.public_key, b"hello")])
        self.assertEqual(self.server.packets_received, 1)
        self.assertEqual(self.server.packets_sent, 1)

    def test_ping_pong(self):
        """A Ping is answered with a Pong carrying the same 8 bytes."""
        self.a.client.ping(b"12345678")
        self.a.send()
        self.assertEqual(self.a.pump_from_server(), [ev.PongReceived(b"12345678")])

    def test_peer_gone_after_disconnect(self):
        """When a sender leaves, those it sent to get PeerGone(Disconnected)."""
        self.a.client.send_packet(self.b.client.public_key, b"x")
        self.a.send()
        self.b.pump_from_server()
        self.a.proto.connectionLost(None)
        self.assertEqual(self.b.pump_from_server(), [ev.PeerGone(self.a.client.public_key, 0)])

    def test_unknown_destination_disco_gets_not_here(self):
        """A disco packet to an absent key gets PeerGone(NotHere), rate-limited to a burst of 3."""
        missing = b"\x55" * 32
        disco = f.DISCO_MAGIC + b"\x00" * 60
        for _ in range(5):
            self.a.client.send_packet(missing, disco)
        self.a.send()
        self.assertEqual(self.a.pump_from_server(), [ev.PeerGone(missing, 1)] * 3)
        self.clock.advance(1)
        self.a.client.send_packet(missing, disco)
        self.a.send()
        self.assertEqual(self.a.pump_from_server(), [ev.PeerGone(missing, 1)])
        self.assertEqual(self.server.packets_dropped_unknown_dest, 6)

    def test_unknown_destination_plain_dropped(self):
        """A non-disco packet to an absent key is dropped silently and counted."""
        self.a.client.send_packet(b"\x55" * 32, b"data")
        self.a.send()
        self.assertEqual(self.a.pump_from_server(), [])
        self.assertEqual(self.server.packets_dropped_unknown_dest, 1)

    def test_keepalive(self):
        """A KeepAlive is sent after 60 s plus up to 5 s of jitter, repeatedly."""
        self.clock.advance(59.9)
        self.assertEqual(self.a.pump_from_server(), [])
        self.clock.advance(5.2)
        self.assertEqual(self.a.pump_from_server(), [ev.KeepAliveReceived()])
        self.clock.advance(65.1)
        self.assertEqual(self.a.pump_from_server(), [ev.KeepAliveReceived()])

    def test_keepalive_cancelled_on_connection_lost(self):
        """connectionLost cancels the keep-alive timer (no delayed calls remain)."""
        self.a.proto.connectionLost(None)
        self.b.proto.connectionLost(None)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_garbage_closes_only_that_connection(self):
        """An oversized frame closes its own connection; the other client keeps relaying."""
        self.a.send(b"\x04\xff\xff\xff\xff", one_byte=False)
        self.assertTrue(self.a.transport.disconnecting)
        self.assertIn("limit", self.a.proto.close_reason)
        self.assertFalse(self.server.is_connected(self.a.client.public_key))
        self.assertFalse(self.b.transport.disconnecting)
        c = _Wire(self.server)
        c.handshake()
        c.client.send_packet(self.b.client.public_key, b"still")
        c.send()
        self.assertEqual(self.b.pump_from_server(), [ev.PacketReceived(c.client.public_key, b"still")])

    def test_note_preferred_wrong_length(self):
        """A NotePreferred that is not exactly one byte closes the connection."""
        self.a.send(f.encode_frame(f.FrameType.NOTE_PREFERRED, b""))
        self.assertTrue(self.a.transport.disconnecting)

    def test_mesh_frames_need_mesh_key(self):
        """WatchConns from an ordinary client closes it for insufficient permissions."""
        self.a.send(f.watch_conns_frame())
        self.assertTrue(self.a.transport.disconnecting)
        self.assertIn("insufficient permissions", self.a.proto.close_reason)

    def test_unknown_frame_skipped(self):
        """An unknown frame type is skipped and the connection stays up."""
        self.a.send(f.encode_frame(0x7E, b"whatever"))
        self.a.client.ping(b"abcdefgh")
        self.a.send()
        self.assertEqual(self.a.pump_from_server(), [ev.PongReceived(b"abcdefgh")])

    def test_bounded_queue_drops_oldest(self):
        """While the receiver's transport is backed up, at most queue_size packets wait; older ones drop."""
        self.b.proto.pauseProducing()
        for i in range(40):
            self.a.client.send_packet(self.b.client.public_key, b"%d" % i)
        self.a.send(one_byte=False)
        self.assertEqual(self.b.proto.queued, 32)
        self.assertEqual(self.b.proto.packets_dropped, 8)
        self.assertEqual(self.server.packets_dropped_queue_full, 8)
        self.b.proto.resumeProducing()
        got = [e.data for e in self.b.pump_from_server()]
        self.assertEqual(got, [b"%d" % i for i in range(8, 40)])

    def test_slow_reader_closed_after_write_timeout(self):
        """A client whose transport stays backed up for 2 s is disconnected."""
        self.b.proto.pauseProducing()
        self.clock.advance(2.1)
        self.assertTrue(self.b.transport.disconnecting)
        self.assertIn("did not read", self.b.proto.close_reason)

    def test_duplicate_connection_latest_wins(self):
        """With two connections for one key the newest receives; the older one becomes active when it speaks."""
        key = PrivateKey.generate()
        first = _Wire(self.server, key)
        first.handshake()
        second = _Wire(self.server, key)
        second.handshake()
        self.a.client.send_packet(second.client.public_key, b"1")
        self.a.send()
        self.assertEqual(first.pump_from_server(), [])
        self.assertEqual(len(second.pump_from_server()), 1)
        first.client.send_packet(self.a.client.public_key, b"hi")
        first.send()
        self.a.client.send_packet(second.client.public_key, b"2")
        self.a.send()
        self.assertEqual(first.pump_from_server(), [ev.PacketReceived(self.a.client.public_key, b"2")])
        second.proto.connectionLost(None)
        self.assertTrue(self.server.is_connected(key.public_key.encode()))


def _connect(server, clock, client):
    proto = server.build_protocol()
    return iosim.connectedServerAndClient(lambda: proto, lambda: client, greet=False, clock=clock)


class RelayOverIOSimTests(unittest.TestCase):
    """Client pairs relay through the server with iosim."""

    def test_pairs(self):
        """Two pairs of clients exchange packets both ways through one server."""
        server, clock = make_server()
        clients = [RecordingDERPClient() for _ in range(4)]
        pumps = []
        for c in clients:
            _s, _c, pump = _connect(server, clock, c)
            pumps.append(pump)
        for p in pumps:
            p.flush()
        for c in clients:
            self.assertEqual(self.successResultOf(c.ready), {"version": 2})
        for a, b in [(0, 1), (1, 0), (2, 3), (3, 2)]:
            for i in range(3):
                clients[a].send_packet(clients[b].public_key, b"%d->%d #%d" % (a, b, i))
        for _ in range(2):
            for p in pumps:
                p.flush()
        for a, b in [(0, 1), (1, 0), (2, 3), (3, 2)]:
            self.assertEqual(
                clients[b].packets, [(clients[a].public_key, b"%d->%d #%d" % (a, b, i)) for i in range(3)]
            )
        self.assertEqual(server.client_count, 4)


class TLSCloseTests(unittest.TestCase):
    """Server-side closes over TLS complete at once (the real server's listener is TLS)."""

    def _connect_tls(self, server, clock, client):
        import twisted.test
        from twisted.internet import ssl
        from twisted.protocols.tls import TLSMemoryBIOFactory
        from twisted.python.filepath import FilePath

        pem = FilePath(twisted.test.__file__).sibling("server.pem").getContent()
        server_options = ssl.PrivateCertificate.loadPEM(pem).options()
        client_options = ssl.CertificateOptions()  # no verification: only the close matters here

        class _One(Factory):
            def __init__(self, proto):
                self.proto = proto

            def buildProtocol(self, addr):
                return self.proto

        server_factory = TLSMemoryBIOFactory(server_options, False, _One(server.build_protocol()), clock)
        client_factory = TLSMemoryBIOFactory(client_options, True, _One(client), clock)
        return iosim.connectedServerAndClient(
            lambda: server_factory.buildProtocol(None), lambda: client_factory.buildProtocol(None),
            greet=False, clock=clock)

    def test_refusal_closes_without_waiting_for_abort(self):
        """A refused client over TLS is disconnected right away, not by the 5 s abort timer.

        TLS only starts its shutdown once no producer is registered, so the
        server protocol must unregister itself before losing the connection.
        """
        server, clock = make_server(verify_client=lambda key: False)
        client = RecordingDERPClient()
        _s, _c, pump = self._connect_tls(server, clock, client)
        pump.flush()
        self.assertIsInstance(client.events[-1], ev.HealthReceived)
        self.assertTrue(client.lost.called)
        self.assertEqual(server.clients_refused, 1)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_protocol_error_closes_at_once(self):
        """An admitted client that sends a mesh-only frame is disconnected right away over TLS."""
        server, clock = make_server()
        client = RecordingDERPClient()
        _s, _c, pump = self._connect_tls(server, clock, client)
        pump.flush()
        self.successResultOf(client.ready)
        client.conn.watch_conns()
        client.flush()
        pump.flush()
        self.assertTrue(client.lost.called)
        self.assertEqual(server.client_count, 0)
        self.assertEqual(clock.getDelayedCalls(), [])
