"""Tests for headscale_tw.testing.realclient.tlsca: the throwaway test CA."""

import ipaddress
import os
import stat

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from twisted.trial import unittest

from headscale_tw.testing.realclient.tlsca import make_test_ca


class TestCATests(unittest.TestCase):
    """make_test_ca writes a CA and a loopback server certificate it signed."""

    def setUp(self):
        self.ca = make_test_ca(os.path.abspath(self.mktemp()))
        with open(self.ca.ca_pem, "rb") as f:
            self.ca_cert = x509.load_pem_x509_certificate(f.read())
        with open(self.ca.cert_pem, "rb") as f:
            self.cert = x509.load_pem_x509_certificate(f.read())

    def test_signed_by_ca(self):
        """The server certificate verifies against the CA certificate."""
        self.cert.verify_directly_issued_by(self.ca_cert)

    def test_ca_is_ca(self):
        """The CA certificate may sign certificates; the server one may not."""
        self.assertTrue(self.ca_cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
        self.assertFalse(self.cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)

    def test_names(self):
        """The server certificate covers 127.0.0.1, 192.0.2.1, ::1 and localhost."""
        san = self.cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        self.assertEqual(
            {str(ip) for ip in san.get_values_for_type(x509.IPAddress)},
            {"127.0.0.1", "192.0.2.1", "::1"},
        )
        self.assertEqual(san.get_values_for_type(x509.DNSName), ["localhost"])
        self.assertIn(ipaddress.ip_address("127.0.0.1"), san.get_values_for_type(x509.IPAddress))

    def test_key_matches(self):
        """key.pem is the private key of cert.pem and only its owner can read it."""
        with open(self.ca.key_pem, "rb") as f:
            key = serialization.load_pem_private_key(f.read(), None)
        raw = serialization.PublicFormat.SubjectPublicKeyInfo
        self.assertEqual(key.public_key().public_bytes(serialization.Encoding.DER, raw),
                         self.cert.public_key().public_bytes(serialization.Encoding.DER, raw))
        self.assertEqual(stat.S_IMODE(os.stat(self.ca.key_pem).st_mode), 0o600)

    def test_fresh_each_time(self):
        """Each call makes a new CA."""
        other = make_test_ca(os.path.abspath(self.mktemp()))
        with open(other.ca_pem, "rb") as a, open(self.ca.ca_pem, "rb") as b:
            self.assertNotEqual(a.read(), b.read())
