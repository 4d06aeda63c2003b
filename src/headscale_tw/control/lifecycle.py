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
"""

from __future__ import annotations

from datetime import datetime, timedelta

from twisted.logger import Logger

from headscale_tw.control.audit import NO_AUDIT, SYSTEM, AuditLog, Target
from headscale_tw.control.registration import Registrar
from headscale_tw.control.state import ControlState
from headscale_tw.interfaces import INodeNotifier

__all__ = ["NodeLifecycle"]


class NodeLifecycle:
    """Expiry sweep and ephemeral garbage collection over the control state."""

    log = Logger()

    def __init__(self, state: ControlState, notifier: INodeNotifier, registrar: Registrar, config,
                 audit: AuditLog = NO_AUDIT) -> None:
        self.state = state
        self.notifier = notifier
        self.registrar = registrar
        self.audit = audit
        self.inactivity = config.node.ephemeral_inactivity_timeout
        self._started: datetime = state.now()
        self._announced: set[int] = set()

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
        for node_id in newly:
            self.state.touch(node_id)
            self.notifier.node_changed(node_id)
            node = self.state.get(node_id)
            await self.audit.record("node.expired", Target("node", str(node_id), node.given_name), actor=SYSTEM,
                                    detail={"expiry": node.expiry.isoformat() if node.expiry else None})
        if newly:
            self.log.info("expired nodes announced: {ids}", ids=newly)
        return newly

    async def collect_ephemeral(self) -> list[int]:
        """Delete ephemeral nodes idle longer than the inactivity timeout; return their ids."""
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
                                    detail={"reason": "ephemeral node inactive"})
        if doomed:
            self.log.info("ephemeral nodes removed: {ids}", ids=doomed)
        return doomed

    async def forget_stale_registrations(self) -> int:
        """Delete auth requests past their lifetime, finished or not; return how many."""
        return await self.registrar.expire_pending()
