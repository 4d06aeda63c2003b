"""Tests for headscale_tw.noise.protocol and .resource, driven by the fake client over iosim."""

import base64
import json
import struct

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.test.iosim import connectedServerAndClient
from twisted.trial import unittest
from twisted.web import resource
from twisted.web.server import Site

from headscale_tw.keys import MachinePrivate
from headscale_tw.noise._codec import (
    EARLY_PAYLOAD_MAGIC,
    NoiseInitiator,
    RecordDecoder,
    ServerError,
)
from headscale_tw.noise.protocol import NoiseAddress, NoiseProtocol, noise_peer
from headscale_tw.noise.resource import Ts2021Resource
from headscale_tw.testing.noise_client import KeyClient, NoiseClient, UpgradeFailed
from headscale_tw.web.key import KeyResource


class _Echo(resource.Resource):
    """Answers with what the request knows about its Noise peer."""

    isLeaf = True

    def render(self, request):
        peer = noise_peer(request)
        if request.postpath == [b"big"]:
            return b"x" * 50000
        body = request.content.read()
        return json.dumps(
            {
                "machine_key": peer.machine_key.text if peer else None,
                "version": peer.version if peer else None,
                "path": request.path.decode(),
                "body": body.decode(),
                "method": request.method.decode(),
            }
        ).encode()


class _Server:
    """A site with /key, /ts2021 and an echo API under /machine, on a Clock."""

    def __init__(self, **options):
        self.clock = Clock()
        root = resource.Resource()
        self.site = Site(root, reactor=self.clock)
        self.key = MachinePrivate.generate()
        self.ts2021 = Ts2021Resource(self.key, self.site, self.clock, **options)
        root.putChild(b"ts2021", self.ts2021)
        root.putChild(b"key", KeyResource(self.key.public()))
        root.putChild(b"machine", _Echo())

    def connect(self, client):
        """Connect ``client`` to a fresh server connection; return the pump."""
        address = IPv4Address("TCP", "192.0.2.7", 41641)
        _, server_protocol, pump = connectedServerAndClient(
            lambda: self.site.buildProtocol(address), lambda: client, clock=self.clock
        )
        return pump

    def noise_client(self, **kwargs):
        client = NoiseClient(self.key.public(), **kwargs)
        pump = self.connect(client)
        pump.flush()
        return client, pump


class EndToEndTests(unittest.TestCase):
    """/key, then /ts2021, then HTTP/2 inside Noise."""

    def test_key_then_upgrade_then_request(self):
        """The fake client fetches /key, upgrades, and an inner request sees its machine key and version."""
        server = _Server()
        key_client = KeyClient(version=133)
        server.connect(key_client).flush()
        server_public = self.successResultOf(key_client.result)
        self.assertEqual(server_public, server.key.public())

        client = NoiseClient(server_public, version=133)
        pump = server.connect(client)
        pump.flush()
        self.assertIs(self.successResultOf(client.ready), client)
        self.assertTrue(client.early["nodeKeyChallenge"].startswith("chalpub:"))

        d = client.request(b"POST", b"/machine/echo", b'{"hello":1}')
        pump.flush()
        response = self.successResultOf(d)
        self.assertEqual(response.status, 200)
        answer = json.loads(response.body)
        self.assertEqual(answer["machine_key"], client.machine_key.public().text)
        self.assertEqual(answer["version"], 133)
        self.assertEqual(answer["body"], '{"hello":1}')

    def test_get_upgrade(self):
        """The upgrade is accepted with GET too."""
        server = _Server()
        client, pump = server.noise_client(method=b"GET")
        self.successResultOf(client.ready)

    def test_concurrent_streams_and_large_bodies(self):
        """Streams are multiplexed: a 50000-byte response spans many records and a 100000-byte body waits for window updates."""
        server = _Server()
        client, pump = server.noise_client()
        d1 = client.request(b"GET", b"/machine/big")
        d2 = client.request(b"POST", b"/machine/echo", b"y" * 100000)
        pump.flush()
        self.assertEqual(self.successResultOf(d1).body, b"x" * 50000)
        self.assertEqual(json.loads(self.successResultOf(d2).body)["body"], "y" * 100000)

    def test_peer_address(self):
        """Inside Noise getClientAddress() is a NoiseAddress wrapping the TCP peer."""
        server = _Server()
        client, pump = server.noise_client()
        (protocol,) = server.ts2021.factory.connections
        self.assertIsInstance(protocol.getPeer(), NoiseAddress)
        self.assertEqual(protocol.peer.machine_key, client.machine_key.public())

    def test_plain_request_has_no_peer(self):
        """A plain HTTP request outside Noise has no Noise peer."""
        server = _Server()
        transport = StringTransport()
        http = server.site.buildProtocol(IPv4Address("TCP", "192.0.2.7", 1))
        http.makeConnection(transport)
        http.dataReceived(b"GET /machine/x HTTP/1.1\r\nHost: a\r\n\r\n")
        self.assertIn(b'"machine_key": null', transport.value())

    def test_close_cleans_up(self):
        """When the client leaves, the connection is forgotten and no timer is left behind."""
        server = _Server()
        client, pump = server.noise_client()
        self.assertEqual(len(server.ts2021.factory.connections), 1)
        client.close()
        pump.flush()
        self.assertEqual(server.ts2021.factory.connections, set())
        self.assertEqual(server.clock.getDelayedCalls(), [])


