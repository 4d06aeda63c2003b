# -*- test-case-name: tests.storage.test_stores -*-
"""The ``api_keys`` table: :class:`ApiKeyStore` (prefix + hash, never the secret)."""

from __future__ import annotations

from datetime import datetime

from zope.interface import implementer

from headscale_tw.errors import AlreadyExists, NotFound
from headscale_tw.interfaces import IApiKeyStore
from headscale_tw.storage.database import Txn, UniqueViolation
from headscale_tw.storage.models import ApiKey
from headscale_tw.storage.stores._common import StoreBase, required_bytes, to_datetime

__all__ = ["ApiKeyStore"]

_SELECT = "SELECT id, prefix, key_hash, expiration, last_seen, created_at FROM api_keys"


def _row(row: tuple) -> ApiKey:
    return ApiKey(
        id=int(row[0]),
        prefix=row[1],
        key_hash=required_bytes(row[2]),
        expiration=to_datetime(row[3]),
        last_seen=to_datetime(row[4]),
        created_at=to_datetime(row[5]),
    )


def _get_txn(txn: Txn, key_id: int) -> ApiKey:
    row = txn.query_one(_SELECT + " WHERE id = ?", (key_id,))
    if row is None:
        raise NotFound(f"API key {key_id} does not exist")
    return _row(row)


@implementer(IApiKeyStore)
class ApiKeyStore(StoreBase):
    """API keys for ``/api/v1``."""

    async def create(self, prefix, key_hash, expiration, now: datetime | None = None) -> ApiKey:
        """Insert and return the ``ApiKey``; ``AlreadyExists`` on a duplicate prefix."""
        when = self._now(now)

        def create_apikey_txn(txn: Txn) -> ApiKey:
            try:
                key_id = txn.insert(
                    "INSERT INTO api_keys (prefix, key_hash, expiration, created_at) VALUES (?, ?, ?, ?)",
                    (prefix, bytes(key_hash), expiration, when),
                )
            except UniqueViolation:
                raise AlreadyExists(f"an API key with prefix {prefix!r} already exists") from None
            return _get_txn(txn, key_id)

        return await self._pool.run_interaction("create_apikey", create_apikey_txn)

    async def get_by_prefix(self, prefix) -> ApiKey | None:
        """The ``ApiKey`` with this prefix, or ``None``."""

        def get_apikey_by_prefix_txn(txn: Txn) -> ApiKey | None:
            row = txn.query_one(_SELECT + " WHERE prefix = ?", (prefix,))
            return None if row is None else _row(row)

        return await self._pool.run_interaction("get_apikey_by_prefix", get_apikey_by_prefix_txn)

    async def list(self) -> list[ApiKey]:
        """Every ``ApiKey``, ordered by id."""

        def list_apikeys_txn(txn: Txn) -> list[ApiKey]:
            return [_row(r) for r in txn.query(_SELECT + " ORDER BY id")]

        return await self._pool.run_interaction("list_apikeys", list_apikeys_txn)

    async def _set(self, desc: str, key_id: int, column: str, value) -> ApiKey:
        def set_apikey_column_txn(txn: Txn) -> ApiKey:
            txn.execute(f"UPDATE api_keys SET {column} = ? WHERE id = ?", (value, key_id))
            return _get_txn(txn, key_id)

        return await self._pool.run_interaction(desc, set_apikey_column_txn)

    async def expire(self, key_id, now) -> ApiKey:
        """Set ``expiration`` to ``now`` and return the updated ``ApiKey``; ``NotFound``."""
        return await self._set("expire_apikey", key_id, "expiration", self._now(now))

    async def touch(self, key_id, now) -> ApiKey:
        """Record ``last_seen`` and return the updated ``ApiKey``; ``NotFound``."""
        return await self._set("touch_apikey", key_id, "last_seen", self._now(now))

    async def delete(self, key_id) -> None:
        """Delete the key; ``NotFound`` if absent."""

        def delete_apikey_txn(txn: Txn) -> None:
            txn.execute("DELETE FROM api_keys WHERE id = ?", (key_id,))
            if txn.rowcount == 0:
                raise NotFound(f"API key {key_id} does not exist")

        await self._pool.run_interaction("delete_apikey", delete_apikey_txn)
