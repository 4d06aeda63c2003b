# -*- test-case-name: tests.certs.test_manager -*-
"""
The certificate cache: ``tls_letsencrypt_cache_dir`` on disk.

Layout (every key file mode 0600, the folder 0700)::

    account-<hash of the ACME directory URL>.key   the ACME account key (PKCS#8 PEM)
    <hostname>.crt                                 the certificate chain, leaf first
    <hostname>.key                                 its private key

A certificate is written beside its final name and renamed into place, key
first, so a crash never leaves a chain without its key.
"""

from __future__ import annotations

import hashlib
import os

from headscale_tw.certs.ordering import IssuedCertificate, new_private_key_pem
from headscale_tw.keyfile import KeyFileError, read_key_file

__all__ = ["CertificateCache"]


class CertificateCache:
    """Files of one ACME directory's account and the certificates it issued."""

    def __init__(self, directory: str, directory_url: str) -> None:
        self.directory = directory
        digest = hashlib.sha256(directory_url.encode("utf-8")).hexdigest()[:16]
        self._account = os.path.join(directory, f"account-{digest}.key")

    def account_key(self) -> bytes:
        """The account key, created on first use."""
        text = read_key_file(self._account, "ACME account key file",
                             create=lambda: new_private_key_pem().decode("ascii"))
        return text.encode("ascii") + b"\n"

    def load(self, hostname: str) -> IssuedCertificate | None:
        """The cached certificate for ``hostname``, or ``None`` when there is none (or it is unreadable)."""
        try:
            with open(self._path(hostname, "crt"), "rb") as f:
                chain = f.read(1 << 20)
            key = read_key_file(self._path(hostname, "key"), "cached certificate key file")
        except (OSError, KeyFileError):
            return None
        return IssuedCertificate(chain_pem=chain, key_pem=key.encode("ascii") + b"\n")

    def store(self, hostname: str, issued: IssuedCertificate) -> None:
        """Keep ``issued`` as the certificate for ``hostname``."""
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        self._replace(self._path(hostname, "key"), issued.key_pem)
        self._replace(self._path(hostname, "crt"), issued.chain_pem)

    def _path(self, hostname: str, suffix: str) -> str:
        safe = "".join(c if c.isalnum() or c in ".-" else "_" for c in hostname.lower())
        return os.path.join(self.directory, f"{safe}.{suffix}")

    @staticmethod
    def _replace(path: str, data: bytes) -> None:
        temporary = path + ".new"
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
