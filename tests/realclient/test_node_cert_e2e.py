"""
``tailscale cert`` for a node: an official client gets a certificate for its MagicDNS name.

Everything runs in the test's private loopback-only namespace: Knot DNS
serving the tailnet's base domain and accepting TSIG-signed RFC 2136 updates;
pebble resolving names through that Knot (so its DNS-01 validation reads what
the server published); the server with ``dns.acme_provider`` pointing at Knot;
an official 1.96.4 ``tailscaled`` told to use pebble
(``TS_DEBUG_ACME_DIRECTORY_URL``, trusting pebble's listener through
``SSL_CERT_FILE``). The client orders, asks the server over Noise to publish
its ``_acme-challenge`` TXT record (``/machine/set-dns``), lets pebble
validate, and finalizes the order itself.
"""

from __future__ import annotations

import datetime
import os

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from headscale_tw.testing.knot import KnotDNS
from headscale_tw.testing.pebble import PebbleACME
from headscale_tw.testing.realclient.scenario import BASE_DOMAIN, ScenarioMixin, server_config
from headscale_tw.testing.realclient.testcase import RealClientTestCase

__all__ = ["NodeCertificateTests"]


def _chain(pem: bytes) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(pem)


class NodeCertificateTests(ScenarioMixin, RealClientTestCase):
    """An official client runs ``tailscale cert`` against a real ACME server through our set-dns."""

    def start_dns_and_acme(self):
        """Knot for the base domain, then pebble resolving through it; both stopped on cleanup."""
        knot = KnotDNS(os.path.join(self.log_dir, "knot"), BASE_DOMAIN, namespace=self.namespace)
        os.makedirs(knot.directory, exist_ok=True)
        knot.start()
        self.addCleanup(knot.stop)
        pebble = PebbleACME(os.path.join(self.log_dir, "pebble"), http_port=self.namespace.allocate_port(),
                            tls_port=self.namespace.allocate_port(), namespace=self.namespace,
                            dns_server=knot.server)
        os.makedirs(pebble.directory, exist_ok=True)
        pebble.start()
        self.addCleanup(pebble.stop)
        return knot, pebble

    def provider_section(self, knot: KnotDNS) -> dict:
        """``dns.acme_provider`` for the Knot server."""
        return {"type": "rfc2136", "server": knot.server, "tsig_key_name": knot.tsig_key_name,
                "tsig_algorithm": knot.tsig_algorithm, "tsig_secret_path": knot.secret_path,
                "timeout": "10s"}

    def test_tailscale_cert_gets_certificate_for_magicdns_name(self):
        """`tailscale cert <name>` exits 0 with a pebble-issued certificate for exactly the node's MagicDNS name."""
        knot, pebble = self.start_dns_and_acme()
        config = server_config(None, listen="127.0.0.1:8080",
                               dns={"acme_provider": self.provider_section(knot)})
        server = self.start_server(config)
        key = self.auth_key(server)
        acme_env = {"TS_DEBUG_ACME_DIRECTORY_URL": pebble.directory_url}
        (alpha,) = self.up_nodes(server, key, ["alpha"], ssl_cert_file=pebble.ca_pem, extra_env=acme_env)
        name = f"alpha.{BASE_DOMAIN}"
        status = alpha.status_json(peers=False)
        self.assertEqual(status.get("CertDomains"), [name])
        self.assertIn("https", status["Self"].get("Capabilities") or list((status["Self"].get("CapMap") or {})))

        cert_file = os.path.join(self.log_dir, "alpha.crt")
        key_file = os.path.join(self.log_dir, "alpha.key")
        alpha.cli("cert", f"--cert-file={cert_file}", f"--key-file={key_file}", name, timeout=120)

        with open(cert_file, "rb") as f:
            chain = _chain(f.read())
        leaf = chain[0]
        sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        self.assertEqual(sans.get_values_for_type(x509.DNSName), [name])
        now = datetime.datetime.now(datetime.timezone.utc)
        self.assertLess(leaf.not_valid_before_utc, now)
        self.assertGreater(leaf.not_valid_after_utc, now)
        # The chain ends at pebble's root: each certificate is signed by the next.
        root = _chain(pebble.issuer_pem())[0]
        for child, parent in zip(chain, chain[1:] + [root]):
            child.verify_directly_issued_by(parent)
        with open(key_file, "rb") as f:
            self.assertIn(b"PRIVATE KEY", f.read())
        self.assertIsInstance(leaf.public_key(), ec.EllipticCurvePublicKey)
        # The challenge record went through the real DNS server.
        self.assertEqual(len(knot.query(f"_acme-challenge.{name}", "TXT")), 1)

    def test_other_name_refused(self):
        """`tailscale cert` for a name that is not the node's own fails before any ACME order."""
        knot, pebble = self.start_dns_and_acme()
        config = server_config(None, listen="127.0.0.1:8080",
                               dns={"acme_provider": self.provider_section(knot)})
        server = self.start_server(config)
        key = self.auth_key(server)
        acme_env = {"TS_DEBUG_ACME_DIRECTORY_URL": pebble.directory_url}
        alpha, _bravo = self.up_nodes(server, key, ["alpha", "bravo"], ssl_cert_file=pebble.ca_pem,
                                      extra_env=acme_env)
        done = alpha.cli("cert", f"bravo.{BASE_DOMAIN}", timeout=60, check=False)
        self.assertNotEqual(done.returncode, 0)
        self.assertIn("invalid domain", done.stdout + done.stderr)
        self.assertEqual(knot.query(f"_acme-challenge.bravo.{BASE_DOMAIN}", "TXT"), [])

    def test_unconfigured_server_offers_no_certificates(self):
        """With no DNS provider the client is told its account does not support TLS certificates."""
        server = self.start_server(server_config(None, listen="127.0.0.1:8080"))
        key = self.auth_key(server)
        (alpha,) = self.up_nodes(server, key, ["alpha"])
        done = alpha.cli("cert", f"alpha.{BASE_DOMAIN}", timeout=60, check=False)
        self.assertNotEqual(done.returncode, 0)
        self.assertIn("does not support getting TLS certs", done.stdout + done.stderr)
