# -*- test-case-name: tests.storage.test_stores -*-
"""The ``nodes`` table: :class:`NodeStore`.

Updates that touch only *soft* columns (endpoints, disco key, Hostinfo,
last seen: no unique or foreign-key column, so they cannot fail on a
constraint) are coalesced: while one such update waits for the database, the
ones submitted after it join the same transaction (:class:`_UpdateBatch`).
Any other node write closes the open batch first, so writes still reach the
database in the order they were submitted.
Every caller still gets its row back only after the commit. Nothing waits on
purpose: with an idle database each update runs at once, alone; under load
(a login storm reporting endpoints) one transaction carries many.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from zope.interface import implementer

from headscale_tw.errors import AlreadyExists, InvalidInput, NotFound
from headscale_tw.interfaces import INodeStore
from headscale_tw.storage.database import ForeignKeyViolation, Txn, UniqueViolation
from headscale_tw.storage.models import AuditEvent, Node
from headscale_tw.storage.stores._common import (
    StoreBase,
    dump_json,
    json_dict,
    json_list,
    to_bool,
    to_datetime,
)
from headscale_tw.storage.stores.audit_events import insert_audit_event_txn

__all__ = ["NodeStore"]

# Node attribute -> (column, to-database, from-database)
_IDENTITY = (lambda v: v, lambda v: v)
_FIELDS: dict[str, tuple[str, Any, Any]] = {
    "machine_key": ("machine_key", *_IDENTITY),
    "node_key": ("node_key", *_IDENTITY),
    "hostname": ("hostname", *_IDENTITY),
    "given_name": ("given_name", *_IDENTITY),
    "user_id": ("user_id", lambda v: v, lambda v: None if v is None else int(v)),
    "disco_key": ("disco_key", *_IDENTITY),
    "ipv4": ("ipv4", *_IDENTITY),
    "ipv6": ("ipv6", *_IDENTITY),
    "endpoints": ("endpoints", dump_json, json_list),
    "hostinfo": ("host_info", dump_json, json_dict),
    "given_name_auto": ("given_name_auto", bool, to_bool),
    "register_method": ("register_method", *_IDENTITY),
    "tags": ("tags", dump_json, json_list),
    "auth_key_id": ("auth_key_id", lambda v: v, lambda v: None if v is None else int(v)),
    "expiry": ("expiry", lambda v: v, to_datetime),
    "last_seen": ("last_seen", lambda v: v, to_datetime),
    "approved_routes": ("approved_routes", dump_json, json_list),
    "ephemeral": ("ephemeral", bool, to_bool),
    "created_at": ("created_at", lambda v: v, to_datetime),
    "updated_at": ("updated_at", lambda v: v, to_datetime),
}
_NAMES = tuple(_FIELDS)
_COLUMNS = "id, " + ", ".join(_FIELDS[n][0] for n in _NAMES)
_SELECT = f"SELECT {_COLUMNS} FROM nodes"
# INSERT and UPDATE hand back the stored row in the same statement (SQLite >= 3.35, PostgreSQL).
_RETURNING = f" RETURNING {_COLUMNS}"

_UNIQUE_LABEL = {
    "machine_key": "machine key",
    "node_key": "node key",
    "given_name": "given name",
    "ipv4": "IPv4 address",
    "ipv6": "IPv6 address",
}


#: Columns an update may set and still be coalesced with others (see the module docstring).
_COALESCED = frozenset({"endpoints", "disco_key", "hostinfo", "last_seen", "updated_at"})


def _pass_to(result, waiter: Deferred) -> None:
    if not waiter.called:  # a cancelled waiter has been called already
        if isinstance(result, Failure):
            waiter.errback(result)
        else:
            waiter.callback(result)


class _UpdateBatch:
    """Soft updates that share one transaction; open until that transaction starts.

    Items are added on the reactor thread; the transaction, on a pool thread,
    closes the batch and takes its items, under :attr:`lock`.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.items: list[tuple[int, str, tuple]] = []
        self.open = True
        self.outcome: list | Failure | None = None
        self._waiters: list[Deferred] = []

    def add(self, node_id: int, sets: str, args: tuple) -> int | None:
        """Add one update; its index in the batch, or ``None`` if the transaction already took the items."""
        with self.lock:
            if not self.open:
                return None
            self.items.append((node_id, sets, args))
            return len(self.items) - 1

    def take(self) -> list[tuple[int, str, tuple]]:
        """Close the batch and return its items (the transaction calls this first)."""
        with self.lock:
            self.open = False
            return self.items

    def wait(self) -> Deferred:
        """A Deferred of its own for one caller (cancelling it leaves the batch alone)."""
        waiter: Deferred = Deferred()
        if self.outcome is None:
            self._waiters.append(waiter)
        else:
            _pass_to(self.outcome, waiter)
        return waiter

    def deliver(self, outcome) -> None:
        """The transaction ended (rows, or a Failure for all): tell every caller; close the batch."""
        self.take()  # a transaction that failed before taking its items must not gather more
        self.outcome = outcome
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            _pass_to(outcome, waiter)


