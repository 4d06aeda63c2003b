# -*- test-case-name: tests.noise.test_handshake_throttle -*-
"""/ts2021 counts failed handshakes per client address and records the address on the Noise peer."""

from __future__ import annotations

__all__ = ["HandshakeThrottleTests"]

import base64

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial import unittest
from twisted.web import resource
from twisted.web.server import Site

from headscale_tw.keys import MachinePrivate
from headscale_tw.noise._codec import NoiseInitiator
from headscale_tw.noise.resource import Ts2021Resource
from headscale_tw.throttle import NOISE_HANDSHAKES, FailureThrottle
from headscale_tw.web.client_address import TrustedProxies

UPGRADE = b"Upgrade: tailscale-control-protocol\r\nConnection: upgrade\r\n"


class HandshakeThrottleTests(unittest.TestCase):
    """Broken handshakes from one address end in 429 with Retry-After; other addresses still upgrade."""

    def setUp(self):
        self.clock = Clock()
        self.key = MachinePrivate.generate()
        self.throttle = FailureThrottle(NOISE_HANDSHAKES, self.clock)
        root = resource.Resource()
        self.site = Site(root, reactor=self.clock)
        self.ts2021 = Ts2021Resource(self.key, self.site, self.clock, throttle=self.throttle,
                                     proxies=TrustedProxies.from_config(["10.0.0.0/8"]))
        root.putChild(b"ts2021", self.ts2021)

    def post(self, peer: str, headers: bytes) -> bytes:
        transport = StringTransport(peerAddress=IPv4Address("TCP", peer, 40000))
        http = self.site.buildProtocol(transport.getPeer())
        http.makeConnection(transport)
        http.dataReceived(b"POST /ts2021 HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n" + headers + b"\r\n")
        self.clock.advance(0)  # the error-frame connection closes one turn later
        return transport.value()

    def good_handshake(self) -> bytes:
        initiation = NoiseInitiator(MachinePrivate.generate().raw, self.key.public().raw, 133).initiation()
        return UPGRADE + b"X-Tailscale-Handshake: " + base64.b64encode(initiation) + b"\r\n"

    def test_throttled_after_burst(self):
        """Malformed headers and refused initiations both count; past the burst the answer is 429."""
        bad = [UPGRADE + b"X-Tailscale-Handshake: !!!\r\n",
               UPGRADE + b"X-Tailscale-Handshake: " + base64.b64encode(bytes(101)) + b"\r\n"]
        for i in range(NOISE_HANDSHAKES.burst):
            out = self.post("192.0.2.66", bad[i % 2])
            self.assertRegex(out, rb"^HTTP/1.1 (400|101) ")
        out = self.post("192.0.2.66", self.good_handshake())
        self.assertTrue(out.startswith(b"HTTP/1.1 429 "), out)
        self.assertIn(b"\r\nRetry-After: 3\r\n", out)
        self.assertIn(b"too many failed Noise handshakes from 192.0.2.66; try again in 3 s", out)
        self.assertTrue(self.post("192.0.2.7", self.good_handshake()).startswith(b"HTTP/1.1 101 "))
        self.assertEqual((self.throttle.failures, self.throttle.refused), (NOISE_HANDSHAKES.burst, 1))

    def test_upgrade_problems_not_counted(self):
        """A request that is no handshake at all (no Upgrade header) is refused but not counted."""
        for _ in range(50):
            self.assertTrue(self.post("192.0.2.66", b"").startswith(b"HTTP/1.1 400 "))
        self.assertEqual(self.throttle.failures, 0)

    def test_good_handshakes_not_counted(self):
        """Successful handshakes cost nothing."""
        for _ in range(50):
            self.assertTrue(self.post("192.0.2.7", self.good_handshake()).startswith(b"HTTP/1.1 101 "))
        self.assertEqual(self.throttle.tracked, 0)

    def test_client_address_through_proxy(self):
        """Behind a trusted proxy the forwarded address is counted and recorded on the Noise peer."""
        forwarded = b"X-Forwarded-For: 203.0.113.9\r\n"
        for _ in range(NOISE_HANDSHAKES.burst):
            self.post("10.1.2.3", UPGRADE + b"X-Tailscale-Handshake: !!!\r\n" + forwarded)
        self.assertTrue(self.post("10.1.2.3", self.good_handshake() + forwarded).startswith(b"HTTP/1.1 429 "))
        other = b"X-Forwarded-For: 203.0.113.10\r\n"
        self.assertTrue(self.post("10.1.2.3", self.good_handshake() + other).startswith(b"HTTP/1.1 101 "))
        (connection,) = self.ts2021.factory.connections
        self.assertEqual(connection.peer.client_address, "203.0.113.10")
        self.assertEqual(connection.peer.address.host, "10.1.2.3")

    def test_unthrottled_resource(self):
        """Without a throttle, failures are only answered, never counted or refused."""
        root = resource.Resource()
        self.site = Site(root, reactor=self.clock)
        root.putChild(b"ts2021", Ts2021Resource(self.key, self.site, self.clock))
        for _ in range(100):
            self.assertTrue(self.post("192.0.2.66", UPGRADE + b"X-Tailscale-Handshake: !!!\r\n")
                            .startswith(b"HTTP/1.1 400 "))
