# -*- test-case-name: tests.storage.test_stores -*-
"""The ``server_state`` table: :class:`ServerStateStore`, small named ``bytes`` values
shared by every server on one database (for example the pepper that keys secret hashes)."""

from __future__ import annotations

from collections.abc import Callable

from zope.interface import implementer

from headscale_tw.interfaces import IServerStateStore
from headscale_tw.storage.database import Txn
from headscale_tw.storage.stores._common import StoreBase, to_bytes

__all__ = ["ServerStateStore"]


def _get_txn(txn: Txn, name: str) -> bytes | None:
    row = txn.query_one("SELECT value FROM server_state WHERE name = ?", (name,))
    return None if row is None else to_bytes(row[0])


def _insert_if_absent_txn(txn: Txn, name: str, value: bytes) -> bytes:
    # ON CONFLICT DO NOTHING: whoever inserts first wins, everyone reads that value.
    txn.execute("INSERT INTO server_state (name, value) VALUES (?, ?) ON CONFLICT (name) DO NOTHING", (name, value))
    return bytes(txn.query_row("SELECT value FROM server_state WHERE name = ?", (name,))[0])


@implementer(IServerStateStore)
class ServerStateStore(StoreBase):
    """Named server-wide values."""

    async def get(self, name) -> bytes | None:
        """The stored value, or ``None``."""
        return await self._pool.run_interaction("get_server_state", _get_txn, name)

    async def get_or_create(self, name, factory: Callable[[], bytes]) -> bytes:
        """The stored value; if absent, store ``factory()`` first. Race-safe across servers:
        when two create at once, both get the value that was stored first."""
        existing = await self.get(name)
        if existing is not None:
            return existing
        value = bytes(factory())
        return await self._pool.run_interaction("create_server_state", _insert_if_absent_txn, name, value)