class WireTests(unittest.TestCase):
    """Exact bytes the server writes after the upgrade."""

    def test_bytes_after_upgrade(self):
        """101 head, 51-byte response, one 123-byte early-payload record, then HTTP/2 SETTINGS."""
        server = _Server()
        initiator = NoiseInitiator(MachinePrivate.generate().raw, server.key.public().raw, 133)
        header = base64.b64encode(initiator.initiation())
        transport = StringTransport()
        http = server.site.buildProtocol(IPv4Address("TCP", "192.0.2.7", 1))
        http.makeConnection(transport)
        http.dataReceived(
            b"POST /ts2021 HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nConnection: upgrade\r\n"
            b"Upgrade: Tailscale-Control-Protocol\r\nX-Tailscale-Handshake: " + header + b"\r\n\r\n"
        )
        out = transport.value()
        head = (
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: tailscale-control-protocol\r\n"
            b"Connection: upgrade\r\n\r\n"
        )
        self.assertTrue(out.startswith(head))
        out = out[len(head) :]
        self.assertEqual(out[:3], b"\x02\x00\x30")
        ciphers = initiator.finish(out[:51])
        out = out[51:]
        self.assertEqual(out[:3], b"\x04\x00\x78")  # 104 + 16
        decoder = RecordDecoder(ciphers.receive)
        (early,) = decoder.feed(out[:123])
        self.assertEqual(early[:9], EARLY_PAYLOAD_MAGIC + struct.pack(">I", 95))
        (settings,) = decoder.feed(out[123:])
        self.assertEqual(settings[3], 0x04)  # HTTP/2 frame type SETTINGS
        self.assertIsInstance(transport.protocol, NoiseProtocol)
        server.clock.advance(0)  # H2Connection's first send-loop turn
        transport.protocol.connectionLost(None)
        self.assertEqual(server.clock.getDelayedCalls(), [])

    def test_no_early_payload_when_disabled(self):
        """With early_payload=False the first plaintext is the HTTP/2 SETTINGS frame."""
        server = _Server(early_payload=False)
        client, pump = server.noise_client()
        self.successResultOf(client.ready)
        self.assertIsNone(client.early)


class UpgradeValidationTests(unittest.TestCase):
    """Bad upgrade requests get 400 with a clear text."""

    def _post(self, headers):
        server = _Server()
        transport = StringTransport()
        http = server.site.buildProtocol(IPv4Address("TCP", "192.0.2.7", 1))
        http.makeConnection(transport)
        http.dataReceived(b"POST /ts2021 HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n" + headers + b"\r\n")
        return transport.value()

    def test_refusals(self):
        """Missing/unknown/websocket Upgrade, missing, non-base64 and wrong-size handshakes are 400."""
        good = base64.b64encode(bytes(101))
        cases = [
            (b"X-Tailscale-Handshake: " + good + b"\r\n", b"missing next protocol"),
            (b"Upgrade: h2c\r\nX-Tailscale-Handshake: " + good + b"\r\n", b"unknown next protocol"),
            (b"Upgrade: websocket\r\nX-Tailscale-Handshake: " + good + b"\r\n", b"WebSocket"),
            (b"Upgrade: tailscale-control-protocol\r\n", b"missing Tailscale handshake header"),
            (b"Upgrade: tailscale-control-protocol\r\nX-Tailscale-Handshake: !!!\r\n", b"not base64"),
            (
                b"Upgrade: tailscale-control-protocol\r\nX-Tailscale-Handshake: "
                + base64.b64encode(bytes(100))
                + b"\r\n",
                b"100 bytes, want 101",
            ),
        ]
        for headers, text in cases:
            out = self._post(headers)
            self.assertTrue(out.startswith(b"HTTP/1.1 400 "), out)
            self.assertIn(text, out)

    def test_wrong_type_gets_error_frame(self):
        """A 101-byte initiation of the wrong type gets 101 plus an error frame, then the connection closes."""
        message = b"\x00\x85\x02\x00\x60" + bytes(96)
        out = self._post(
            b"Upgrade: tailscale-control-protocol\r\nX-Tailscale-Handshake: "
            + base64.b64encode(message)
            + b"\r\n"
        )
        self.assertTrue(out.startswith(b"HTTP/1.1 101 "))
        text = b"unexpected handshake message type"
        self.assertTrue(out.endswith(b"\r\n\r\n\x03" + struct.pack(">H", len(text)) + text))

    def test_wrong_server_key(self):
        """A client holding the wrong server key sees a server error and the connection closes."""
        server = _Server()
        client = NoiseClient(MachinePrivate.generate().public())
        server.connect(client).flush()
        failure = self.failureResultOf(client.ready, ServerError)
        self.assertIn("authentication", str(failure.value))
        self.successResultOf(client.closed)

    def test_key_client_sees_400(self):
        """The fake client reports a 400 as UpgradeFailed with the body."""
        server = _Server()
        client = NoiseClient(server.key.public(), version=133)
        client._initiator.initiation = lambda: bytes(50)
        pump = server.connect(client)
        pump.flush()
        failure = self.failureResultOf(client.ready, UpgradeFailed)
        self.assertEqual(failure.value.status, 400)


