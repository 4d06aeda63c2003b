# -*- test-case-name: tests.test_hostport -*-
"""Tests for :mod:`headscale_tw.hostport`."""

from twisted.trial import unittest

from headscale_tw.hostport import parse_hostport, port_number

__all__ = ["HostPortTests"]


class HostPortTests(unittest.TestCase):
    """Go host:port strings are split and checked."""

    def test_forms(self):
        """IPv4, bracketed IPv6, empty host and names are accepted."""
        self.assertEqual(parse_hostport("127.0.0.1:80"), ("127.0.0.1", "80"))
        self.assertEqual(parse_hostport("[::]:443"), ("::", "443"))
        self.assertEqual(parse_hostport(":8080"), ("", "8080"))
        self.assertEqual(parse_hostport("localhost:1"), ("localhost", "1"))
        self.assertEqual(parse_hostport(":http", named_port=True), ("", "http"))

    def test_rejects(self):
        """Malformed addresses raise ValueError."""
        for bad in ("80", "[::1]80", "host:99999", "a b:80", "[zz]:1", "host:\u00b2", ":http"):
            self.assertRaises(ValueError, parse_hostport, bad)

    def test_port_number(self):
        """Digits are the port; a service name is looked up (http is 80); an unknown name raises."""
        self.assertEqual(port_number("8080"), 8080)
        self.assertEqual(port_number(parse_hostport(":http", named_port=True)[1]), 80)
        self.assertRaises(OSError, port_number, "no-such-service-name")
