# -*- test-case-name: tests.storage.test_auth_requests -*-
"""The ``auth_requests`` table: :class:`AuthRequestStore`.

Pending auth requests (an interactive ``tailscale up`` waiting for
``headscale auth register``; later an SSH check waiting for ``auth approve``)
live here rather than in one instance's memory, so any instance on the same
database can finish them and a restart loses none.

Bounds are enforced where the row is written, in the same transaction as the
count that checks them: :meth:`AuthRequestStore.create` refuses a new request
(:class:`~headscale_tw.errors.LimitReached`) when its source, or the table as a
whole, already holds the maximum of unexpired pending requests. On PostgreSQL
that transaction first takes an advisory lock, so instances creating requests
at the same moment cannot together overshoot a cap; SQLite's ``BEGIN IMMEDIATE``
already serialises writers.

A state change is one conditional ``UPDATE`` (``WHERE state = 'pending'`` and not
expired), so of two instances finishing the same request only one succeeds.
"""

from __future__ import annotations

from datetime import datetime

from zope.interface import implementer

from headscale_tw.errors import AlreadyExists, Conflict, LimitReached, NotFound
from headscale_tw.interfaces import IAuthRequestStore
from headscale_tw.storage.database import Txn, UniqueViolation
from headscale_tw.storage.models import AUTH_KINDS, AuthRequest
from headscale_tw.storage.stores._common import StoreBase, dump_json, json_dict, to_datetime

__all__ = ["AuthRequestStore"]

_COLUMNS = (
    "id, auth_id, kind, state, source, machine_key, node_key, hostname, details, user_id, node_id,"
    " reason, created_at, expires_at, finished_at"
)
_SELECT = f"SELECT {_COLUMNS} FROM auth_requests"

_PG_CREATE_LOCK = 0x68735F74775F6172  # "hs_tw_ar": serialises cap checks across instances


def _row(row: tuple) -> AuthRequest:
    return AuthRequest(
        id=int(row[0]),
        auth_id=row[1],
        kind=row[2],
        state=row[3],
        source=row[4],
        machine_key=row[5],
        node_key=row[6],
        hostname=row[7],
        details=json_dict(row[8]),
        user_id=None if row[9] is None else int(row[9]),
        node_id=None if row[10] is None else int(row[10]),
        reason=row[11],
        created_at=to_datetime(row[12]),
        expires_at=to_datetime(row[13]),
        finished_at=to_datetime(row[14]),
    )


def _by_auth_id_txn(txn: Txn, auth_id: str) -> AuthRequest | None:
    row = txn.query_one(_SELECT + " WHERE auth_id = ?", (auth_id,))
    return None if row is None else _row(row)


def _count_pending_txn(txn: Txn, now: datetime, source: str | None) -> int:
    if source is None:
        row = txn.query_one("SELECT COUNT(*) FROM auth_requests WHERE state = 'pending' AND expires_at > ?", (now,))
    else:
        row = txn.query_one(
            "SELECT COUNT(*) FROM auth_requests WHERE state = 'pending' AND source = ? AND expires_at > ?",
            (source, now),
        )
    return 0 if row is None else int(row[0])