class MinimumVersionTests(unittest.TestCase):
    """Clients below the minimum version are refused in a way `tailscale up` prints."""

    def test_old_client_refused(self):
        """Version 100 completes the handshake; register answers RegisterResponse.Error, other paths 403."""
        server = _Server()
        client, pump = server.noise_client(version=100)
        self.successResultOf(client.ready)
        d1 = client.request(b"POST", b"/machine/register", b"{}")
        d2 = client.request(b"POST", b"/machine/map", b"{}")
        pump.flush()
        r1 = self.successResultOf(d1)
        self.assertEqual(r1.status, 200)
        error = json.loads(r1.body)["Error"]
        self.assertIn("capability version 100", error)
        self.assertIn("minimum 106", error)
        r2 = self.successResultOf(d2)
        self.assertEqual(r2.status, 403)
        self.assertIn(b"capability version 100", r2.body)

    def test_tailscale_1_78_accepted(self):
        """Capability version 109 (tailscale 1.78.1) reaches the real API with the default minimum."""
        server = _Server()
        client, pump = server.noise_client(version=109)
        d = client.request(b"POST", b"/machine/register", b"{}")
        pump.flush()
        self.assertEqual(json.loads(self.successResultOf(d).body)["version"], 109)

    def test_configurable_minimum(self):
        """A server configured with Headscale's minimum 113 refuses 109."""
        server = _Server(min_version=113)
        client, pump = server.noise_client(version=109)
        d = client.request(b"POST", b"/machine/register", b"{}")
        pump.flush()
        self.assertIn("minimum 113", json.loads(self.successResultOf(d).body)["Error"])


class BadTrafficTests(unittest.TestCase):
    """Malformed records close that connection only."""

    def _check_closes(self, garbage):
        server = _Server()
        bad, bad_pump = server.noise_client()
        good, good_pump = server.noise_client()
        self.assertEqual(len(server.ts2021.factory.connections), 2)
        bad.send_raw(garbage)
        bad_pump.flush()
        self.successResultOf(bad.closed)
        self.assertEqual(len(server.ts2021.factory.connections), 1)
        d = good.request(b"POST", b"/machine/echo", b"still here")
        good_pump.flush()
        self.assertEqual(json.loads(self.successResultOf(d).body)["body"], "still here")

    def test_oversized_frame(self):
        """A record header announcing more than 4096 bytes closes the connection."""
        self._check_closes(b"\x04\xff\xff")

    def test_bad_tag(self):
        """A record that fails authentication closes the connection."""
        self._check_closes(b"\x04\x00\x20" + bytes(32))

    def test_wrong_type(self):
        """A non-record frame after the handshake closes the connection."""
        self._check_closes(b"\x02\x00\x30" + bytes(48))


