# -*- test-case-name: tests.control.test_lease -*-
"""
Keeping a named database lease while this instance runs: :class:`LeaseKeeper`.

Several instances sharing one database each run a keeper for the same lease
name; at most one holds it at a time and does the job the lease guards (today:
ordering and renewing the ACME certificate; later: ephemeral-node garbage
collection, HA route primaries). The keeper:

- tries to take the lease at start and every ``duration / 3`` seconds after,
  which renews it while held and takes it over once a crashed holder's lease
  has expired (within ``duration`` plus one interval);
- treats the lease as lost at ``expires_at - margin`` on its own clock if it
  could not renew in time (database down, or slow), so it stops acting before
  any other instance may take over;
- tells ``on_change`` with the new :class:`~headscale_tw.storage.models.Lease`
  when it gains the lease (a new tenure, with a larger token) and with ``None``
  when it loses it;
- on stop cancels its timers, waits for an attempt under way, and releases the
  lease so another instance takes over at its next attempt instead of after
  the expiry.

Work done for the lease should be fenced: writes check the tenure in their own
transaction (:func:`~headscale_tw.storage.stores.leases.holds_lease_txn`).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

from twisted.application import service
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from headscale_tw.clock import utc_now
from headscale_tw.interfaces import ILeaseStore
from headscale_tw.storage.models import Lease

__all__ = ["LeaseKeeper", "DEFAULT_LEASE_DURATION"]

#: How long one tenure lasts without renewal, in seconds.
DEFAULT_LEASE_DURATION = 30.0


class LeaseKeeper(service.Service):
    """
    Takes and keeps lease ``name`` for ``holder``.

    :param store: the lease store (``db.leases``).
    :param name: the lease's name, the same on every instance.
    :param holder: this instance's id.
    :param clock: the injected clock; attempts and the local expiry run on it.
    :param on_change: called with the :class:`Lease` when a tenure is gained and
        with ``None`` when it is lost or released; exceptions are logged.
    :param duration: seconds one tenure lasts without renewal.
    """

    log = Logger()

    def __init__(self, store: ILeaseStore, name: str, holder: str, clock: IReactorTime,
                 on_change: Callable[[Lease | None], Any] = lambda lease: None,
                 duration: float = DEFAULT_LEASE_DURATION) -> None:
        self.store = store
        self.name = name
        self.holder = holder
        self.clock = clock
        self.duration = duration
        #: Try again this often: renews twice before a tenure runs out.
        self.interval = duration / 3
        #: Act as the holder only until this long before the stored expiry (clock skew, slow commits).
        self.margin = duration / 6
        self._on_change = on_change
        self._lease: Lease | None = None
        self._attempt_timer: IDelayedCall | None = None
        self._expiry_timer: IDelayedCall | None = None
        #: The attempt under way, or the last one (fires when it has finished, whatever its outcome).
        self.attempting: Deferred | None = None

    @property
    def lease(self) -> Lease | None:
        """The tenure this instance holds now, or ``None``."""
        return self._lease

    # -- service ---------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self._attempt()

    def stopService(self) -> Deferred:
        super().stopService()
        self._cancel_timers()
        return ensureDeferred(self._stop())

    async def _stop(self) -> None:
        if self.attempting is not None:
            await self.attempting
        lease, self._lease = self._lease, None
        self._cancel_timers()
        if lease is None:
            return
        try:
            await self.store.release(lease, utc_now(self.clock))
        except Exception as e:
            self.log.warn("could not release the {name} lease (it expires by itself): {error}",
                          name=self.name, error=e)
        self._tell(None)

    # -- attempts ----------------------------------------------------------------

    def _cancel_timers(self) -> None:
        for timer in (self._attempt_timer, self._expiry_timer):
            if timer is not None and timer.active():
                timer.cancel()
        self._attempt_timer = self._expiry_timer = None

    def _attempt(self) -> None:
        self._attempt_timer = None
        self.attempting = ensureDeferred(self._try())

    async def _try(self) -> None:
        try:
            lease = await self.store.acquire(self.name, self.holder, self.duration, utc_now(self.clock))
        except Exception as e:
            # Keep what we hold until its local expiry; the expiry timer drops it if no renewal comes.
            self.log.warn("could not take or renew the {name} lease: {error}", name=self.name, error=e)
        else:
            if self.running:
                self._took(lease)
            elif lease is not None:
                self._lease = lease  # stopping: _stop releases it
        if self.running:
            self._attempt_timer = self.clock.callLater(self.interval, self._attempt)

    def _took(self, lease: Lease | None) -> None:
        before = self._lease
        if lease is None:
            if before is not None:
                self.log.warn("lost the {name} lease to another instance", name=self.name)
                self._drop()
            return
        self._lease = lease
        if self._expiry_timer is not None and self._expiry_timer.active():
            self._expiry_timer.cancel()
        until = lease.expires_at - timedelta(seconds=self.margin)
        self._expiry_timer = self.clock.callLater(max(0.0, (until - utc_now(self.clock)).total_seconds()),
                                                  self._expired)
        if before is None or before.token != lease.token:
            self.log.info("holding the {name} lease (token {token})", name=self.name, token=lease.token)
            self._tell(lease)

    def _expired(self) -> None:
        self._expiry_timer = None
        if self._lease is not None:
            self.log.warn("the {name} lease ran out before it could be renewed", name=self.name)
            self._drop()

    def _drop(self) -> None:
        self._lease = None
        if self._expiry_timer is not None and self._expiry_timer.active():
            self._expiry_timer.cancel()
        self._expiry_timer = None
        self._tell(None)

    def _tell(self, lease: Lease | None) -> None:
        try:
            self._on_change(lease)
        except Exception:
            self.log.failure("the {name} lease's on_change failed", name=self.name)
