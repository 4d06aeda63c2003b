"""Tests for headscale_tw.derp._stun and headscale_tw.derp.stun."""

import random
import struct
import zlib

from twisted.trial import unittest

from headscale_tw.derp import _stun as s
from headscale_tw.derp.stun import STUNServerProtocol, listen_stun, parse_listen_addr

TXID = bytes(range(1, 13))


def netcheck_request(txid=TXID):
    """The 40 bytes tailscaled sends, built by hand from the spec."""
    head = b"\x00\x01\x00\x14\x21\x12\xa4\x42" + txid
    soft = b"\x80\x22\x00\x08tailnode"
    crc = (zlib.crc32(head + soft) & 0xFFFFFFFF) ^ 0x5354554E
    return head + soft + b"\x80\x28\x00\x04" + struct.pack(">I", crc)


class _FakeUDP:
    def __init__(self):
        self.sent = []

    def write(self, data, addr):
        self.sent.append((data, addr))


class CodecTests(unittest.TestCase):
    """STUN parse and build, byte for byte."""

    def test_request_matches_netcheck(self):
        """build_binding_request produces exactly the 40-byte netcheck request."""
        self.assertEqual(s.build_binding_request(TXID), netcheck_request())
        self.assertEqual(len(netcheck_request()), 40)

    def test_parse_request(self):
        """A netcheck request parses (strictly too) to its transaction ID."""
        self.assertEqual(s.parse_binding_request(netcheck_request()), TXID)
        self.assertEqual(s.parse_binding_request(netcheck_request(), strict=True), TXID)

    def test_bare_request_lenient_only(self):
        """A 20-byte request without attributes is answered unless strict."""
        bare = b"\x00\x01\x00\x00\x21\x12\xa4\x42" + TXID
        self.assertEqual(s.parse_binding_request(bare), TXID)
        self.assertRaises(s.STUNError, s.parse_binding_request, bare, strict=True)

    def test_bad_fingerprint(self):
        """A wrong FINGERPRINT is refused."""
        req = bytearray(netcheck_request())
        req[-1] ^= 1
        self.assertRaises(s.STUNError, s.parse_binding_request, bytes(req))

    def test_response_ipv4(self):
        """The IPv4 response is 32 bytes with the port and address XORed with the cookie."""
        resp = s.build_binding_response(TXID, "192.0.2.1", 41641)
        expected = (
            b"\x01\x01\x00\x0c\x21\x12\xa4\x42" + TXID
            + b"\x00\x20\x00\x08\x00\x01" + struct.pack(">H", 41641 ^ 0x2112)
            + bytes(a ^ b for a, b in zip(bytes([192, 0, 2, 1]), b"\x21\x12\xa4\x42"))
        )
        self.assertEqual(resp, expected)
        self.assertEqual(s.parse_binding_response(resp), (TXID, "192.0.2.1", 41641))

    def test_response_ipv6_and_mapped(self):
        """IPv6 is XORed with cookie and txid; v4-mapped IPv6 is answered as IPv4."""
        resp = s.build_binding_response(TXID, "2001:db8::1", 3478)
        self.assertEqual(resp[2:4], b"\x00\x18")
        self.assertEqual(s.parse_binding_response(resp), (TXID, "2001:db8::1", 3478))
        mapped = s.build_binding_response(TXID, "::ffff:198.51.100.2", 9)
        self.assertEqual(s.parse_binding_response(mapped), (TXID, "198.51.100.2", 9))
        self.assertEqual(len(mapped), 32)

    def test_fuzz(self):
        """Random and mutated datagrams raise only STUNError."""
        rng = random.Random(99)
        base = netcheck_request()
        for _ in range(5000):
            if rng.random() < 0.5:
                data = bytearray(base)
                for _ in range(rng.randrange(1, 4)):
                    data[rng.randrange(len(data))] = rng.getrandbits(8)
                data = bytes(data[: rng.randrange(len(data) + 1)])
            else:
                data = bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 60)))
            for parse in (s.parse_binding_request, s.parse_binding_response):
                try:
                    parse(data)
                except s.STUNError:
                    pass


class ProtocolTests(unittest.TestCase):
    """The UDP responder."""

    def test_answers_from_source(self):
        """A request is answered to its source address with the mapped address."""
        proto = STUNServerProtocol()
        proto.transport = _FakeUDP()
        proto.datagramReceived(netcheck_request(), ("203.0.113.9", 41641))
        [(data, addr)] = proto.transport.sent
        self.assertEqual(addr, ("203.0.113.9", 41641))
        self.assertEqual(s.parse_binding_response(data), (TXID, "203.0.113.9", 41641))
        self.assertEqual((proto.requests, proto.responses, proto.malformed), (1, 1, 0))

    def test_malformed_ignored(self):
        """Garbage gets no answer and is counted."""
        proto = STUNServerProtocol()
        proto.transport = _FakeUDP()
        proto.datagramReceived(b"GET / HTTP/1.1\r\n\r\n", ("203.0.113.9", 1))
        proto.datagramReceived(b"", ("203.0.113.9", 1))
        self.assertEqual(proto.transport.sent, [])
        self.assertEqual(proto.malformed, 2)

    def test_listen(self):
        """listen_stun listens on the configured interface and port."""
        calls = []

        class _Reactor:
            def listenUDP(self, port, protocol, interface="", maxPacketSize=8192):
                calls.append((port, interface, type(protocol)))
                return "port"

        self.assertEqual(listen_stun(_Reactor(), "127.0.0.1:3478"), "port")
        self.assertEqual(calls, [(3478, "127.0.0.1", STUNServerProtocol)])
        self.assertEqual(parse_listen_addr("[::]:3478"), ("::", 3478))
        self.assertRaises(ValueError, parse_listen_addr, "nope")
