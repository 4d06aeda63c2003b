# -*- test-case-name: tests.storage.test_audit_events -*-
"""The ``audit_events`` table: :class:`AuditEventStore` (append, filtered reads, pruning).

Rows are only ever added and, past the retention, deleted; never updated.
Every instance sharing a database appends its own rows (``instance`` names
the writer), so nothing here publishes on the change feed.
"""

from __future__ import annotations

import json
from datetime import datetime

from zope.interface import implementer

from headscale_tw.interfaces import IAuditEventStore
from headscale_tw.storage.database import Txn
from headscale_tw.storage.models import MAX_AUDIT_PAGE, AuditEvent
from headscale_tw.storage.stores._common import StoreBase, dump_json, json_dict, required_datetime
from headscale_tw.storage.stores.leases import Lease, holds_lease_txn

__all__ = ["AuditEventStore", "MAX_PAGE"]

#: The most rows one read returns.
MAX_PAGE = MAX_AUDIT_PAGE

_COLUMNS = ("at, actor_kind, actor, action, target_kind, target_id, target_name, source, result, detail, "
            "instance")
_SELECT = f"SELECT id, {_COLUMNS} FROM audit_events"


def _row(row: tuple) -> AuditEvent:
    try:
        detail = json_dict(row[10])
    except json.JSONDecodeError:
        detail = {}
    return AuditEvent(id=int(row[0]), at=required_datetime(row[1]), actor_kind=row[2], actor=row[3], action=row[4],
                      target_kind=row[5], target_id=row[6], target_name=row[7], source=row[8], result=row[9],
                      detail=detail, instance=row[11])


def _values(event: AuditEvent) -> tuple:
    return (event.at, event.actor_kind, event.actor, event.action, event.target_kind, event.target_id,
            event.target_name, event.source, event.result, dump_json(event.detail), event.instance)


def insert_audit_event_txn(txn: Txn, event: AuditEvent) -> None:
    """Append ``event`` inside a transaction of another store's (a node row and its audit row in one)."""
    txn.execute(f"INSERT INTO audit_events ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", _values(event))


@implementer(IAuditEventStore)
class AuditEventStore(StoreBase):
    """The audit log's rows."""

    async def add(self, event: AuditEvent, lease: Lease | None = None) -> bool:
        """Append one event; with ``lease``, only while that tenure is live (checked in the same
        transaction), so a job's holder that lost its lease writes nothing. Whether it was added."""

        def add_audit_event_txn(txn: Txn) -> bool:
            if lease is not None and not holds_lease_txn(txn, lease, event.at):
                return False
            insert_audit_event_txn(txn, event)
            return True

        return await self._pool.run_interaction("add_audit_event", add_audit_event_txn)

    async def add_many(self, events: list[AuditEvent]) -> None:
        """Append several events in one transaction (the throttle summaries of one interval)."""

        def add_audit_events_txn(txn: Txn) -> None:
            for event in events:
                insert_audit_event_txn(txn, event)

        if events:
            await self._pool.run_interaction("add_audit_events", add_audit_events_txn)

    async def list(self, *, since: datetime | None = None, until: datetime | None = None, actor: str = "",
                   action: str = "", target: str = "", limit: int = 100) -> list[AuditEvent]:
        """The newest ``limit`` (at most :data:`MAX_PAGE`) events matching every filter given, newest first.

        ``actor`` matches the actor's name or kind; ``action`` the action or
        its family (``node`` matches ``node.delete``); ``target`` the target's
        id, name or kind. ``since`` is inclusive, ``until`` exclusive.
        """
        where: list[str] = []
        args: list = []
        if since is not None:
            where.append("at >= ?")
            args.append(since)
        if until is not None:
            where.append("at < ?")
            args.append(until)
        if actor:
            where.append("(actor = ? OR actor_kind = ?)")
            args += [actor, actor]
        if action:
            where.append("(action = ? OR substr(action, 1, ?) = ?)")
            args += [action, len(action) + 1, action + "."]
        if target:
            where.append("(target_id = ? OR target_name = ? OR target_kind = ?)")
            args += [target, target, target]
        sql = _SELECT + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY at DESC, id DESC LIMIT ?"
        args.append(max(0, min(int(limit), MAX_PAGE)))

        def list_audit_events_txn(txn: Txn) -> list[AuditEvent]:
            return [_row(r) for r in txn.query(sql, tuple(args))]

        return await self._pool.run_interaction("list_audit_events", list_audit_events_txn)

    async def delete_before(self, cutoff: datetime, batch: int = 1000) -> int:
        """Delete at most ``batch`` events older than ``cutoff``, oldest first; return how many went."""

        def delete_audit_events_txn(txn: Txn) -> int:
            txn.execute("DELETE FROM audit_events WHERE id IN "
                        "(SELECT id FROM audit_events WHERE at < ? ORDER BY id LIMIT ?)", (cutoff, batch))
            return txn.rowcount

        return await self._pool.run_interaction("delete_audit_events", delete_audit_events_txn)