def _update_batch_txn(txn: Txn, batch: _UpdateBatch) -> list[Node | None]:
    rows = []
    for node_id, sets, args in batch.take():
        row = txn.query_one(f"UPDATE nodes SET {sets} WHERE id = ?" + _RETURNING, args + (node_id,))
        rows.append(None if row is None else _row(row))
    return rows


def _row(row: tuple) -> Node:
    values = {name: _FIELDS[name][2](value) for name, value in zip(_NAMES, row[1:])}
    return Node(id=int(row[0]), **values)


def _collision(error: UniqueViolation, values: dict[str, Any]) -> AlreadyExists:
    field = error.field
    if field in _UNIQUE_LABEL:
        return AlreadyExists(f"a node with {_UNIQUE_LABEL[field]} {values.get(field)!r} already exists")
    return AlreadyExists(f"a node with the same unique field already exists ({error})")


def _bad_reference(values: dict[str, Any]) -> NotFound:
    parts = []
    if values.get("user_id") is not None:
        parts.append(f"user {values['user_id']}")
    if values.get("auth_key_id") is not None:
        parts.append(f"pre-auth key {values['auth_key_id']}")
    return NotFound(" or ".join(parts) + " does not exist" if parts else "a referenced row does not exist")


def get_node_txn(txn: Txn, node_id: int) -> Node:
    """The ``Node`` with this id, or ``NotFound``."""
    row = txn.query_one(_SELECT + " WHERE id = ?", (node_id,))
    if row is None:
        raise NotFound(f"node {node_id} does not exist")
    return _row(row)


