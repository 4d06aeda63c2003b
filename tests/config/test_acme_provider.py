# -*- test-case-name: tests.config.test_acme_provider -*-
"""Tests for :mod:`headscale_tw.config.checks.acme_provider` and the ``dns.acme_provider`` keys."""

from twisted.trial import unittest

from headscale_tw.config.checks import SECTIONS, acme_provider
from headscale_tw.config.loader import ConfigError, parse_config_with_warnings
from headscale_tw.config.model import AcmeDNSProviderConfig

__all__ = ["AcmeProviderCheckTests"]

GOOD = {"type": "rfc2136", "server": "192.0.2.53:53", "tsig_key_name": "headscale-acme.",
        "tsig_secret_path": "/etc/headscale/tsig.secret"}


def _problems(section=None, dns=None):
    """``(key, text)`` of each problem the loader reports for this ``dns.acme_provider`` (and ``dns``)."""
    data = {"server_url": "https://hs.example.com",
            "dns": {"base_domain": "tail.example.com", **(dns or {}), "acme_provider": dict(section or {})}}
    try:
        parse_config_with_warnings(data)
    except ConfigError as e:
        return [tuple(line.split(": ", 1)) for line in e.problems]
    return []


class AcmeProviderCheckTests(unittest.TestCase):
    """A DNS provider is either absent or complete, and its zone holds the MagicDNS names."""

    def test_keys_parse(self):
        """Every key lands on the config, the timeout as a duration."""
        data = {"dns": {"base_domain": "tail.example.com",
                        "acme_provider": dict(GOOD, zone="example.com", tsig_algorithm="hmac-sha512",
                                              timeout="30s", ttl=120)}}
        config, warnings = parse_config_with_warnings(data)
        self.assertEqual(warnings, [])
        self.assertEqual(config.dns.acme_provider, AcmeDNSProviderConfig(
            type="rfc2136", server="192.0.2.53:53", zone="example.com", tsig_key_name="headscale-acme.",
            tsig_algorithm="hmac-sha512", tsig_secret_path="/etc/headscale/tsig.secret", timeout=30.0, ttl=120))
        self.assertTrue(config.dns.acme_provider.enabled)

    def test_listed_among_sections(self):
        """The check runs with the other section checks, right after dns."""
        self.assertIn(acme_provider.check, SECTIONS)

    def test_absent_is_fine(self):
        """No provider is no problem (nodes are simply not offered certificates)."""
        self.assertEqual(_problems({}), [])

    def test_keys_without_type(self):
        """Provider keys set while type is empty are reported, naming the key."""
        self.assertEqual([k for k, _ in _problems({"server": "192.0.2.53:53"})], ["dns.acme_provider.server"])

    def test_complete_provider(self):
        """A complete rfc2136 provider passes."""
        self.assertEqual(_problems(GOOD), [])

    def test_unknown_type(self):
        """An unknown type names the types this build knows."""
        (problem,) = _problems(dict(GOOD, type="route53"))
        self.assertEqual(problem[0], "dns.acme_provider.type")
        self.assertIn("rfc2136", problem[1])

    def test_missing_and_bad_fields(self):
        """Missing server, key or secret, a bad algorithm, timeout or TTL are each reported under their key."""
        problems = dict(_problems({"type": "rfc2136", "tsig_algorithm": "md5", "timeout": "10m", "ttl": -1}))
        self.assertEqual(sorted(problems), sorted([
            "dns.acme_provider.server", "dns.acme_provider.tsig_key_name", "dns.acme_provider.tsig_algorithm",
            "dns.acme_provider.tsig_secret_path", "dns.acme_provider.timeout", "dns.acme_provider.ttl"]))
        self.assertIn("at most 120s", problems["dns.acme_provider.timeout"])

    def test_bad_server(self):
        """A server that is not host:port is reported with the parser's reason."""
        (problem,) = _problems(dict(GOOD, server="192.0.2.53"))
        self.assertEqual(problem[0], "dns.acme_provider.server")
        self.assertIn("missing", problem[1])

    def test_zone_must_hold_base_domain(self):
        """The zone may be the base domain or a parent of it, not something else."""
        self.assertEqual(_problems(dict(GOOD, zone="tail.example.com")), [])
        self.assertEqual(_problems(dict(GOOD, zone="example.com.")), [])
        (problem,) = _problems(dict(GOOD, zone="other.example"))
        self.assertEqual(problem[0], "dns.acme_provider.zone")
        self.assertIn("does not contain dns.base_domain", problem[1])

    def test_needs_magic_dns(self):
        """A provider with MagicDNS off is reported: certificates are for MagicDNS names."""
        (problem,) = _problems(GOOD, dns={"magic_dns": False})
        self.assertEqual(problem[0], "dns.acme_provider.type")
        self.assertIn("dns.magic_dns", problem[1])