@implementer(IAuthRequestStore)
class AuthRequestStore(StoreBase):
    """Pending auth requests, capped per source and in total, with an expiry."""

    async def create(self, *, auth_id: str, kind: str, source: str, machine_key: str = "", node_key: str = "",
                     hostname: str = "", details: dict | None = None, expires_at: datetime,
                     max_per_source: int, max_total: int, now: datetime | None = None) -> AuthRequest:
        """Insert a pending request and return it.

        An open request of the same kind for the same machine key is superseded
        (stored as ``expired``): a machine holds at most one of each kind.

        :raises LimitReached: ``source`` already has ``max_per_source`` unexpired
            pending requests, or the table ``max_total``.
        :raises AlreadyExists: the ``auth_id`` is taken (ids are random: a bug).
        """
        if kind not in AUTH_KINDS:
            raise ValueError(f"unknown auth request kind {kind!r}")
        when = self._now(now)
        args = (auth_id, kind, source, machine_key, node_key, hostname, dump_json(details or {}), when, expires_at)

        what = "registrations" if kind == "register" else "SSH checks"  # the caps count both kinds

        def create_auth_request_txn(txn: Txn) -> AuthRequest:
            if txn.engine.name == "postgres":
                txn.execute("SELECT pg_advisory_xact_lock(?)", (_PG_CREATE_LOCK,))
            if machine_key:
                # A machine has one open request of a kind: a new one supersedes the old.
                txn.execute(
                    "UPDATE auth_requests SET state = 'expired', finished_at = ?"
                    " WHERE machine_key = ? AND kind = ? AND state = 'pending'",
                    (when, machine_key, kind),
                )
            if _count_pending_txn(txn, when, source) >= max_per_source:
                raise LimitReached(
                    f"too many pending {what} from {source or 'this address'} "
                    f"(limit {max_per_source}); finish or wait for the earlier ones to expire",
                    max_per_source,
                )
            if _count_pending_txn(txn, when, None) >= max_total:
                raise LimitReached(
                    f"too many pending {what} on this server (limit {max_total}); try again later",
                    max_total,
                )
            try:
                txn.insert(
                    "INSERT INTO auth_requests (auth_id, kind, state, source, machine_key, node_key, hostname,"
                    " details, created_at, expires_at) VALUES (?, ?, 'pending', ?, ?, ?, ?, ?, ?, ?)",
                    args,
                )
            except UniqueViolation:
                raise AlreadyExists(f"auth id \"{auth_id}\" is already in use") from None
            created = _by_auth_id_txn(txn, auth_id)
            assert created is not None  # inserted just above, in this transaction
            return created

        return await self._pool.run_interaction("create_auth_request", create_auth_request_txn)

    async def get(self, auth_id: str) -> AuthRequest | None:
        """The request with this auth id (whatever its state), or ``None``."""
        return await self._pool.run_interaction("get_auth_request", _by_auth_id_txn, auth_id)

    async def get_by_id(self, request_id: int) -> AuthRequest | None:
        """The request with this row id, or ``None`` (the change feed names rows by id)."""

        def get_auth_request_by_id_txn(txn: Txn) -> AuthRequest | None:
            row = txn.query_one(_SELECT + " WHERE id = ?", (request_id,))
            return None if row is None else _row(row)

        return await self._pool.run_interaction("get_auth_request_by_id", get_auth_request_by_id_txn)

    async def find_pending(self, kind: str, machine_key: str, node_key: str,
                           now: datetime | None = None) -> AuthRequest | None:
        """The newest unexpired pending request of ``kind`` for this machine and node key, or ``None``."""
        when = self._now(now)

        def find_pending_auth_request_txn(txn: Txn) -> AuthRequest | None:
            row = txn.query_one(
                _SELECT + " WHERE machine_key = ? AND node_key = ? AND kind = ? AND state = 'pending'"
                " AND expires_at > ? ORDER BY id DESC LIMIT 1",
                (machine_key, node_key, kind, when),
            )
            return None if row is None else _row(row)

        return await self._pool.run_interaction("find_pending_auth_request", find_pending_auth_request_txn)

    async def count_pending(self, source: str | None = None, now: datetime | None = None) -> int:
        """How many unexpired pending requests ``source`` (or everyone, for ``None``) holds."""
        return await self._pool.run_interaction("count_pending_auth_requests", _count_pending_txn,
                                                self._now(now), source)

    async def finish(self, auth_id: str, state: str, *, user_id: int | None = None, reason: str = "",
                     now: datetime | None = None) -> AuthRequest:
        """Move a pending, unexpired request to ``approved`` or ``rejected``; return the updated row.

        :raises NotFound: no such request, or it has expired.
        :raises Conflict: it was already approved or rejected.
        """
        if state not in ("approved", "rejected"):
            raise ValueError(f"an auth request is finished as approved or rejected, not {state!r}")
        when = self._now(now)

        def finish_auth_request_txn(txn: Txn) -> AuthRequest:
            txn.execute(
                "UPDATE auth_requests SET state = ?, user_id = ?, reason = ?, finished_at = ?"
                " WHERE auth_id = ? AND state = 'pending' AND expires_at > ?",
                (state, user_id, reason, when, auth_id, when),
            )
            changed = txn.rowcount
            current = _by_auth_id_txn(txn, auth_id)
            if changed == 0 or current is None:
                raise _refusal(current, auth_id, when)
            return current

        return await self._pool.run_interaction("finish_auth_request", finish_auth_request_txn)

    async def set_node(self, auth_id: str, node_id: int) -> AuthRequest:
        """Record the node an approved registration created or updated; return the updated row.

        :raises NotFound: no such request.
        """

        def set_auth_request_node_txn(txn: Txn) -> AuthRequest:
            txn.execute("UPDATE auth_requests SET node_id = ? WHERE auth_id = ?", (node_id, auth_id))
            current = _by_auth_id_txn(txn, auth_id)
            if current is None:
                raise NotFound(f"no auth request with auth id \"{auth_id}\"")
            return current

        return await self._pool.run_interaction("set_auth_request_node", set_auth_request_node_txn)

    async def reopen(self, auth_id: str) -> bool:
        """Put an approved registration whose node was never written back to pending; return whether it was.

        For a finisher whose node write failed after it approved the request, so
        that the admin can try again.
        """

        def reopen_auth_request_txn(txn: Txn) -> bool:
            txn.execute(
                "UPDATE auth_requests SET state = 'pending', user_id = NULL, finished_at = NULL"
                " WHERE auth_id = ? AND state = 'approved' AND node_id IS NULL",
                (auth_id,),
            )
            return txn.rowcount == 1

        return await self._pool.run_interaction("reopen_auth_request", reopen_auth_request_txn)

    async def delete_expired(self, now: datetime | None = None) -> int:
        """Delete every request whose expiry has passed (finished ones too); return how many."""
        when = self._now(now)

        def delete_expired_auth_requests_txn(txn: Txn) -> int:
            txn.execute("DELETE FROM auth_requests WHERE expires_at <= ?", (when,))
            return txn.rowcount

        return await self._pool.run_interaction("delete_expired_auth_requests", delete_expired_auth_requests_txn)


def _refusal(current: AuthRequest | None, auth_id: str, now: datetime) -> Exception:
    """Why a request could not be finished: unknown or expired (``NotFound``), or finished (``Conflict``)."""
    if current is None:
        return NotFound(f"no pending auth request with auth id \"{auth_id}\"")
    state = current.state_at(now)
    if state == "expired":
        return NotFound(f"the auth request \"{auth_id}\" has expired; start the login again")
    return Conflict(f"the auth request \"{auth_id}\" is already {state}")