@implementer(INodeStore)
class NodeStore(StoreBase):
    """Nodes; machine key, node key, given name and addresses are each unique."""

    def __init__(self, pool, clock) -> None:
        super().__init__(pool, clock)
        self._batch: _UpdateBatch | None = None
        #: Transactions run for coalesced updates, and the updates they carried.
        self.batches = 0
        self.batched_updates = 0

    async def create(self, node: Node, audit_event: Callable[[Node], AuditEvent | None] | None = None) -> Node:
        """Insert ``node`` (its ``id`` is ignored) and return the stored row.

        ``audit_event`` (given the stored row, with its id) returns the audit event of the
        creation, written in the same transaction: one database round trip instead of two.
        It runs in the database thread, so it must be a pure function of its argument.
        """
        when = self._now()
        values = {name: getattr(node, name) for name in _NAMES}
        values["created_at"] = values["created_at"] or when
        values["updated_at"] = values["updated_at"] or when
        columns = ", ".join(_FIELDS[n][0] for n in _NAMES)
        marks = ", ".join("?" for _ in _NAMES)
        args = tuple(_FIELDS[n][1](values[n]) for n in _NAMES)

        def create_node_txn(txn: Txn) -> Node:
            try:
                row = txn.query_row(f"INSERT INTO nodes ({columns}) VALUES ({marks})" + _RETURNING, args)
            except UniqueViolation as e:
                raise _collision(e, values) from None
            except ForeignKeyViolation:
                raise _bad_reference(values) from None
            stored = _row(row)
            if audit_event is not None:
                event = audit_event(stored)
                if event is not None:
                    insert_audit_event_txn(txn, event)
            return stored

        return await self._pool.run_interaction("create_node", create_node_txn)

    async def get(self, node_id) -> Node:
        """The ``Node`` with this id, or ``NotFound``."""
        return await self._pool.run_interaction("get_node", get_node_txn, node_id)

    async def _get_by(self, column: str, value: str) -> Node | None:
        def get_node_by_txn(txn: Txn) -> Node | None:
            row = txn.query_one(_SELECT + f" WHERE {column} = ?", (value,))
            return None if row is None else _row(row)

        return await self._pool.run_interaction(f"get_node_by_{column}", get_node_by_txn)

    async def get_by_machine_key(self, machine_key) -> Node | None:
        """The ``Node`` with this machine key, or ``None``."""
        return await self._get_by("machine_key", machine_key)

    async def get_by_node_key(self, node_key) -> Node | None:
        """The ``Node`` with this node key, or ``None``."""
        return await self._get_by("node_key", node_key)

    async def list(self, user_id=None) -> list[Node]:
        """Every ``Node`` (of one user if given), ordered by id."""

        def list_nodes_txn(txn: Txn) -> list[Node]:
            if user_id is None:
                rows = txn.query(_SELECT + " ORDER BY id")
            else:
                rows = txn.query(_SELECT + " WHERE user_id = ? ORDER BY id", (user_id,))
            return [_row(r) for r in rows]

        return await self._pool.run_interaction("list_nodes", list_nodes_txn)

    async def update(self, node_id, **fields) -> Node:
        """Set the named ``Node`` attributes and return the updated row."""
        unknown = sorted(set(fields) - set(_NAMES))
        if unknown:
            raise InvalidInput(
                "cannot update node field(s) {}: not a Node attribute other than id".format(", ".join(unknown))
            )
        values = dict(fields)
        if "updated_at" not in values:
            values["updated_at"] = self._now()
        names = [n for n in _NAMES if n in values]
        sets = ", ".join(f"{_FIELDS[n][0]} = ?" for n in names)
        args = tuple(_FIELDS[n][1](values[n]) for n in names)
        if _COALESCED.issuperset(names):
            return await self._update_coalesced(node_id, sets, args)
        self._seal()

        def update_node_txn(txn: Txn) -> Node:
            try:
                row = txn.query_one(f"UPDATE nodes SET {sets} WHERE id = ?" + _RETURNING, args + (node_id,))
            except UniqueViolation as e:
                raise _collision(e, values) from None
            except ForeignKeyViolation:
                raise _bad_reference(values) from None
            if row is None:
                raise NotFound(f"node {node_id} does not exist")
            return _row(row)

        return await self._pool.run_interaction("update_node", update_node_txn)

    def _seal(self) -> None:
        """No later soft update may join the open batch: it would reach the database before this write."""
        if self._batch is not None:
            self._batch.take()

    async def _update_coalesced(self, node_id: int, sets: str, args: tuple) -> Node:
        """Join the open batch (its transaction is queued, not yet started) or start a new one."""
        batch = self._batch
        index = None if batch is None else batch.add(node_id, sets, args)
        if batch is None or index is None:
            batch = self._batch = _UpdateBatch()
            index = batch.add(node_id, sets, args)
            self.batches += 1
            d = Deferred.fromCoroutine(self._pool.run_interaction("update_nodes", _update_batch_txn, batch))
            d.addBoth(batch.deliver)
        self.batched_updates += 1
        rows = await batch.wait()
        if rows[index] is None:
            raise NotFound(f"node {node_id} does not exist")
        return rows[index]

    async def delete(self, node_id) -> None:
        """Delete the node; ``NotFound`` if absent."""
        self._seal()

        def delete_node_txn(txn: Txn) -> None:
            txn.execute("DELETE FROM nodes WHERE id = ?", (node_id,))
            if txn.rowcount == 0:
                raise NotFound(f"node {node_id} does not exist")

        await self._pool.run_interaction("delete_node", delete_node_txn)

    async def allocated_ips(self) -> set[str]:
        """Every IPv4 and IPv6 address (text) held by a node."""

        def allocated_ips_txn(txn: Txn) -> set[str]:
            found = set()
            for ipv4, ipv6 in txn.query("SELECT ipv4, ipv6 FROM nodes"):
                if ipv4:
                    found.add(ipv4)
                if ipv6:
                    found.add(ipv6)
            return found

        return await self._pool.run_interaction("allocated_ips", allocated_ips_txn)

    async def addresses_after(self, after_id: int, held: Sequence[str] = ()) -> tuple[set[str], int]:
        """The addresses of nodes with an id above ``after_id``, plus those of ``held`` some node holds;
        and the highest node id read (at least ``after_id``).

        For an instance whose address was just taken by another instance on the same database: it
        reads only the rows created since it last looked (and whoever holds its two addresses, in case
        that row is older), not every node's addresses.
        """
        held = [address for address in held if address]

        def addresses_after_txn(txn: Txn) -> tuple[set[str], int]:
            sql = "SELECT id, ipv4, ipv6 FROM nodes WHERE id > ?"
            args: list = [after_id]
            if held:
                marks = ", ".join("?" * len(held))
                sql += f" OR ipv4 IN ({marks}) OR ipv6 IN ({marks})"
                args += held + held
            found: set[str] = set()
            highest = after_id
            for node_id, ipv4, ipv6 in txn.query(sql, args):
                highest = max(highest, node_id)
                found.update(address for address in (ipv4, ipv6) if address)
            return found, highest

        return await self._pool.run_interaction("addresses_after", addresses_after_txn)
