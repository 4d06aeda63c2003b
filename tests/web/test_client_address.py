# -*- test-case-name: tests.web.test_client_address -*-
"""Tests for headscale_tw.web.client_address: who is asking, through trusted proxies or not."""

from __future__ import annotations

__all__ = ["ParseAddressTests", "ClientAddressTests"]

import ipaddress

from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.trial import unittest
from twisted.web.test.requesthelper import DummyRequest

from headscale_tw.keys import MachinePrivate
from headscale_tw.noise.protocol import NoiseAddress, NoisePeer
from headscale_tw.web.client_address import LOCAL, TrustedProxies, client_address, parse_address

PROXIES = TrustedProxies.from_config(["10.0.0.0/24", "fd00::/64"])


def _request(peer, headers=()):
    request = DummyRequest([b""])
    request.client = peer
    for name, value in headers:
        request.requestHeaders.addRawHeader(name, value)
    return request


def _v4(host: str):
    return IPv4Address("TCP", host, 40000)


class ParseAddressTests(unittest.TestCase):
    """parse_address reads the forms proxies write and refuses everything else."""

    def test_forms(self):
        """Bare, host:port, bracketed and bracketed-with-port forms give the address."""
        for text, want in [
            ("192.0.2.7", "192.0.2.7"),
            (" 192.0.2.7 ", "192.0.2.7"),
            ("192.0.2.7:4431", "192.0.2.7"),
            ("2001:db8::1", "2001:db8::1"),
            ("[2001:db8::1]", "2001:db8::1"),
            ("[2001:db8::1]:443", "2001:db8::1"),
            ("fe80::1%eth0", "fe80::1"),
            ("::ffff:192.0.2.9", "192.0.2.9"),
        ]:
            self.assertEqual(str(parse_address(text)), want, text)

    def test_malformed(self):
        """Names, empty text, bad ports, broken brackets and huge values are not addresses."""
        for text in ["", "unknown", "example.com", "192.0.2.7:http", "[2001:db8::1", "[2001:db8::1]x",
                     "300.1.1.1", "1.2.3.4, 5.6.7.8", "1" * 100, "[]:1"]:
            self.assertIsNone(parse_address(text), text)