class TimeoutTests(unittest.TestCase):
    """Handshake and idle timeouts run on the injected clock."""

    def test_first_record_timeout(self):
        """A client that upgrades and then sends nothing is dropped after the handshake timeout."""
        server = _Server(handshake_timeout=30)
        client = NoiseClient(server.key.public())
        client._flush = lambda: None  # never send the HTTP/2 preface
        pump = server.connect(client)
        pump.flush()
        self.successResultOf(client.ready)
        server.clock.advance(29)
        pump.flush()
        self.assertNoResult(client.closed)
        server.clock.advance(1)
        pump.flush()
        self.successResultOf(client.closed)
        self.assertEqual(server.ts2021.factory.connections, set())

    def test_idle_timeout(self):
        """An established connection without traffic is dropped after the idle timeout; traffic resets it."""
        server = _Server(idle_timeout=300)
        client, pump = server.noise_client()
        server.clock.advance(200)
        d = client.request(b"POST", b"/machine/echo", b"")
        pump.flush()
        self.successResultOf(d)
        server.clock.advance(299)
        pump.flush()
        self.assertNoResult(client.closed)
        server.clock.advance(1)
        pump.flush()
        self.successResultOf(client.closed)
        self.assertEqual(server.clock.getDelayedCalls(), [])


class LifecycleTests(unittest.TestCase):
    """The connection's states decide what its input, writes and timers do."""

    def _connection(self):
        """A NoiseProtocol straight from the factory on a StringTransport, before any record."""
        server = _Server(handshake_timeout=30, idle_timeout=300, early_payload=False)
        factory = server.ts2021.factory
        initiation = NoiseInitiator(MachinePrivate.generate().raw, server.key.public().raw, 133).initiation()
        _, protocol = factory.accept(initiation)
        transport = StringTransport(peerAddress=IPv4Address("TCP", "192.0.2.7", 41641))
        protocol.makeConnection(transport)
        server.clock.advance(0)  # the inner HTTP/2 server sends its SETTINGS
        return server, protocol, transport

    def test_bad_record_closes_and_silences(self):
        """After a bad record the transport is aborted, later bytes and writes are dropped, and no timer runs."""
        server, protocol, transport = self._connection()
        transport.clear()
        protocol.dataReceived(b"\x04\x00\x20" + bytes(32))
        self.assertTrue(transport.disconnecting)
        self.assertEqual(server.clock.getDelayedCalls(), [])
        protocol.dataReceived(b"\x04\x00\x20" + bytes(32))
        protocol.write(b"late")
        self.assertEqual(transport.value(), b"")
        protocol.connectionLost(None)
        self.assertEqual(server.ts2021.factory.connections, set())

    def test_writes_do_not_extend_the_handshake_timeout(self):
        """Before the first record, the server's own writes leave the handshake timeout where it was."""
        server, protocol, transport = self._connection()
        server.clock.advance(29)
        protocol.write(b"server settings")
        self.assertFalse(transport.disconnecting)
        server.clock.advance(1)
        self.assertTrue(transport.disconnecting)
        protocol.connectionLost(None)
        self.assertEqual(server.clock.getDelayedCalls(), [])


class HeldWriteTests(unittest.TestCase):
    """What the server writes while handling received records leaves in one write."""

    def _connected(self):
        server = _Server()
        client, pump = server.noise_client()
        self.successResultOf(client.ready)
        (protocol,) = server.ts2021.factory.connections
        writes = []
        original = protocol.transport.write

        def counting_write(data):
            writes.append(data)
            return original(data)

        protocol.transport.write = counting_write
        return server, client, pump, protocol, writes

    def test_answer_ready_at_once_is_one_write(self):
        """A request answered while its records are handled (acknowledgements, headers, body) takes one write."""
        server, client, pump, protocol, writes = self._connected()
        d = client.request(b"POST", b"/machine/echo", b"hello")
        pump.pump(advanceClock=False)  # the request's records reach the server; no send-loop turn yet
        self.assertEqual(len(writes), 1)
        pump.flush()  # the stream's end goes out on the send loop's next turn
        self.assertEqual(json.loads(self.successResultOf(d).body)["body"], "hello")

    def test_writes_outside_data_received_go_at_once(self):
        """A write made outside dataReceived (a delta to a stream) is not held."""
        server, client, pump, protocol, writes = self._connected()
        protocol.write(b"x")
        protocol.write(b"y")
        self.assertEqual(len(writes), 2)

    def test_lose_connection_sends_held_bytes_first(self):
        """Closing while handling records first sends what was written before the close."""
        server, client, pump, protocol, writes = self._connected()
        events = []
        transport = protocol.transport
        write, lose = transport.write, transport.loseConnection
        transport.write = lambda data: (events.append("write"), write(data))
        transport.loseConnection = lambda: (events.append("close"), lose())

        def write_then_close(data):
            protocol.write(b"last words")
            protocol.loseConnection()

        protocol.wrappedProtocol.dataReceived = write_then_close
        client.request(b"POST", b"/machine/echo", b"hello").addErrback(lambda f: None)
        pump.flush()
        self.assertEqual(events[:2], ["write", "close"])
