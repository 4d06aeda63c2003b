"""Tests for headscale_tw.control.names."""

from twisted.trial import unittest

from headscale_tw.control.names import fqdn, sanitize_hostname, unique_given_name, validate_given_name
from headscale_tw.errors import InvalidInput


class NamesTests(unittest.TestCase):
    """Hostnames become DNS labels; collisions get -1, -2 suffixes."""

    def test_sanitize(self):
        """Sanitising lowercases, maps separators to '-', drops other bytes and known suffixes."""
        cases = {
            "MyLaptop": "mylaptop",
            "my laptop": "my-laptop",
            "bob's_box.local": "bobs-box",
            "host.lan": "host",
            "box.localdomain": "box",
            "--weird--": "weird",
            "名前": "node",
            "": "node",
            "a.b@c": "a-b-c",
        }
        for given, expected in cases.items():
            self.assertEqual(sanitize_hostname(given), expected, given)

    def test_sanitize_length(self):
        """Labels are cut to 63 bytes."""
        self.assertEqual(len(sanitize_hostname("x" * 100)), 63)

    def test_collisions(self):
        """The first free base-N is used."""
        self.assertEqual(unique_given_name("node", set()), "node")
        self.assertEqual(unique_given_name("node", {"node"}), "node-1")
        self.assertEqual(unique_given_name("node", {"node", "node-1"}), "node-2")
        self.assertEqual(len(unique_given_name("y" * 63, {"y" * 63})), 63)

    def test_validate(self):
        """Admin renames must be valid labels."""
        self.assertEqual(validate_given_name("good-name1"), "good-name1")
        for bad in ("Bad", "-x", "x-", "", "a" * 64, "a.b"):
            self.assertRaises(InvalidInput, validate_given_name, bad)

    def test_fqdn(self):
        """Node.Name carries a trailing dot, or is the bare label with no domain."""
        self.assertEqual(fqdn("host", "tail.example"), "host.tail.example.")
        self.assertEqual(fqdn("host", ""), "host")
