"""Tests for headscale_tw.service."""

from twisted.trial import unittest

from headscale_tw.service import listen_endpoint


class ListenEndpointTests(unittest.TestCase):
    """Headscale host:port strings become Twisted endpoint descriptions."""

    def test_ipv4(self):
        """An IPv4 host becomes the interface of a TCP endpoint."""
        self.assertEqual(listen_endpoint("127.0.0.1:8080"), "tcp:8080:interface=127.0.0.1")

    def test_ipv6_escaped(self):
        """Colons of a bracketed IPv6 host are escaped for the endpoint parser."""
        self.assertEqual(listen_endpoint("[::1]:8080"), "tcp:8080:interface=\\:\\:1")

    def test_any(self):
        """0.0.0.0 listens on every interface."""
        self.assertEqual(listen_endpoint("0.0.0.0:80"), "tcp:80")
