# -*- test-case-name: tests.certs.test_tls -*-
"""Tests for :mod:`headscale_tw.certs.tls`: certificate swap and TLS-ALPN-01 answers, over iosim."""

import datetime
import os

from cryptography import x509
from OpenSSL import SSL
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.internet.protocol import Factory, Protocol
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.test.iosim import connectedServerAndClient
from twisted.trial import unittest
from zope.interface import implementer
from zope.interface.verify import verifyObject

from headscale_tw.certs.challenges import ACME_IDENTIFIER_OID, alpn_validation_certificate
from headscale_tw.certs.tls import ACME_TLS_ALPN, SwappableServerTLS, server_context
from headscale_tw.testing.realclient.tlsca import make_test_ca

__all__ = ["SwappableServerTLSTests"]


@implementer(IOpenSSLClientConnectionCreator)
class _Client:
    """A client that sends SNI and (optionally) ALPN and accepts any certificate: the test reads it."""

    def __init__(self, name: bytes, protocols: list[bytes] | None = None) -> None:
        self.context = SSL.Context(SSL.TLS_CLIENT_METHOD)
        if protocols:
            self.context.set_alpn_protos(protocols)
        self.name = name

    def clientConnectionForTLS(self, tlsProtocol):
        connection = SSL.Connection(self.context, None)
        connection.set_tlsext_host_name(self.name)
        return connection


def _pair(test: unittest.TestCase, name: str) -> tuple[bytes, bytes]:
    ca = make_test_ca(os.path.join(test.mktemp(), name), ips=("127.0.0.1",), dns_names=(name,))
    with open(ca.cert_pem, "rb") as c, open(ca.key_pem, "rb") as k:
        return c.read(), k.read()


def _handshake(server: SwappableServerTLS, client: _Client):
    server_factory = TLSMemoryBIOFactory(server, False, Factory.forProtocol(Protocol))
    client_factory = TLSMemoryBIOFactory(client, True, Factory.forProtocol(Protocol))
    client_side, server_side, pump = connectedServerAndClient(
        lambda: server_factory.buildProtocol(None), lambda: client_factory.buildProtocol(None))
    pump.flush()
    return client_side, pump


def _san(client_side) -> list[str]:
    cert = client_side.getPeerCertificate().to_cryptography()
    return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)


class SwappableServerTLSTests(unittest.TestCase):
    """New connections get the certificate current when they are accepted; acme-tls/1 gets the validation one."""

    def test_provides_interface(self) -> None:
        """The creator provides Twisted's public IOpenSSLServerConnectionCreator."""
        from twisted.internet.interfaces import IOpenSSLServerConnectionCreator

        self.assertTrue(verifyObject(IOpenSSLServerConnectionCreator, SwappableServerTLS(*_pair(self, "a.test"))))

    def test_swap_affects_new_connections_only(self) -> None:
        """After a swap a new handshake sees the new certificate; the open connection keeps working."""
        tls = SwappableServerTLS(*_pair(self, "old.test"))
        first, first_pump = _handshake(tls, _Client(b"old.test"))
        self.assertEqual(_san(first), ["old.test"])
        tls.swap(*_pair(self, "new.test"))
        second, _ = _handshake(tls, _Client(b"new.test"))
        self.assertEqual(_san(second), ["new.test"])
        self.assertEqual(tls.swaps, 1)
        # the first connection still carries data after the swap
        first.write(b"still here")
        first_pump.flush()
        self.assertEqual(_san(first), ["old.test"])
        self.assertFalse(first.disconnected)

    def test_bad_pair_keeps_old(self) -> None:
        """A chain whose key does not match is refused and the old certificate stays."""
        cert_a, _ = _pair(self, "a.test")
        _, key_b = _pair(self, "b.test")
        tls = SwappableServerTLS(*_pair(self, "c.test"))
        self.assertRaises(ValueError, tls.swap, cert_a, key_b)
        client_side, _ = _handshake(tls, _Client(b"c.test"))
        self.assertEqual(_san(client_side), ["c.test"])
        self.assertRaises(ValueError, server_context, b"", key_b)

    def test_alpn_validation(self) -> None:
        """A handshake offering acme-tls/1 for a name with a challenge gets its validation certificate."""
        now = datetime.datetime.now(datetime.timezone.utc)
        cert, key = alpn_validation_certificate("h.test", "token.thumb", now)
        pending = {"h.test": (cert, key)}
        tls = SwappableServerTLS(*_pair(self, "h.test"), validation=pending.get)
        validator, _ = _handshake(tls, _Client(b"h.test", [ACME_TLS_ALPN]))
        self.assertEqual(validator.negotiatedProtocol, ACME_TLS_ALPN)
        seen = validator.getPeerCertificate().to_cryptography()
        extension = seen.extensions.get_extension_for_oid(ACME_IDENTIFIER_OID)
        self.assertTrue(extension.critical)
        # an ordinary client, and acme-tls/1 for a name without a challenge, get the real certificate
        ordinary, _ = _handshake(tls, _Client(b"h.test", [b"http/1.1"]))
        self.assertIsNone(ordinary.negotiatedProtocol)
        self.assertRaises(x509.ExtensionNotFound, ordinary.getPeerCertificate().to_cryptography()
                          .extensions.get_extension_for_oid, ACME_IDENTIFIER_OID)
        other, _ = _handshake(tls, _Client(b"other.test", [ACME_TLS_ALPN]))
        self.assertIsNone(other.negotiatedProtocol)
