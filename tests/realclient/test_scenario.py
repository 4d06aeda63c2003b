"""Tests for headscale_tw.testing.realclient.scenario: the config builder and status helpers."""

import yaml
from twisted.trial import unittest

from headscale_tw.config.loader import parse_config
from headscale_tw.testing.realclient.scenario import BASE_DOMAIN, peers_by_name, server_config
from headscale_tw.testing.realclient.tlsca import TestCA

CA = TestCA(directory="/tls", ca_pem="/ca.pem", cert_pem="/cert.pem", key_pem="/key.pem")


class ServerConfigTests(unittest.TestCase):
    """server_config builds YAML the project's own loader accepts, with overridable sections."""

    def test_defaults(self):
        """By default: TLS on 127.0.0.1:8443 with the CA's files, SQLite, DERP region 999 with STUN, MagicDNS."""
        config = parse_config(server_config(CA), environ={})
        self.assertEqual(config.server_url, "https://127.0.0.1:8443")
        self.assertEqual(config.listen_addr, "127.0.0.1:8443")
        self.assertTrue(config.tls.enabled)
        raw = yaml.safe_load(server_config(CA))
        self.assertEqual(raw["tls_cert_path"], "/cert.pem")
        self.assertEqual(raw["database"]["type"], "sqlite")
        self.assertEqual(raw["derp"]["server"]["region_id"], 999)
        self.assertEqual(raw["derp"]["server"]["stun_listen_addr"], "127.0.0.1:3478")
        self.assertEqual(raw["dns"], {"base_domain": BASE_DOMAIN})
        self.assertNotIn("policy", raw)

    def test_overrides(self):
        """Keyword sections update or add to the defaults and still parse."""
        text = server_config(CA, listen="192.0.2.1:443", derp={"verify_clients": False},
                             noise={"min_capability_version": 113}, node={"ephemeral": {"inactivity_timeout": "2s"}},
                             policy={"mode": "database"}, dns={"magic_dns": True}, extra={"log": {"level": "debug"}})
        parse_config(text, environ={})
        raw = yaml.safe_load(text)
        self.assertEqual(raw["server_url"], "https://192.0.2.1:443")
        self.assertIs(raw["derp"]["server"]["verify_clients"], False)
        self.assertEqual(raw["derp"]["server"]["region_code"], "test")
        self.assertEqual(raw["noise"]["min_capability_version"], 113)
        self.assertEqual(raw["noise"]["private_key_path"], "./var/noise_private.key")
        self.assertEqual(raw["node"], {"ephemeral": {"inactivity_timeout": "2s"}})
        self.assertEqual(raw["policy"], {"mode": "database"})
        self.assertEqual(raw["dns"], {"base_domain": BASE_DOMAIN, "magic_dns": True})
        self.assertEqual(raw["log"], {"level": "debug"})

    def test_plain_http_without_ca(self):
        """Without a CA the server URL is http:// and no TLS files are named."""
        raw = yaml.safe_load(server_config(None, listen="127.0.0.1:8080"))
        self.assertEqual(raw["server_url"], "http://127.0.0.1:8080")
        self.assertNotIn("tls_cert_path", raw)


class PeersByNameTests(unittest.TestCase):
    """peers_by_name indexes a status's peers by host name."""

    def test_peers(self):
        """Peers are keyed by HostName; a status without peers gives an empty dict."""
        status = {"Peer": {"nodekey:1": {"HostName": "a", "Online": True}}}
        self.assertEqual(peers_by_name(status), {"a": {"HostName": "a", "Online": True}})
        self.assertEqual(peers_by_name({"Peer": None}), {})
