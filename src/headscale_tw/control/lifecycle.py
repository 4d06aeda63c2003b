# -*- test-case-name: tests.control.test_lifecycle -*-
"""
Periodic node lifecycle jobs, meant to be driven by ``TimerService``s.

* :meth:`NodeLifecycle.expire_due` pushes nodes whose key expiry has just
  passed to their peers (``Expired:true``) and to themselves.
* :meth:`NodeLifecycle.collect_ephemeral` deletes ephemeral nodes whose last
  map session ended more than ``node.ephemeral_inactivity_timeout`` ago.
* :meth:`NodeLifecycle.forget_stale_registrations` deletes auth requests
  (interactive registrations) whose lifetime has passed.

Each returns what it did, so tests (and logs) can check it; errors are for
the caller's wrapper to log.

Several instances on one database (``lease_for`` given): each job is done by
the one instance holding its lease (:data:`LIFECYCLE_LEASES`, each kept by a
:class:`~headscale_tw.control.lease.LeaseKeeper` the builder starts).
Ephemeral collection and the registration sweep run only on the holder. The
expiry sweep runs everywhere, because every instance must tell its own
streams, but only the holder records ``node.expired`` in the audit log, and
that row is fenced by the lease (a holder that lost its lease writes nothing),
so one expiry is one row. A node that expires while no instance holds the
lease (its holder died, nobody took over yet) gets no row.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

from twisted.logger import Logger

from headscale_tw.control.audit import NO_AUDIT, SYSTEM, AuditLog, Target
from headscale_tw.control.registration import Registrar
from headscale_tw.control.state import ControlState
from headscale_tw.interfaces import INodeNotifier
from headscale_tw.storage.models import Lease

__all__ = ["NodeLifecycle", "LIFECYCLE_LEASES", "EXPIRY_LEASE", "EPHEMERAL_LEASE", "REGISTRATIONS_LEASE"]

#: The lease names of the lifecycle jobs, one per job, the same on every instance.
EXPIRY_LEASE = "lifecycle:node-expiry"
EPHEMERAL_LEASE = "lifecycle:ephemeral-gc"
REGISTRATIONS_LEASE = "lifecycle:stale-registrations"
LIFECYCLE_LEASES = (EXPIRY_LEASE, EPHEMERAL_LEASE, REGISTRATIONS_LEASE)


class NodeLifecycle:
    """Expiry sweep and ephemeral garbage collection over the control state.

    ``lease_for(name)`` returns the tenure this instance holds of lease
    ``name`` (one of :data:`LIFECYCLE_LEASES`), or ``None``; without it (one
    instance) every job runs here.
    """

    log = Logger()

    def __init__(self, state: ControlState, notifier: INodeNotifier, registrar: Registrar, config,
                 audit: AuditLog = NO_AUDIT, lease_for: Callable[[str], Lease | None] | None = None) -> None:
        self.state = state
        self.notifier = notifier
        self.registrar = registrar
        self.audit = audit
        self.inactivity = config.node.ephemeral_inactivity_timeout
        self._started: datetime = state.now()
        self._announced: set[int] = set()
        self._lease_for = lease_for

    def _acts(self, name: str) -> tuple[bool, Lease | None]:
        """Whether this instance does job ``name`` now, and the tenure to fence its writes with."""
        if self._lease_for is None:
            return True, None
        lease = self._lease_for(name)
        return lease is not None, lease

    async def expire_due(self) -> list[int]:
        """Announce nodes whose expiry has passed since the last sweep; return their ids."""
        now = self.state.now()
        newly = []
        for node in list(self.state.nodes.values()):
            expired = node.expiry is not None and node.expiry <= now
            if expired and node.id not in self._announced:
                newly.append(node.id)
                self._announced.add(node.id)
            elif not expired:
                self._announced.discard(node.id)
        self._announced &= set(self.state.nodes)
        records, lease = self._acts(EXPIRY_LEASE)
        for node_id in newly:
            self.state.touch(node_id)
            self.notifier.node_changed(node_id)
            node = self.state.get(node_id)
            if records:
                await self.audit.record("node.expired", Target("node", str(node_id), node.given_name), actor=SYSTEM,
                                        detail={"expiry": node.expiry.isoformat() if node.expiry else None},
                                        lease=lease)
        if newly:
            self.log.info("expired nodes announced: {ids}", ids=newly)
        return newly

    async def collect_ephemeral(self) -> list[int]:
        """Delete ephemeral nodes idle longer than the inactivity timeout; return their ids."""
        acts, lease = self._acts(EPHEMERAL_LEASE)
        if not acts:
            return []
        now = self.state.now()
        cutoff = now - timedelta(seconds=self.inactivity)
        doomed = []
        for node in list(self.state.nodes.values()):
            if not node.ephemeral or self.notifier.is_connected(node.id):
                continue
            runtime = self.state.runtime.get(node.id)
            if runtime is not None and runtime.elsewhere:
                continue  # it streams on another instance of the cluster
            since = runtime.disconnected_at if runtime else None
            if since is None:
                # Never streamed here: idle since it was registered, or since this
                # instance started (whichever is later), never since an earlier start.
                created = node.created_at
                since = max(self._started, created) if created is not None else self._started
            if since <= cutoff:
                doomed.append(node.id)
        for node_id in doomed:
            node = await self.state.delete_node(node_id)
            self.notifier.node_removed(node_id)
            await self.audit.record("node.delete", Target("node", str(node_id), node.given_name), actor=SYSTEM,
                                    detail={"reason": "ephemeral node inactive"}, lease=lease)
        if doomed:
            self.log.info("ephemeral nodes removed: {ids}", ids=doomed)
        return doomed

    async def forget_stale_registrations(self) -> int:
        """Delete auth requests past their lifetime, finished or not; return how many."""
        if not self._acts(REGISTRATIONS_LEASE)[0]:
            return 0
        return await self.registrar.expire_pending()
