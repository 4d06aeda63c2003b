"""Tests for headscale_tw.dnsprovider.build."""

from __future__ import annotations

import base64

from twisted.internet.task import Clock
from twisted.trial import unittest

from headscale_tw.config.model import AcmeDNSProviderConfig, Config, DNSConfig
from headscale_tw.dnsprovider.build import ProviderUnusable, build_provider
from headscale_tw.dnsprovider.rfc2136 import RFC2136Provider

SECRET = base64.b64encode(b"k" * 32).decode()


def _config(**provider) -> Config:
    section = AcmeDNSProviderConfig(**provider)
    return Config(dns=DNSConfig(base_domain="tail.example", acme_provider=section))


RFC2136 = dict(type="rfc2136", server="127.0.0.1:5353", tsig_key_name="k.", tsig_secret_path="/s")


class BuildProviderTests(unittest.TestCase):
    """The configured provider is made once, with clear errors naming the key."""

    def test_none(self):
        """No type: no provider."""
        self.assertIsNone(build_provider(Config(), Clock()))

    def test_rfc2136(self):
        """rfc2136 makes an RFC2136Provider on the base domain unless a zone is given."""
        files = {"/s": SECRET + "\n"}
        provider = build_provider(_config(**RFC2136), Clock(), read_file=files.__getitem__)
        self.assertIsInstance(provider, RFC2136Provider)
        self.assertEqual((provider.host, provider.port, provider.zone), ("127.0.0.1", 5353, "tail.example"))
        provider = build_provider(_config(**RFC2136, zone="Example."), Clock(), read_file=files.__getitem__)
        self.assertEqual(provider.zone, "example")

    def test_unreadable_secret(self):
        """A secret file that cannot be read stops start-up naming tsig_secret_path."""
        def missing(path):
            raise FileNotFoundError(2, "No such file or directory", path)

        with self.assertRaises(ProviderUnusable) as caught:
            build_provider(_config(**RFC2136), Clock(), read_file=missing)
        self.assertIn("dns.acme_provider.tsig_secret_path", str(caught.exception))
        self.assertIn("No such file", str(caught.exception))

    def test_bad_secret(self):
        """A secret that is not base64 stops start-up naming tsig_secret_path."""
        with self.assertRaises(ProviderUnusable) as caught:
            build_provider(_config(**RFC2136), Clock(), read_file=lambda path: "not base64!")
        self.assertIn("dns.acme_provider.tsig_secret_path", str(caught.exception))


class PreflightTests(unittest.TestCase):
    """Start-up and ``headscale configtest`` read the provider's secret before anything listens."""

    def test_no_provider(self):
        """Without a provider there is nothing to check."""
        from headscale_tw.preflight import check_dns_provider

        self.assertIsNone(check_dns_provider(Config()))

    def test_secret_checked(self):
        """A readable base64 secret passes with a note; a missing one is a StartupError naming the key."""
        import os

        from headscale_tw.preflight import StartupError, check_dns_provider, one_line

        path = os.path.abspath(self.mktemp())
        config = _config(**dict(RFC2136, tsig_secret_path=path))
        with self.assertRaises(StartupError) as caught:
            check_dns_provider(config)
        self.assertIn("dns.acme_provider.tsig_secret_path: cannot read the TSIG secret", str(caught.exception))
        with open(path, "w") as f:
            f.write(SECRET + "\n")
        self.assertIn("rfc2136 127.0.0.1:5353", check_dns_provider(config))
        with open(path, "w") as f:
            f.write("not base64!\n")
        with self.assertRaises(StartupError):
            check_dns_provider(config)
        # Raised later, while building, it still makes one readable line.
        self.assertEqual(one_line(ProviderUnusable("dns.acme_provider.type: x")), "dns.acme_provider.type: x")
