# -*- test-case-name: tests.storage.test_oidc_logins -*-
"""The ``oidc_logins`` table: :class:`OIDCLoginStore`.

OpenID Connect sign-ins in progress live here rather than in one instance's
memory, so that the provider's callback, or the person's confirmation, may land
on any instance on the same database (issue #11, item 5), and a restart loses
none. Two kinds of row:

- ``login``: started at ``/register/<auth_id>``, found again by the callback's
  ``state``; holds the ``nonce`` and the PKCE verifier;
- ``confirmation``: the person signed in and is asked to confirm, found again by
  a one-time token; holds who they are (``identity``, JSON text).

A row is found by the SHA-256 of its key (the state or the token), so the table
never holds a value that finds a row. :meth:`OIDCLoginStore.take` reads and
deletes a row in one transaction and returns it only when its own ``DELETE``
removed it: of two instances taking the same key at once (a replayed callback),
exactly one gets it. Each kind is trimmed to a cap on insert, the oldest rows
going first, and :meth:`OIDCLoginStore.delete_expired` removes rows past their
expiry.
"""

from __future__ import annotations

import hashlib
from datetime import datetime

from zope.interface import implementer

from headscale_tw.interfaces import IOIDCLoginStore
from headscale_tw.storage.database import Txn
from headscale_tw.storage.models import OIDC_LOGIN_KINDS, OIDCLogin
from headscale_tw.storage.stores._common import StoreBase, dump_json, json_dict, to_datetime

__all__ = ["OIDCLoginStore", "key_hash", "take_oidc_login_txn"]

_COLUMNS = "id, kind, auth_id, nonce, code_verifier, pkce_method, identity, created_at, expires_at"


def key_hash(key: str) -> str:
    """The SHA-256, in hex, of a state or confirmation token: what the table keeps."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def _row(row: tuple) -> OIDCLogin:
    return OIDCLogin(
        id=int(row[0]),
        kind=row[1],
        auth_id=row[2],
        nonce=row[3],
        code_verifier=row[4],
        pkce_method=row[5],
        identity=json_dict(row[6]),
        created_at=to_datetime(row[7]),
        expires_at=to_datetime(row[8]),
    )


def take_oidc_login_txn(txn: Txn, kind: str, digest: str) -> OIDCLogin | None:
    """Read and delete the row of ``kind`` whose key hashes to ``digest``; it only if our DELETE removed it."""
    row = txn.query_one(f"SELECT {_COLUMNS} FROM oidc_logins WHERE kind = ? AND key_hash = ?", (kind, digest))
    if row is None:
        return None
    txn.execute("DELETE FROM oidc_logins WHERE id = ?", (row[0],))
    # Another instance's DELETE of the same row committed first (PostgreSQL: ours
    # waited for its row lock, then found nothing): that instance took it.
    return _row(row) if txn.rowcount == 1 else None


def _check_kind(kind: str) -> None:
    if kind not in OIDC_LOGIN_KINDS:
        raise ValueError(f"unknown OIDC login kind {kind!r}")


@implementer(IOIDCLoginStore)
class OIDCLoginStore(StoreBase):
    """Started OpenID sign-ins and confirmations, each taken at most once, capped and expiring."""

    async def add(self, kind: str, key: str, auth_id: str, *, created_at: datetime, expires_at: datetime,
                  limit: int, nonce: str = "", code_verifier: str | None = None, pkce_method: str = "",
                  identity: dict | None = None) -> None:
        """Keep a row of ``kind`` found by ``key``; past ``limit`` rows of that kind, the oldest go."""
        _check_kind(kind)
        args = (kind, key_hash(key), auth_id, nonce, code_verifier, pkce_method, dump_json(identity or {}),
                created_at, expires_at)

        def add_oidc_login_txn(txn: Txn) -> None:
            txn.execute(
                "INSERT INTO oidc_logins (kind, key_hash, auth_id, nonce, code_verifier, pkce_method, identity,"
                " created_at, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                args,
            )
            # The newest ``limit`` rows stay: everything at or below the id of the
            # (limit + 1)-th newest goes (nothing when there are fewer rows).
            txn.execute(
                "DELETE FROM oidc_logins WHERE kind = ? AND id <= ("
                "SELECT id FROM oidc_logins WHERE kind = ? ORDER BY id DESC LIMIT 1 OFFSET ?)",
                (kind, kind, limit),
            )

        await self._pool.run_interaction("add_oidc_login", add_oidc_login_txn)

    async def take(self, kind: str, key: str) -> OIDCLogin | None:
        """The row of ``kind`` found by ``key``, deleted; ``None`` when unknown or already taken."""
        _check_kind(kind)
        return await self._pool.run_interaction("take_oidc_login", take_oidc_login_txn, kind, key_hash(key))

    async def count(self, kind: str | None = None) -> int:
        """How many rows (of ``kind``, or of both kinds) the table holds, expired or not."""

        def count_oidc_logins_txn(txn: Txn) -> int:
            if kind is None:
                row = txn.query_one("SELECT COUNT(*) FROM oidc_logins")
            else:
                row = txn.query_one("SELECT COUNT(*) FROM oidc_logins WHERE kind = ?", (kind,))
            return 0 if row is None else int(row[0])

        return await self._pool.run_interaction("count_oidc_logins", count_oidc_logins_txn)

    async def delete_expired(self, now: datetime | None = None) -> int:
        """Delete every row whose expiry has passed; return how many."""
        when = self._now(now)

        def delete_expired_oidc_logins_txn(txn: Txn) -> int:
            txn.execute("DELETE FROM oidc_logins WHERE expires_at <= ?", (when,))
            return txn.rowcount

        return await self._pool.run_interaction("delete_expired_oidc_logins", delete_expired_oidc_logins_txn)
