# -*- test-case-name: tests.storage.test_instances -*-
"""
The ``instances`` table: :class:`InstanceStore`, the instances serving one
database, each keeping its own row alive with a heartbeat.

An instance writes its row at start and renews it every few seconds
(:class:`~headscale_tw.control.instances.InstanceRegistry`); each renewal moves
``expires_at`` ahead. A row whose ``expires_at`` has passed belongs to an
instance that stopped or died. Other instances then stop counting it as live:
its DERP server leaves the mesh, and nodes whose streams it held are offline.
A clean stop deletes the row at once.

Times come from the caller's injected clock: instances must keep their clocks
in step (NTP) to well within a heartbeat's lifetime.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from zope.interface import implementer

from headscale_tw.interfaces import IInstanceStore
from headscale_tw.storage.database import Txn
from headscale_tw.storage.models import Instance
from headscale_tw.storage.stores._common import StoreBase, required_datetime

__all__ = ["Instance", "InstanceStore", "MAX_INSTANCE_ID"]

#: Instance ids are chosen by code (``storage.changefeed.new_instance_id``).
MAX_INSTANCE_ID = 200

#: Rows expired this long ago are deleted by :meth:`InstanceStore.prune`.
PRUNE_AFTER = timedelta(hours=1)


_COLUMNS = "id, started_at, heartbeat_at, expires_at, software_version, schema_version, server_url, derp_url"


def _instance(row: tuple) -> Instance:
    ident, started, beat, expires, software, schema, server_url, derp_url = row
    return Instance(id=ident, started_at=required_datetime(started),
                    heartbeat_at=required_datetime(beat), expires_at=required_datetime(expires), software_version=software or "",
                    schema_version=int(schema or 0), server_url=server_url or "", derp_url=derp_url or "")


# One statement: the first beat inserts the row, later ones move the heartbeat and expiry
# (and refresh what the instance advertises); started_at stays from the first beat.
_BEAT = f"""
INSERT INTO instances ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (id) DO UPDATE SET
    heartbeat_at = excluded.heartbeat_at,
    expires_at = excluded.expires_at,
    software_version = excluded.software_version,
    schema_version = excluded.schema_version,
    server_url = excluded.server_url,
    derp_url = excluded.derp_url
RETURNING {_COLUMNS}
"""


def _beat_txn(txn: Txn, row: tuple) -> Instance:
    txn.execute(_BEAT, row)
    return _instance(txn.fetch_row())


def _live_txn(txn: Txn, now: datetime) -> list[Instance]:
    rows = txn.query(f"SELECT {_COLUMNS} FROM instances WHERE expires_at > ? ORDER BY id", (now,))
    return [_instance(row) for row in rows]


def _get_txn(txn: Txn, ident: str) -> Instance | None:
    row = txn.query_one(f"SELECT {_COLUMNS} FROM instances WHERE id = ?", (ident,))
    return None if row is None else _instance(row)


def _remove_txn(txn: Txn, ident: str) -> bool:
    txn.execute("DELETE FROM instances WHERE id = ?", (ident,))
    return txn.rowcount == 1


def _prune_txn(txn: Txn, before: datetime) -> int:
    # Their node sessions go too: the survivors took over those nodes long ago (NodePresence.forget).
    txn.execute("DELETE FROM node_sessions WHERE instance_id IN (SELECT id FROM instances WHERE expires_at < ?)",
                (before,))
    txn.execute("DELETE FROM instances WHERE expires_at < ?", (before,))
    return max(txn.rowcount, 0)


@implementer(IInstanceStore)
class InstanceStore(StoreBase):
    """The instances serving this database: heartbeat, list the live ones, remove, prune."""

    async def heartbeat(self, instance_id: str, lifetime: float, *, software_version: str = "",
                        schema_version: int = 0, server_url: str = "", derp_url: str = "",
                        now: datetime | None = None) -> Instance:
        """Write or renew ``instance_id``'s row, live until ``now + lifetime``; the stored row."""
        if not instance_id or len(instance_id) > MAX_INSTANCE_ID:
            raise ValueError(f"an instance id has 1 to {MAX_INSTANCE_ID} characters, not {len(instance_id)}")
        if lifetime <= 0:
            raise ValueError(f"a heartbeat lasts a positive number of seconds, not {lifetime}")
        now = self._now(now)
        row = (instance_id, now, now, now + timedelta(seconds=lifetime), software_version, schema_version,
               server_url, derp_url)
        return await self._pool.run_interaction("instance_heartbeat", _beat_txn, row)

    async def live(self, now: datetime | None = None) -> list[Instance]:
        """The instances whose heartbeat has not run out at ``now``, by id."""
        return await self._pool.run_interaction("live_instances", _live_txn, self._now(now))

    async def get(self, instance_id: str) -> Instance | None:
        """``instance_id``'s row (live or not), or ``None``."""
        return await self._pool.run_interaction("get_instance", _get_txn, instance_id)

    async def remove(self, instance_id: str) -> bool:
        """Delete ``instance_id``'s row (a clean stop); whether there was one."""
        return await self._pool.run_interaction("remove_instance", _remove_txn, instance_id)

    async def prune(self, now: datetime | None = None) -> int:
        """Delete rows that expired over an hour before ``now``, and their node sessions; how many instances."""
        return await self._pool.run_interaction("prune_instances", _prune_txn, self._now(now) - PRUNE_AFTER)
