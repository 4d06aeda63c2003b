# -*- test-case-name: tests.storage.test_leases -*-
"""
The ``leases`` table: :class:`LeaseStore`, named leases that several instances
on one database contend for, so that one of them at a time does a job.

A lease has a *holder* (an instance id), an *expiry* and a *token*. Taking,
renewing and taking over are one statement (an upsert whose ``WHERE`` admits
the current holder or anyone once the lease has expired), so no instance reads
the row and then writes on what it read: on PostgreSQL the upsert locks the
row, on SQLite ``BEGIN IMMEDIATE`` serialises writers. Every new tenure (a new
holder, or the same one after its lease lapsed or was released) adds one to
the token, so a token names one tenure for good. Writes done on behalf of a
lease check it in their own transaction with :func:`holds_lease_txn` (the
fencing check), so a holder that stalled past its expiry cannot overwrite the
work of the one that took over.

Times come from the caller's injected clock: instances must keep their clocks
in step (NTP) to well within a lease's duration.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from zope.interface import implementer

from headscale_tw.interfaces import ILeaseStore
from headscale_tw.storage.database import Txn
from headscale_tw.storage.models import Lease
from headscale_tw.storage.stores._common import StoreBase, required_datetime

__all__ = ["Lease", "LeaseStore", "holds_lease_txn", "MAX_LEASE_NAME"]

#: Lease names are short fixed identifiers chosen by code (``acme:<hostname>``).
MAX_LEASE_NAME = 200


def _lease(name: str, row: tuple) -> Lease:
    holder, token, acquired_at, expires_at = row
    return Lease(name=name, holder=holder, token=int(token), acquired_at=required_datetime(acquired_at),
                 expires_at=required_datetime(expires_at))


def _check_name(name: str, what: str = "lease name") -> None:
    if not name or len(name) > MAX_LEASE_NAME:
        raise ValueError(f"a {what} has 1 to {MAX_LEASE_NAME} characters, not {len(name)}")


# One statement: insert the first tenure, renew our own live one (same token), or take
# over an expired one (token + 1). Another holder's live lease matches no WHERE and
# RETURNING yields no row. SET expressions read the row as it was before the update.
_ACQUIRE = """
INSERT INTO leases (name, holder, token, acquired_at, expires_at) VALUES (?, ?, 1, ?, ?)
ON CONFLICT (name) DO UPDATE SET
    token = CASE WHEN leases.holder = excluded.holder AND leases.expires_at > ?
                 THEN leases.token ELSE leases.token + 1 END,
    acquired_at = CASE WHEN leases.holder = excluded.holder AND leases.expires_at > ?
                       THEN leases.acquired_at ELSE excluded.acquired_at END,
    holder = excluded.holder,
    expires_at = excluded.expires_at
WHERE leases.holder = excluded.holder OR leases.expires_at <= ?
RETURNING holder, token, acquired_at, expires_at
"""


def _acquire_txn(txn: Txn, name: str, holder: str, now: datetime, expires_at: datetime) -> Lease | None:
    txn.execute(_ACQUIRE, (name, holder, now, expires_at, now, now, now))
    row = txn.fetchone()
    return None if row is None else _lease(name, row)


def _get_txn(txn: Txn, name: str) -> Lease | None:
    row = txn.query_one("SELECT holder, token, acquired_at, expires_at FROM leases WHERE name = ?", (name,))
    return None if row is None else _lease(name, row)


def _release_txn(txn: Txn, name: str, holder: str, token: int, now: datetime) -> bool:
    # The row stays (its token must keep growing); only the expiry moves to now.
    txn.execute("UPDATE leases SET expires_at = ? WHERE name = ? AND holder = ? AND token = ? AND expires_at > ?",
                (now, name, holder, token, now))
    return txn.rowcount == 1


def holds_lease_txn(txn: Txn, lease: Lease, now: datetime) -> bool:
    """Whether ``lease`` is still the live tenure, checked inside the caller's transaction.

    On PostgreSQL the row is locked (``FOR UPDATE``) until that transaction ends,
    so nobody takes the lease over between this check and the caller's write.
    """
    lock = " FOR UPDATE" if txn.engine.name == "postgres" else ""
    row = txn.query_one("SELECT 1 FROM leases WHERE name = ? AND holder = ? AND token = ? AND expires_at > ?"
                        + lock, (lease.name, lease.holder, lease.token, now))
    return row is not None


@implementer(ILeaseStore)
class LeaseStore(StoreBase):
    """Named leases: take, renew, take over after expiry, release."""

    async def acquire(self, name: str, holder: str, duration: float, now: datetime | None = None) -> Lease | None:
        """Take or renew lease ``name`` for ``holder`` until ``now + duration``; the tenure, or ``None`` when
        another holder's lease is still live."""
        _check_name(name)
        _check_name(holder, "lease holder")
        if duration <= 0:
            raise ValueError(f"a lease lasts a positive number of seconds, not {duration}")
        now = self._now(now)
        return await self._pool.run_interaction("acquire_lease", _acquire_txn, name, holder, now,
                                                now + timedelta(seconds=duration))

    async def get(self, name: str) -> Lease | None:
        """The latest tenure of lease ``name`` (live or not), or ``None`` if it was never taken."""
        return await self._pool.run_interaction("get_lease", _get_txn, name)

    async def release(self, lease: Lease, now: datetime | None = None) -> bool:
        """End ``lease`` now if it is still the live tenure; whether it was."""
        return await self._pool.run_interaction("release_lease", _release_txn, lease.name, lease.holder,
                                                lease.token, self._now(now))
