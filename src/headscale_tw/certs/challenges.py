# -*- test-case-name: tests.certs.test_challenges -*-
"""
What this server shows an ACME server that validates a challenge.

HTTP-01 (RFC 8555, section 8.3): ``GET /.well-known/acme-challenge/<token>``
on port 80 answers the key authorization ``<token>.<account key thumbprint>``.
TLS-ALPN-01 (RFC 8737): a TLS handshake for the name, offering ALPN
``acme-tls/1``, is answered with a self-signed certificate for that name
carrying the critical ``acmeIdentifier`` extension, the SHA-256 digest of the
key authorization.

:class:`ChallengeResponses` holds what is being validated right now; the
HTTP-01 resource and the TLS listener read it, the ordering code fills it
before telling the ACME server to validate and empties it afterwards. When
several instances share a database, :meth:`ChallengeResponses.set_shared`
mirrors the answers that any of them published there, so a validation request
that reaches this instance is answered whichever instance ordered.
"""

from __future__ import annotations

import datetime
import hashlib

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID, ObjectIdentifier

__all__ = ["ACME_IDENTIFIER_OID", "ChallengeResponses", "alpn_validation_certificate", "self_signed_certificate"]

#: id-pe-acmeIdentifier (RFC 8737, section 6.1).
ACME_IDENTIFIER_OID = ObjectIdentifier("1.3.6.1.5.5.7.1.31")

#: Tokens are base64url (RFC 8555 8.1); anything else is not looked up.
_TOKEN_CHARS = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
_MAX_TOKEN = 256


def alpn_validation_certificate(domain: str, key_authorization: str,
                                now: datetime.datetime) -> tuple[bytes, bytes]:
    """The TLS-ALPN-01 certificate and key (PEM) for ``domain`` and a key authorization."""
    digest = hashlib.sha256(key_authorization.encode("ascii")).digest()
    # The extension's value is an ASN.1 OCTET STRING holding the 32-byte digest.
    return self_signed_certificate(domain, now, x509.UnrecognizedExtension(ACME_IDENTIFIER_OID, b"\x04\x20" + digest))


def self_signed_certificate(domain: str, now: datetime.datetime,
                            critical: x509.UnrecognizedExtension | None = None) -> tuple[bytes, bytes]:
    """A one-day self-signed certificate and key (PEM) for ``domain``, with an optional critical extension.

    The TLS listener serves one until the first ACME certificate arrives (no
    client trusts it, but TLS-ALPN-01 needs the listener up to get that far).
    """
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, domain)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(domain)]), critical=False)
    )
    if critical is not None:
        builder = builder.add_extension(critical, critical=True)
    certificate = builder.sign(key, hashes.SHA256())
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return certificate.public_bytes(serialization.Encoding.PEM), key_pem


class ChallengeResponses:
    """The HTTP-01 key authorizations and TLS-ALPN-01 certificates being validated now."""

    def __init__(self) -> None:
        self._http01: dict[str, str] = {}
        self._tls_alpn01: dict[str, tuple[bytes, bytes]] = {}
        self._shared_http01: dict[str, str] = {}
        self._shared_tls_alpn01: dict[str, tuple[bytes, bytes]] = {}

    def set_shared(self, http01: dict[str, str], tls_alpn01: dict[str, tuple[bytes, bytes]]) -> None:
        """Replace the answers mirrored from the database (published by any instance)."""
        self._shared_http01 = dict(http01)
        self._shared_tls_alpn01 = {domain.lower(): pair for domain, pair in tls_alpn01.items()}

    def add_http01(self, token: str, key_authorization: str) -> None:
        """Answer ``token`` with ``key_authorization`` until :meth:`remove_http01`."""
        self._http01[token] = key_authorization

    def remove_http01(self, token: str) -> None:
        """Stop answering ``token``."""
        self._http01.pop(token, None)

    def http01(self, token: bytes | str) -> str | None:
        """The key authorization for a requested token, or ``None`` (also for malformed tokens)."""
        raw = token.encode("ascii", "replace") if isinstance(token, str) else token
        if not raw or len(raw) > _MAX_TOKEN or not set(raw) <= _TOKEN_CHARS:
            return None
        token_text = raw.decode("ascii")
        return self._http01.get(token_text) or self._shared_http01.get(token_text)

    def add_tls_alpn01(self, domain: str, certificate_pem: bytes, key_pem: bytes) -> None:
        """Show this validation certificate to ``acme-tls/1`` handshakes for ``domain``."""
        self._tls_alpn01[domain.lower()] = (certificate_pem, key_pem)

    def remove_tls_alpn01(self, domain: str) -> None:
        """Stop answering ``acme-tls/1`` handshakes for ``domain``."""
        self._tls_alpn01.pop(domain.lower(), None)

    def tls_alpn01(self, domain: str) -> tuple[bytes, bytes] | None:
        """The validation certificate and key for ``domain``, or ``None``."""
        return self._tls_alpn01.get(domain.lower()) or self._shared_tls_alpn01.get(domain.lower())
