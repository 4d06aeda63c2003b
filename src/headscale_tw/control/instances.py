# -*- test-case-name: tests.control.test_instances -*-
"""
This instance's heartbeat in the ``instances`` table, and the set of live
instances as last read: :class:`InstanceRegistry`.

Every instance sharing a database runs one registry. Every ``interval``
seconds it renews its own row (live for ``lifetime`` seconds) and reads the
rows still live, in one round of two queries. When the set of live instances
differs from the previous round, ``on_membership`` is called with a
:class:`Membership` (who is live now, who joined, who left). An instance that
dies is seen as gone by the others at most ``lifetime + interval`` seconds
after its last heartbeat; a clean stop deletes the row, so the others see it
gone at their next round.

A round that fails (database down) is logged and changes nothing: the last
membership stays until a round succeeds. This instance counts itself live
only while its own heartbeat is, on its own clock
(:attr:`InstanceRegistry.self_live`), so it can stop acting for the cluster
when it cannot reach the database.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from twisted.application import service
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from headscale_tw.clock import utc_now
from headscale_tw.interfaces import IInstanceStore
from headscale_tw.storage.models import Instance

__all__ = ["InstanceRegistry", "Membership", "HEARTBEAT_INTERVAL", "HEARTBEAT_LIFETIME", "membership_dispatch"]

#: Seconds between two heartbeats.
HEARTBEAT_INTERVAL = 2.0
#: Seconds a heartbeat keeps an instance live: three missed beats.
HEARTBEAT_LIFETIME = 6.0
#: Every this many rounds (10 minutes at 2 s) a round also deletes rows long expired (InstanceStore.prune).
PRUNE_EVERY_ROUNDS = 300


@dataclass(frozen=True)
class Membership:
    """The live instances after a round, and how they differ from the round before."""

    live: tuple[Instance, ...]
    joined: tuple[Instance, ...]
    left: tuple[str, ...]

    def ids(self) -> frozenset[str]:
        """The ids of the live instances."""
        return frozenset(instance.id for instance in self.live)


@dataclass(frozen=True)
class Advertised:
    """What this instance writes into its row for the others to read."""

    software_version: str = ""
    schema_version: int = 0
    server_url: str = ""
    derp_url: str = ""


class InstanceRegistry(service.Service):
    """
    Keeps this instance's row alive and follows which instances are live.

    :param store: the instance store (``db.instances``).
    :param instance_id: this instance's id (the change feed's).
    :param clock: the injected clock; rounds run on it.
    :param advertised: what this instance tells the others (DERP URL, versions).
    :param on_membership: called with a :class:`Membership` whenever the live set
        changed (and after the first round); exceptions are logged.
    :param interval: seconds between rounds.
    :param lifetime: seconds one heartbeat keeps this instance live.
    :param prune_every: every this many successful rounds, rows (and their node
        sessions) expired over an hour ago are deleted; 0: never.
    """

    log = Logger()

    def __init__(self, store: IInstanceStore, instance_id: str, clock: IReactorTime,
                 advertised: Advertised = Advertised(),
                 on_membership: Callable[[Membership], Any] = lambda membership: None,
                 interval: float = HEARTBEAT_INTERVAL, lifetime: float = HEARTBEAT_LIFETIME,
                 prune_every: int = PRUNE_EVERY_ROUNDS) -> None:
        if lifetime <= interval:
            raise ValueError(f"a heartbeat must outlive its interval ({lifetime} <= {interval})")
        self.store = store
        self.instance_id = instance_id
        self.clock = clock
        self.advertised = advertised
        self.interval = interval
        self.lifetime = lifetime
        self.prune_every = prune_every
        self._rounds = 0
        self._on_membership = on_membership
        self._live: dict[str, Instance] = {}
        self._first = True
        self._own_expiry: datetime | None = None
        self._timer: IDelayedCall | None = None
        #: The round under way, or the last one (fires when it has finished, whatever its outcome).
        self.beating: Deferred | None = None
        #: Rounds that failed since the last one that succeeded.
        self.failures = 0

    # -- reads -------------------------------------------------------------------

    def live(self) -> tuple[Instance, ...]:
        """The live instances as of the last successful round, by id."""
        return tuple(self._live[key] for key in sorted(self._live))

    def is_live(self, instance_id: str) -> bool:
        """Whether ``instance_id`` was live at the last successful round."""
        return instance_id in self._live

    @property
    def self_live(self) -> bool:
        """Whether this instance's own heartbeat is still live on its own clock."""
        return self._own_expiry is not None and utc_now(self.clock) < self._own_expiry

    # -- service -------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self._round()

    def stopService(self) -> Deferred:
        super().stopService()
        self._cancel()
        return ensureDeferred(self._stop())

    async def _stop(self) -> None:
        if self.beating is not None:
            await self.beating
        self._cancel()
        self._own_expiry = None
        try:
            await self.store.remove(self.instance_id)
        except Exception as e:
            self.log.warn("could not remove this instance's row (it expires by itself): {error}", error=e)

    def _cancel(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    # -- rounds ----------------------------------------------------------------------

    def _round(self) -> None:
        self._timer = None
        self.beating = ensureDeferred(self._beat())

    async def _beat(self) -> None:
        started = utc_now(self.clock)
        try:
            a = self.advertised
            await self.store.heartbeat(self.instance_id, self.lifetime, software_version=a.software_version,
                                       schema_version=a.schema_version, server_url=a.server_url,
                                       derp_url=a.derp_url, now=started)
            live = await self.store.live(utc_now(self.clock))
        except Exception as e:
            self.failures += 1
            self.log.warn("instance heartbeat failed ({count} in a row): {error}", count=self.failures, error=e)
        else:
            self.failures = 0
            self._own_expiry = started + timedelta(seconds=self.lifetime)
            if self.running:
                self._apply(live)
            self._rounds += 1
            if self.prune_every and self._rounds % self.prune_every == 0:
                await self._prune()
        if self.running:
            self._timer = self.clock.callLater(self.interval, self._round)

    async def _prune(self) -> None:
        # Any instance may do it: deleting rows long expired twice is harmless.
        try:
            pruned = await self.store.prune(utc_now(self.clock))
        except Exception as e:
            self.log.warn("pruning instances long gone failed (next time): {error}", error=e)
        else:
            if pruned:
                self.log.info("pruned {count} instances gone for over an hour", count=pruned)

    def _apply(self, rows: list[Instance]) -> None:
        now_live = {row.id: row for row in rows}
        joined = tuple(now_live[key] for key in sorted(now_live.keys() - self._live.keys()))
        left = tuple(sorted(self._live.keys() - now_live.keys()))
        changed = bool(joined or left) or any(_advertised(now_live[key]) != _advertised(self._live[key])
                                              for key in now_live.keys() & self._live.keys())
        self._live = now_live
        if not (changed or self._first):
            return
        self._first = False
        for instance in joined:
            if instance.id != self.instance_id:
                self.log.info("instance {id} joined ({url})", id=instance.id, url=instance.server_url or "no URL")
        for ident in left:
            self.log.info("instance {id} left", id=ident)
        try:
            self._on_membership(Membership(live=self.live(), joined=joined, left=left))
        except Exception:
            self.log.failure("on_membership failed")


def _advertised(instance: Instance) -> tuple:
    return (instance.software_version, instance.schema_version, instance.server_url, instance.derp_url)


def membership_dispatch(consumers: Iterable[Callable[[Membership], Any]]) -> Callable[[Membership], None]:
    """One ``on_membership`` for the registry: hands each :class:`Membership` to every consumer in turn.

    A consumer that raises is logged and the others still get it; adding a consumer
    (the DERP mesh, online state, ...) is one more entry in the list the builder passes.
    """
    consumers = tuple(consumers)
    log = Logger(namespace=__name__)

    def dispatch(membership: Membership) -> None:
        for consumer in consumers:
            try:
                consumer(membership)
            except Exception:
                log.failure("membership consumer {consumer!r} failed", consumer=consumer)

    return dispatch
