# -*- test-case-name: tests.storage.test_node_sessions -*-
"""
The ``node_sessions`` table: :class:`NodeSessionStore`, which instance holds a
map stream of which node, so that online state is the same on every instance
sharing the database (issue #16).

An instance inserts a row when a node's first stream opens there and deletes
it when the node's offline grace ends there
(:class:`~headscale_tw.control.presence.NodePresence`). A node is *online*
while it has a row on a live instance: every read here joins the ``instances``
table and keeps rows whose instance's heartbeat has not run out at ``now``.
Rows of an instance that died are deleted by whichever instance notices first;
the delete returns the node ids to exactly one caller.

``connected_at`` is when the node came online; an instance that takes over a
node's stream writes the value it already knew, so it stays the same while the
node moves between instances.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from zope.interface import implementer

from headscale_tw.errors import NotFound
from headscale_tw.interfaces import INodeSessionStore
from headscale_tw.storage.database import ForeignKeyViolation, Txn
from headscale_tw.storage.stores._common import StoreBase, required_datetime

__all__ = ["NodeSessionStore", "MAX_FORGET"]

#: Instance ids one :meth:`NodeSessionStore.forget` takes at most (placeholders in one statement).
MAX_FORGET = 100

_LIVE = "JOIN instances i ON i.id = s.instance_id AND i.expires_at > ?"

_OPEN = """
INSERT INTO node_sessions (node_id, instance_id, connected_at) VALUES (?, ?, ?)
ON CONFLICT (node_id, instance_id) DO UPDATE SET connected_at = excluded.connected_at
"""


def _open_txn(txn: Txn, node_id: int, instance_id: str, since: datetime) -> None:
    txn.execute(_OPEN, (node_id, instance_id, since))


def _close_txn(txn: Txn, node_id: int, instance_id: str) -> bool:
    txn.execute("DELETE FROM node_sessions WHERE node_id = ? AND instance_id = ?", (node_id, instance_id))
    return txn.rowcount == 1


def _rows_txn(txn: Txn, node_id: int, now: datetime) -> dict[str, datetime]:
    rows = txn.query(f"SELECT s.instance_id, s.connected_at FROM node_sessions s {_LIVE} WHERE s.node_id = ?",
                     (now, node_id))
    return {instance: required_datetime(at) for instance, at in rows}


def _online_txn(txn: Txn, now: datetime) -> dict[int, dict[str, datetime]]:
    found: dict[int, dict[str, datetime]] = {}
    for node_id, instance, at in txn.query(
            f"SELECT s.node_id, s.instance_id, s.connected_at FROM node_sessions s {_LIVE}", (now,)):
        found.setdefault(int(node_id), {})[instance] = required_datetime(at)
    return found


def _forget_txn(txn: Txn, instance_ids: tuple[str, ...], now: datetime) -> list[int]:
    expired = "instance_id IN (SELECT id FROM instances WHERE expires_at <= ?)"
    args: list = [now]
    where = expired
    if instance_ids:
        where = f"instance_id IN ({', '.join('?' * len(instance_ids))}) OR {expired}"
        args = [*instance_ids, now]
    txn.execute(f"DELETE FROM node_sessions WHERE {where} RETURNING node_id", args)
    return sorted({int(row[0]) for row in txn.fetchall()})


@implementer(INodeSessionStore)
class NodeSessionStore(StoreBase):
    """Node streams per instance: open, close, read the online ones, forget dead instances' rows."""

    async def open(self, node_id: int, instance_id: str, since: datetime) -> None:
        """Record that ``node_id`` streams on ``instance_id``, online since ``since``.

        :raises NotFound: the node was deleted meanwhile.
        """
        try:
            await self._pool.run_interaction("open_node_session", _open_txn, node_id, instance_id, since)
        except ForeignKeyViolation:
            raise NotFound(f"node {node_id} not found") from None

    async def close(self, node_id: int, instance_id: str) -> bool:
        """Delete ``node_id``'s row of ``instance_id``; whether there was one."""
        return await self._pool.run_interaction("close_node_session", _close_txn, node_id, instance_id)

    async def rows(self, node_id: int, now: datetime | None = None) -> dict[str, datetime]:
        """``node_id``'s rows on instances live at ``now``: instance id to ``connected_at``."""
        return await self._pool.run_interaction("node_sessions_of", _rows_txn, node_id, self._now(now))

    async def online(self, now: datetime | None = None) -> dict[int, dict[str, datetime]]:
        """Every node with a row on a live instance: node id to (instance id to ``connected_at``)."""
        return await self._pool.run_interaction("online_nodes", _online_txn, self._now(now))

    async def forget(self, instance_ids: Iterable[str] = (), now: datetime | None = None) -> list[int]:
        """Delete the rows of ``instance_ids`` and of every instance expired at ``now``.

        Returns the ids of the nodes whose rows this call deleted, so when several
        instances notice the same death, one of them gets them (the others get ``[]``).
        """
        ids = tuple(dict.fromkeys(instance_ids))
        if len(ids) > MAX_FORGET:
            raise ValueError(f"forget takes at most {MAX_FORGET} instance ids, not {len(ids)}")
        return await self._pool.run_interaction("forget_node_sessions", _forget_txn, ids, self._now(now))
