# -*- test-case-name: tests.storage.test_stores -*-
"""The ``pre_auth_keys`` table: :class:`PreAuthKeyStore`.

Only the key's public ``prefix`` and the hash of its secret are stored
(see :mod:`headscale_tw.secrets`); the secret itself never reaches the database.
"""

from __future__ import annotations

from datetime import datetime

from zope.interface import implementer

from headscale_tw.errors import AlreadyExists, NotFound
from headscale_tw.interfaces import IPreAuthKeyStore
from headscale_tw.storage.database import ForeignKeyViolation, Txn, UniqueViolation
from headscale_tw.storage.models import PreAuthKey
from headscale_tw.storage.stores._common import (
    StoreBase,
    dump_json,
    json_list,
    required_bytes,
    to_bool,
    to_datetime,
)

__all__ = ["PreAuthKeyStore"]

_SELECT = (
    "SELECT id, prefix, key_hash, user_id, reusable, ephemeral, used, tags, expiration, created_at"
    " FROM pre_auth_keys"
)


def _row(row: tuple) -> PreAuthKey:
    return PreAuthKey(
        id=int(row[0]),
        prefix=row[1],
        key_hash=required_bytes(row[2]),
        user_id=None if row[3] is None else int(row[3]),
        reusable=to_bool(row[4]),
        ephemeral=to_bool(row[5]),
        used=to_bool(row[6]),
        tags=json_list(row[7]),
        expiration=to_datetime(row[8]),
        created_at=to_datetime(row[9]),
    )


def _get_txn(txn: Txn, key_id: int) -> PreAuthKey:
    row = txn.query_one(_SELECT + " WHERE id = ?", (key_id,))
    if row is None:
        raise NotFound(f"pre-auth key {key_id} does not exist")
    return _row(row)


@implementer(IPreAuthKeyStore)
class PreAuthKeyStore(StoreBase):
    """Pre-auth keys, stored as prefix + hash."""

    async def create(self, user_id, prefix, key_hash, reusable, ephemeral, tags, expiration,
                     now: datetime | None = None) -> PreAuthKey:
        """Insert and return the ``PreAuthKey``; ``NotFound`` for an unknown user."""
        when = self._now(now)
        args = (prefix, bytes(key_hash), user_id, bool(reusable), bool(ephemeral), False,
                dump_json(tuple(tags)), expiration, when)

        def create_preauthkey_txn(txn: Txn) -> PreAuthKey:
            try:
                key_id = txn.insert(
                    "INSERT INTO pre_auth_keys (prefix, key_hash, user_id, reusable, ephemeral, used,"
                    " tags, expiration, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    args,
                )
            except UniqueViolation:
                raise AlreadyExists(f"a pre-auth key with prefix {prefix!r} already exists") from None
            except ForeignKeyViolation:
                raise NotFound(f"user {user_id} does not exist") from None
            return _get_txn(txn, key_id)

        return await self._pool.run_interaction("create_preauthkey", create_preauthkey_txn)

    async def get(self, key_id) -> PreAuthKey:
        """The ``PreAuthKey`` with this id, or ``NotFound``."""
        return await self._pool.run_interaction("get_preauthkey", _get_txn, key_id)

    async def get_by_prefix(self, prefix) -> PreAuthKey | None:
        """The ``PreAuthKey`` with this prefix, or ``None``."""

        def get_preauthkey_by_prefix_txn(txn: Txn) -> PreAuthKey | None:
            row = txn.query_one(_SELECT + " WHERE prefix = ?", (prefix,))
            return None if row is None else _row(row)

        return await self._pool.run_interaction("get_preauthkey_by_prefix", get_preauthkey_by_prefix_txn)

    async def list(self, user_id=None) -> list[PreAuthKey]:
        """Every ``PreAuthKey`` (of one user if given), ordered by id."""

        def list_preauthkeys_txn(txn: Txn) -> list[PreAuthKey]:
            if user_id is None:
                rows = txn.query(_SELECT + " ORDER BY id")
            else:
                rows = txn.query(_SELECT + " WHERE user_id = ? ORDER BY id", (user_id,))
            return [_row(r) for r in rows]

        return await self._pool.run_interaction("list_preauthkeys", list_preauthkeys_txn)

    async def _set(self, desc: str, key_id: int, column: str, value) -> PreAuthKey:
        def set_preauthkey_column_txn(txn: Txn) -> PreAuthKey:
            txn.execute(f"UPDATE pre_auth_keys SET {column} = ? WHERE id = ?", (value, key_id))
            return _get_txn(txn, key_id)

        return await self._pool.run_interaction(desc, set_preauthkey_column_txn)

    async def mark_used(self, key_id) -> PreAuthKey:
        """Set ``used`` and return the updated ``PreAuthKey``; ``NotFound``."""
        return await self._set("mark_preauthkey_used", key_id, "used", True)

    async def expire(self, key_id, now) -> PreAuthKey:
        """Set ``expiration`` to ``now`` and return the updated ``PreAuthKey``; ``NotFound``."""
        return await self._set("expire_preauthkey", key_id, "expiration", self._now(now))

    async def delete(self, key_id) -> None:
        """Delete the key (nodes registered with it keep existing); ``NotFound``."""

        def delete_preauthkey_txn(txn: Txn) -> None:
            txn.execute("DELETE FROM pre_auth_keys WHERE id = ?", (key_id,))
            if txn.rowcount == 0:
                raise NotFound(f"pre-auth key {key_id} does not exist")

        await self._pool.run_interaction("delete_preauthkey", delete_preauthkey_txn)
