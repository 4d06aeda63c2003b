# -*- test-case-name: tests.certs.test_tls -*-
"""
A TLS server whose certificate can be replaced while it runs.

:class:`SwappableServerTLS` provides Twisted's public
``IOpenSSLServerConnectionCreator``: ``TLSMemoryBIOFactory`` (and so
``SSL4ServerEndpoint``/:func:`twisted.protocols.tls`) asks it for one
``OpenSSL.SSL.Connection`` per accepted connection. Each connection is made
from the context current at that moment, so :meth:`SwappableServerTLS.swap`
gives new connections the new certificate and leaves established ones alone.

It also answers ACME's TLS-ALPN-01 challenge (RFC 8737): a client that offers
only the ``acme-tls/1`` protocol for a name with a pending challenge is shown
that challenge's validation certificate instead of the server's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from OpenSSL import SSL, crypto
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from zope.interface import implementer

if TYPE_CHECKING:
    # pyOpenSSL's type of SSL.NO_OVERLAPPING_PROTOCOLS, named only for the annotation.
    from OpenSSL.SSL import _NoOverlappingProtocols

__all__ = ["ACME_TLS_ALPN", "SwappableServerTLS", "server_context"]

#: The ALPN protocol name of a TLS-ALPN-01 validation (RFC 8737, section 6.2).
ACME_TLS_ALPN = b"acme-tls/1"

#: Looks up the validation certificate and key (PEM) for a server name, or ``None``.
ValidationLookup = Callable[[str], "tuple[bytes, bytes] | None"]


def server_context(chain_pem: bytes, key_pem: bytes) -> SSL.Context:
    """
    A server context (TLS 1.2 or newer) serving the certificate chain ``chain_pem``.

    :raises ValueError: when the chain or key does not load or they do not match.
    """
    context = SSL.Context(SSL.TLS_SERVER_METHOD)
    context.set_min_proto_version(SSL.TLS1_2_VERSION)
    context.set_options(SSL.OP_NO_COMPRESSION | SSL.OP_CIPHER_SERVER_PREFERENCE)
    try:
        certificates = _split_chain(chain_pem)
        context.use_certificate(crypto.load_certificate(crypto.FILETYPE_PEM, certificates[0]))
        for extra in certificates[1:]:
            context.add_extra_chain_cert(crypto.load_certificate(crypto.FILETYPE_PEM, extra))
        context.use_privatekey(crypto.load_privatekey(crypto.FILETYPE_PEM, key_pem))
        context.check_privatekey()
    except (SSL.Error, crypto.Error) as e:
        raise ValueError(f"the certificate and key do not load as a pair: {e}") from None
    return context


def _split_chain(chain_pem: bytes) -> list[bytes]:
    end = b"-----END CERTIFICATE-----"
    parts = [p.strip() + b"\n" + end + b"\n" for p in chain_pem.split(end) if p.strip()]
    if not parts:
        raise ValueError("no certificate in the chain")
    return parts


@implementer(IOpenSSLServerConnectionCreator)
class SwappableServerTLS:
    """
    Connections for a TLS listener, each from the context current when it was accepted.

    :param chain_pem: the first certificate chain (leaf first) in PEM.
    :param key_pem: its private key in PEM.
    :param validation: looks up a TLS-ALPN-01 validation certificate by server
        name; ``None`` disables TLS-ALPN-01 answers.
    """

    def __init__(self, chain_pem: bytes, key_pem: bytes, validation: ValidationLookup | None = None) -> None:
        self._validation = validation
        self._context = self._build(chain_pem, key_pem)
        #: How many times the certificate was replaced.
        self.swaps = 0

    def _build(self, chain_pem: bytes, key_pem: bytes) -> SSL.Context:
        context = server_context(chain_pem, key_pem)
        if self._validation is not None:
            context.set_alpn_select_callback(self._select_protocol)
        return context

    def swap(self, chain_pem: bytes, key_pem: bytes) -> None:
        """Serve ``chain_pem`` to connections accepted from now on.

        :raises ValueError: when the pair does not load (the old one stays in use).
        """
        self._context = self._build(chain_pem, key_pem)
        self.swaps += 1

    def serverConnectionForTLS(self, tlsProtocol: object) -> SSL.Connection:
        """A connection from the current context (``IOpenSSLServerConnectionCreator``)."""
        return SSL.Connection(self._context, None)

    def _select_protocol(self, connection: SSL.Connection, offered: list[bytes]) -> bytes | _NoOverlappingProtocols:
        # Only the validation handshake offers acme-tls/1 (RFC 8737 3: it is the
        # only protocol such a client offers); every other client gets no ALPN
        # answer, as the listener negotiates none.
        if ACME_TLS_ALPN in offered and self._validation is not None:
            name = connection.get_servername()
            found = self._validation(name.decode("ascii", "replace").lower()) if name else None
            if found is not None:
                cert_pem, key_pem = found
                connection.use_certificate(crypto.load_certificate(crypto.FILETYPE_PEM, cert_pem))
                connection.use_privatekey(crypto.load_privatekey(crypto.FILETYPE_PEM, key_pem))
                return ACME_TLS_ALPN
        return SSL.NO_OVERLAPPING_PROTOCOLS
