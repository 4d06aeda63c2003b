# -*- test-case-name: tests.certs.test_shared -*-
"""
Where the certificate manager keeps its state: the database, with the cache folder beside it.

The database (:class:`~headscale_tw.storage.stores.acme.AcmeStore`) is where
the account key, the certificate and the challenges being validated live, so
every instance on one database shares them. The ``tls_letsencrypt_cache_dir``
folder keeps a copy of each certificate stored, and is read when the database
has none yet: a server upgraded from a release that kept its state only there
carries on with its certificate and its account key.
"""

from __future__ import annotations

import datetime

from twisted.internet.interfaces import IReactorTime

from headscale_tw.certs.cache import CertificateCache
from headscale_tw.certs.ordering import IssuedCertificate, PendingOrder
from headscale_tw.clock import utc_now
from headscale_tw.interfaces import IAcmeStore
from headscale_tw.storage.stores.acme import HTTP01, TLS_ALPN01, StoredChallenge
from headscale_tw.storage.stores.leases import Lease

__all__ = ["CertificateStorage", "PolledState"]


class PolledState:
    """What one poll found: the certificate's serial and the live challenge answers."""

    def __init__(self, serial: int | None, http01: dict[str, str],
                 tls_alpn01: dict[str, tuple[bytes, bytes]]) -> None:
        self.serial = serial
        self.http01 = http01
        self.tls_alpn01 = tls_alpn01


class CertificateStorage:
    """The account key, the certificate and the challenges of one hostname, shared through the database."""

    def __init__(self, hostname: str, directory_url: str, store: IAcmeStore, cache: CertificateCache,
                 clock: IReactorTime) -> None:
        self.hostname = hostname
        self.directory_url = directory_url
        self.store = store
        self.cache = cache
        self.clock = clock

    async def account_key(self) -> bytes:
        """The shared account key; the first instance stores its cache folder's key (made if absent)."""
        return await self.store.account_key(self.directory_url, self.cache.account_key, utc_now(self.clock))

    async def load(self) -> tuple[IssuedCertificate | None, int | None]:
        """The stored certificate and its serial; the cache folder's (serial ``None``) if the database has none."""
        stored = await self.store.certificate(self.hostname)
        if stored is None:
            return self.cache.load(self.hostname), None
        return IssuedCertificate(chain_pem=stored.chain_pem, key_pem=stored.key_pem), stored.serial

    async def save(self, issued: IssuedCertificate, lease: Lease) -> int | None:
        """Store ``issued`` if ``lease`` is still live (and copy it to the cache folder); its serial, or ``None``."""
        serial = await self.store.store_certificate(self.hostname, issued.chain_pem, issued.key_pem, lease,
                                                    utc_now(self.clock))
        if serial is not None:
            self.cache.store(self.hostname, issued)
        return serial

    async def publish(self, pending: PendingOrder, lease: Lease, lifetime: float) -> bool:
        """Publish the order's challenge answers for ``lifetime`` seconds if ``lease`` is still live."""
        expires = utc_now(self.clock) + datetime.timedelta(seconds=lifetime)
        answers = [StoredChallenge(HTTP01, token, value, "", expires) for token, value in pending.http01.items()]
        answers += [StoredChallenge(TLS_ALPN01, domain, cert.decode("ascii"), key.decode("ascii"), expires)
                    for domain, (cert, key) in pending.tls_alpn01.items()]
        return await self.store.add_challenges(answers, lease, utc_now(self.clock))

    async def withdraw(self, pending: PendingOrder) -> None:
        """Withdraw the order's challenge answers."""
        keys = [(HTTP01, token) for token in pending.http01] + [(TLS_ALPN01, d) for d in pending.tls_alpn01]
        await self.store.remove_challenges(keys)

    async def poll(self) -> PolledState:
        """The certificate's serial and every live challenge answer, in one read."""
        serial, challenges = await self.store.poll(self.hostname, utc_now(self.clock))
        http01 = {c.name: c.value for c in challenges if c.kind == HTTP01}
        tls = {c.name: (c.value.encode("ascii"), c.key_pem.encode("ascii")) for c in challenges
               if c.kind == TLS_ALPN01}
        return PolledState(serial, http01, tls)
