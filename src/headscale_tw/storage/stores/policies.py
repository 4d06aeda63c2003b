# -*- test-case-name: tests.storage.test_stores -*-
"""The ``policies`` table: :class:`PolicyStore` (``policy.mode: database``).

Every ``set`` adds a row, so earlier policies stay as history; the newest row
(highest id) is the one in force.
"""

from __future__ import annotations

from datetime import datetime

from zope.interface import implementer

from headscale_tw.interfaces import IPolicyStore
from headscale_tw.storage.database import Txn
from headscale_tw.storage.models import PolicyRecord
from headscale_tw.storage.stores._common import StoreBase, to_datetime

__all__ = ["PolicyStore", "read_latest_policy"]

_SELECT = "SELECT id, data, created_at, updated_at FROM policies"


def _row(row: tuple) -> PolicyRecord:
    return PolicyRecord(id=int(row[0]), data=row[1], created_at=to_datetime(row[2]), updated_at=to_datetime(row[3]))


def _latest_txn(txn: Txn) -> PolicyRecord | None:
    row = txn.query_one(_SELECT + " ORDER BY id DESC LIMIT 1")
    return None if row is None else _row(row)


@implementer(IPolicyStore)
class PolicyStore(StoreBase):
    """Policy documents."""

    async def get_latest(self) -> PolicyRecord | None:
        """The newest ``PolicyRecord``, or ``None``."""
        return await self._pool.run_interaction("get_latest_policy", _latest_txn)

    async def set(self, data, now: datetime | None = None) -> PolicyRecord:
        """Store a new policy text and return its ``PolicyRecord``."""
        when = self._now(now)

        def set_policy_txn(txn: Txn) -> PolicyRecord:
            policy_id = txn.insert(
                "INSERT INTO policies (data, created_at, updated_at) VALUES (?, ?, ?)", (data, when, when)
            )
            return _row(txn.query_row(_SELECT + " WHERE id = ?", (policy_id,)))

        return await self._pool.run_interaction("set_policy", set_policy_txn)


def read_latest_policy(db_config) -> PolicyRecord | None:
    """The newest stored policy, read synchronously on a read-only connection (``headscale configtest``)."""
    from headscale_tw.storage.database import read_only_txn

    return read_only_txn(db_config, _latest_txn)