class ClientAddressTests(unittest.TestCase):
    """client_address believes forwarding headers only from trusted proxies."""

    def test_direct_peer(self):
        """Without headers the client is the TCP peer."""
        self.assertEqual(client_address(_request(_v4("198.51.100.4")), PROXIES), "198.51.100.4")

    def test_untrusted_peer_headers_ignored(self):
        """An untrusted peer's X-Forwarded-For, X-Real-IP and True-Client-IP are ignored."""
        request = _request(_v4("198.51.100.4"), [
            (b"X-Forwarded-For", b"203.0.113.9"), (b"X-Real-IP", b"203.0.113.8"),
            (b"True-Client-IP", b"203.0.113.7")])
        self.assertEqual(client_address(request, PROXIES), "198.51.100.4")

    def test_no_proxies_configured(self):
        """With no trusted proxies (the default) even a private peer's headers are ignored."""
        request = _request(_v4("10.0.0.1"), [(b"X-Forwarded-For", b"203.0.113.9")])
        self.assertEqual(client_address(request), "10.0.0.1")

    def test_forwarded_for_from_trusted_proxy(self):
        """A trusted proxy's X-Forwarded-For names the client."""
        request = _request(_v4("10.0.0.1"), [(b"X-Forwarded-For", b"203.0.113.9")])
        self.assertEqual(client_address(request, PROXIES), "203.0.113.9")

    def test_rightmost_untrusted_hop(self):
        """Hops the client prepended are skipped: the right-most untrusted hop wins, past trusted ones."""
        request = _request(_v4("10.0.0.1"), [
            (b"X-Forwarded-For", b"1.1.1.1, 2.2.2.2"),  # written by the client: not believed
            (b"X-Forwarded-For", b"203.0.113.9, 10.0.0.5")])  # the edge proxy saw 203.0.113.9
        self.assertEqual(client_address(request, PROXIES), "203.0.113.9")

    def test_all_hops_trusted(self):
        """When every hop is a trusted proxy, the direct peer stays the client."""
        request = _request(_v4("10.0.0.1"), [(b"X-Forwarded-For", b"10.0.0.3, 10.0.0.2")])
        self.assertEqual(client_address(request, PROXIES), "10.0.0.1")

    def test_malformed_forwarded_for(self):
        """A malformed right-most hop (or an empty header) leaves the direct peer as the client."""
        for value in [b"203.0.113.9, garbage", b"", b",", b"203.0.113.9,,", b"\xff\xfe"]:
            request = _request(_v4("10.0.0.1"), [(b"X-Forwarded-For", value)])
            self.assertEqual(client_address(request, PROXIES), "10.0.0.1", value)

    def test_malformed_left_of_client_ignored(self):
        """Garbage to the left of the right-most untrusted hop does not matter."""
        request = _request(_v4("10.0.0.1"), [(b"X-Forwarded-For", b"not-an-ip, 203.0.113.9")])
        self.assertEqual(client_address(request, PROXIES), "203.0.113.9")

    def test_single_address_headers_order(self):
        """True-Client-IP wins over X-Real-IP, which wins over X-Forwarded-For (Headscale's order)."""
        headers = [(b"X-Forwarded-For", b"203.0.113.1"), (b"X-Real-IP", b"203.0.113.2"),
                   (b"True-Client-IP", b"203.0.113.3")]
        self.assertEqual(client_address(_request(_v4("10.0.0.1"), headers), PROXIES), "203.0.113.3")
        self.assertEqual(client_address(_request(_v4("10.0.0.1"), headers[:2]), PROXIES), "203.0.113.2")

    def test_malformed_real_ip_falls_through(self):
        """A malformed X-Real-IP is skipped and X-Forwarded-For is read."""
        headers = [(b"X-Real-IP", b"unknown"), (b"X-Forwarded-For", b"203.0.113.1:5555")]
        self.assertEqual(client_address(_request(_v4("10.0.0.1"), headers), PROXIES), "203.0.113.1")

    def test_ipv6(self):
        """IPv6 peers are matched against IPv6 prefixes and forwarded IPv6 hops are canonical."""
        peer = IPv6Address("TCP", "fd00::5", 40000)
        request = _request(peer, [(b"X-Forwarded-For", b"[2001:DB8::0:1]:443")])
        self.assertEqual(client_address(request, PROXIES), "2001:db8::1")
        outside = IPv6Address("TCP", "fd01::5", 40000)
        self.assertEqual(client_address(_request(outside, [(b"X-Real-IP", b"2001:db8::1")]), PROXIES), "fd01::5")

    def test_mapped_ipv4_peer(self):
        """An IPv4-mapped IPv6 peer (a dual-stack listener) is its IPv4 address, and can be trusted as such."""
        peer = IPv6Address("TCP", "::ffff:10.0.0.1", 40000)
        request = _request(peer, [(b"X-Real-IP", b"203.0.113.4")])
        self.assertEqual(client_address(request, PROXIES), "203.0.113.4")
        self.assertEqual(client_address(_request(IPv6Address("TCP", "::ffff:192.0.2.1", 1))), "192.0.2.1")

    def test_no_ip_peer(self):
        """A unix-socket or address-less request is LOCAL."""
        self.assertEqual(client_address(_request(UNIXAddress(b"/run/headscale.sock"))), LOCAL)
        self.assertEqual(client_address(DummyRequest([b""])), LOCAL)

    def test_noise_peer(self):
        """Inside Noise the address recorded at the upgrade is the client; inner headers are ignored."""
        peer = NoisePeer(MachinePrivate.generate().public(), 133, _v4("10.0.0.1"), client_address="203.0.113.5")
        request = _request(NoiseAddress(peer), [(b"X-Forwarded-For", b"1.1.1.1")])
        self.assertEqual(client_address(request, PROXIES), "203.0.113.5")

    def test_noise_peer_without_record(self):
        """A Noise peer with no recorded address falls back to the outer TCP peer."""
        peer = NoisePeer(MachinePrivate.generate().public(), 133, _v4("198.51.100.4"))
        self.assertEqual(client_address(_request(NoiseAddress(peer)), PROXIES), "198.51.100.4")

    def test_trusts(self):
        """TrustedProxies.trusts matches by family and prefix."""
        self.assertTrue(PROXIES.trusts(ipaddress.ip_address("10.0.0.200")))
        self.assertFalse(PROXIES.trusts(ipaddress.ip_address("10.0.1.1")))
        self.assertFalse(PROXIES.trusts(ipaddress.ip_address("::ffff:10.0.0.1")))
        self.assertTrue(PROXIES.trusts(ipaddress.ip_address("fd00::abcd")))
