# -*- test-case-name: tests.storage.test_acme_store -*-
"""
The ACME tables: :class:`AcmeStore`, the built-in ACME client's state shared by
every instance on one database.

- ``acme_accounts``: the account key per ACME directory URL, created once
  (whoever inserts first wins; everyone reads that key).
- ``acme_certificates``: the certificate and key per hostname. Storing is fenced
  by the lease of the instance that ordered it (:func:`holds_lease_txn` in the
  same transaction), and ``serial`` grows with every store so other instances
  notice a new certificate by polling one small row.
- ``acme_challenges``: the HTTP-01 key authorizations and TLS-ALPN-01 validation
  certificates of an order being validated, each with an expiry, so that any
  instance answers a validation another instance asked for.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from zope.interface import implementer

from headscale_tw.interfaces import IAcmeStore
from headscale_tw.storage.database import Txn
from headscale_tw.storage.stores._common import StoreBase, required_datetime
from headscale_tw.storage.stores.leases import Lease, holds_lease_txn

__all__ = ["AcmeStore", "StoredCertificate", "StoredChallenge", "HTTP01", "TLS_ALPN01", "MAX_CHALLENGES"]

HTTP01 = "http-01"
TLS_ALPN01 = "tls-alpn-01"
#: Live challenges read back at most (an order for one name has one or two).
MAX_CHALLENGES = 64


@dataclass(frozen=True)
class StoredCertificate:
    """A certificate chain (leaf first) and its key in PEM, and which store of it this is."""

    hostname: str
    chain_pem: bytes
    key_pem: bytes
    serial: int
    lease_token: int
    updated_at: datetime


@dataclass(frozen=True)
class StoredChallenge:
    """One challenge answer: ``kind`` is ``http-01`` (name: token) or ``tls-alpn-01`` (name: domain)."""

    kind: str
    name: str
    value: str
    key_pem: str
    expires_at: datetime


def _account_key_txn(txn: Txn, directory_url: str, key_pem: str, now: datetime) -> str:
    txn.execute("INSERT INTO acme_accounts (directory_url, key_pem, created_at) VALUES (?, ?, ?) "
                "ON CONFLICT (directory_url) DO NOTHING", (directory_url, key_pem, now))
    return txn.query_row("SELECT key_pem FROM acme_accounts WHERE directory_url = ?", (directory_url,))[0]


def _get_account_key_txn(txn: Txn, directory_url: str) -> str | None:
    row = txn.query_one("SELECT key_pem FROM acme_accounts WHERE directory_url = ?", (directory_url,))
    return None if row is None else row[0]


def _certificate_txn(txn: Txn, hostname: str) -> StoredCertificate | None:
    row = txn.query_one("SELECT chain_pem, key_pem, serial, lease_token, updated_at FROM acme_certificates "
                        "WHERE hostname = ?", (hostname,))
    if row is None:
        return None
    chain, key, serial, token, updated = row
    return StoredCertificate(hostname=hostname, chain_pem=chain.encode("ascii"), key_pem=key.encode("ascii"),
                             serial=int(serial), lease_token=int(token), updated_at=required_datetime(updated))


def _serial_txn(txn: Txn, hostname: str) -> int | None:
    row = txn.query_one("SELECT serial FROM acme_certificates WHERE hostname = ?", (hostname,))
    return None if row is None else int(row[0])


def _store_certificate_txn(txn: Txn, hostname: str, chain: str, key: str, lease: Lease,
                           now: datetime) -> int | None:
    if not holds_lease_txn(txn, lease, now):
        return None
    txn.execute(
        "INSERT INTO acme_certificates (hostname, chain_pem, key_pem, serial, lease_token, updated_at) "
        "VALUES (?, ?, ?, 1, ?, ?) ON CONFLICT (hostname) DO UPDATE SET chain_pem = excluded.chain_pem, "
        "key_pem = excluded.key_pem, serial = acme_certificates.serial + 1, "
        "lease_token = excluded.lease_token, updated_at = excluded.updated_at",
        (hostname, chain, key, lease.token, now))
    return _serial_txn(txn, hostname)


def _add_challenges_txn(txn: Txn, challenges: list[StoredChallenge], lease: Lease, now: datetime) -> bool:
    if not holds_lease_txn(txn, lease, now):
        return False
    txn.execute("DELETE FROM acme_challenges WHERE expires_at <= ?", (now,))
    for c in challenges:
        txn.execute("INSERT INTO acme_challenges (kind, name, value, key_pem, expires_at) VALUES (?, ?, ?, ?, ?) "
                    "ON CONFLICT (kind, name) DO UPDATE SET value = excluded.value, key_pem = excluded.key_pem, "
                    "expires_at = excluded.expires_at", (c.kind, c.name, c.value, c.key_pem, c.expires_at))
    return True


def _remove_challenges_txn(txn: Txn, keys: list[tuple[str, str]]) -> None:
    for kind, name in keys:
        txn.execute("DELETE FROM acme_challenges WHERE kind = ? AND name = ?", (kind, name))


def _poll_txn(txn: Txn, hostname: str, now: datetime) -> tuple[int | None, list[StoredChallenge]]:
    rows = txn.query("SELECT kind, name, value, key_pem, expires_at FROM acme_challenges WHERE expires_at > ? "
                     "ORDER BY expires_at DESC LIMIT ?", (now, MAX_CHALLENGES))
    challenges = [StoredChallenge(kind, name, value, key_pem, required_datetime(expires)) for kind, name, value, key_pem,
                  expires in rows]
    return _serial_txn(txn, hostname), challenges


@implementer(IAcmeStore)
class AcmeStore(StoreBase):
    """The ACME account keys, certificates and live challenges."""

    async def account_key(self, directory_url: str, create: Callable[[], bytes],
                          now: datetime | None = None) -> bytes:
        """The account key for ``directory_url``; ``create()`` (PEM) is stored first when there is none
        (race-safe: every instance gets the key stored first)."""
        existing = await self._pool.run_interaction("get_acme_account", _get_account_key_txn, directory_url)
        if existing is not None:
            return existing.encode("ascii")
        stored = await self._pool.run_interaction("create_acme_account", _account_key_txn, directory_url,
                                                  create().decode("ascii"), self._now(now))
        return stored.encode("ascii")

    async def certificate(self, hostname: str) -> StoredCertificate | None:
        """The stored certificate for ``hostname``, or ``None``."""
        return await self._pool.run_interaction("get_acme_certificate", _certificate_txn, hostname)

    async def store_certificate(self, hostname: str, chain_pem: bytes, key_pem: bytes, lease: Lease,
                                now: datetime | None = None) -> int | None:
        """Store the certificate for ``hostname`` if ``lease`` is still the live tenure; its new serial,
        or ``None`` when the tenure is over and nothing was stored."""
        return await self._pool.run_interaction("store_acme_certificate", _store_certificate_txn, hostname,
                                                chain_pem.decode("ascii"), key_pem.decode("ascii"), lease,
                                                self._now(now))

    async def add_challenges(self, challenges: list[StoredChallenge], lease: Lease,
                             now: datetime | None = None) -> bool:
        """Publish challenge answers if ``lease`` is still the live tenure (expired ones are removed
        on the way); whether they were published."""
        return await self._pool.run_interaction("add_acme_challenges", _add_challenges_txn, list(challenges),
                                                lease, self._now(now))

    async def remove_challenges(self, keys: list[tuple[str, str]]) -> None:
        """Withdraw the challenges named by ``(kind, name)``."""
        await self._pool.run_interaction("remove_acme_challenges", _remove_challenges_txn, list(keys))

    async def poll(self, hostname: str, now: datetime | None = None) -> tuple[int | None, list[StoredChallenge]]:
        """The certificate's serial for ``hostname`` (``None`` if none) and the live challenges, in one read."""
        return await self._pool.run_interaction("poll_acme", _poll_txn, hostname, self._now(now))
