# -*- test-case-name: tests.cluster.test_cluster -*-
"""
Applies other instances' changes (from :mod:`headscale_tw.storage.changefeed`)
to this instance's :class:`~headscale_tw.control.state.ControlState` and map sessions.

Rows are never taken from the notification: a change only names a row, which is
re-read from the store, so an instance always ends with the newest committed
version whatever order notifications arrive in. Changes are applied one at a
time, in arrival order, and fanned out exactly like a local change:

* ``node``: re-read; a new row is ``node_added``, a changed one ``node_changed``
  (its own sessions here get the new self node too), a missing one is removed
  (``node_removed``; its DERP connections here are closed).
* ``user``: re-read and ``user_changed``; a missing one is dropped.
* ``policy``: the policy manager re-reads the newest stored policy.
* ``auth``: an auth request was approved or rejected elsewhere; if a client's
  ``Followup`` long-poll waits on it here, it is re-read and answered
  (:meth:`~headscale_tw.control.authrequests.AuthRequests.changed`).
* ``online``/``offline``: a node's row in ``node_sessions`` was written or
  deleted by another instance. The node's rows on live instances are re-read
  (:class:`~headscale_tw.control.presence.NodePresence`): it is online when one
  is on another instance (``NodeRuntime.elsewhere``; ephemeral collection skips
  such nodes), and ``online_since`` (the HA election's rank) is the earliest
  ``connected_at``. Peers here get ``OnlineChange`` and the election reruns.
  A node streaming here, or in its offline grace here, keeps its local state.
* membership (:meth:`ClusterSync.membership_changed`, from the
  :class:`~headscale_tw.control.instances.InstanceRegistry`): the rows of
  instances that left are deleted (idempotent; the one instance whose delete
  took them stores the nodes' ``last_seen``), then the whole online set is
  re-read and applied as above.
* resync (after the feed (re)connects): every user and node is re-read and the
  differences are applied as above, the online set too; auth requests waited
  on here are re-read.

This instance's own stream starts/ends are written and published by the
``NodePresence`` the notifier was built with.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger

from headscale_tw.errors import NotFound
from headscale_tw.storage.models import Change

__all__ = ["ClusterSync", "ClusterLink"]


@dataclass(frozen=True)
class ClusterLink:
    """What a control plane that shares its database with other instances is built with.

    ``instance_id`` is the change feed's (and the instance registry's) id;
    ``publish`` the feed's ``publish``; ``sessions`` the ``node_sessions``
    store; ``derp`` the local ``DERPServer`` (or ``None``); ``lease_for(job)``
    the lease this instance holds for a periodic job, or ``None`` (see
    :class:`~headscale_tw.control.lifecycle.NodeLifecycle`).
    """

    instance_id: str
    publish: Callable[[str, int], Awaitable[None]]
    sessions: Any
    derp: Any = None
    lease_for: Callable[[str], Any] | None = None


class ClusterSync:
    """The consumer of a change feed for one control plane.

    ``publish(kind, ident)`` is the feed's coroutine function (``ChangeFeed.publish``);
    ``derp`` is the local ``DERPServer`` (or ``None``); ``auth_requests`` the
    control plane's :class:`~headscale_tw.control.authrequests.AuthRequests` (or ``None``);
    ``presence`` the :class:`~headscale_tw.control.presence.NodePresence` the
    notifier writes this instance's streams through.
    """

    log = Logger()

    def __init__(self, state, notifier, policy, publish, presence, derp=None, auth_requests=None) -> None:
        self.state = state
        self.presence = presence
        self.auth_requests = auth_requests
        self.notifier = notifier
        self.policy = policy
        self.publish = publish
        self.derp = derp
        self._tail: Deferred = succeed(None)
        #: Called with each applied ``Change`` (``None`` for a resync, the ``Membership`` after a
        #: membership change); for tests and metrics.
        self.observers: list[Callable[[Change | None], object]] = []

    # -- feed callbacks --------------------------------------------------------

    def changed(self, change: Change) -> Deferred:
        """Queue one change from another instance; the Deferred fires once it is applied."""
        return self._enqueue(lambda: self._apply(change), change)

    def resync(self) -> Deferred:
        """Queue a full re-read of users, nodes and the policy."""
        return self._enqueue(self._resync, None)

    def membership_changed(self, membership) -> Deferred:
        """Queue the cleanup after instances left (or joined), then a re-read of the online set.

        ``membership`` is the registry's :class:`~headscale_tw.control.instances.Membership`.
        """
        return self._enqueue(lambda: self._membership(membership.left), membership)

    def _enqueue(self, work, change) -> Deferred:
        done: Deferred = Deferred()

        def run(_):
            d = Deferred.fromCoroutine(work())
            d.addErrback(lambda f: self.log.failure("applying cluster change {change}", f, change=change))
            d.addCallback(lambda _: self._applied(change))
            d.addBoth(lambda _: done.callback(None))
            return d

        self._tail.addCallback(run)
        return done

    def _applied(self, change) -> None:
        for observer in list(self.observers):
            observer(change)

    # -- applying ----------------------------------------------------------------

    async def _apply(self, change: Change) -> None:
        if change.kind == "node":
            await self._node(change.ident)
        elif change.kind == "user":
            await self._user(change.ident)
        elif change.kind == "policy":
            await self._reload_policy()
        elif change.kind == "auth":
            if self.auth_requests is not None:
                await self.auth_requests.changed(change.ident)
        elif change.kind in ("online", "offline"):
            if change.ident in self.state.nodes:
                rows = await self.presence.rows(change.ident)
                if self._apply_rows(change.ident, rows):
                    self.notifier.push(self.policy.update([change.ident]))

    async def _reload_policy(self) -> None:
        changes = await self.policy.reload()
        if changes is not None:
            self.notifier.push(changes)

    async def _node(self, node_id: int) -> None:
        try:
            row = await self.state.db.nodes.get(node_id)
        except NotFound:
            self._remove(node_id)
            return
        await self._user_known(row.user_id)
        previous = self.state.cache_node(row)
        if previous is None:
            self.notifier.node_added(node_id)
            # New here: whether it streams somewhere (its "online" may have come before this row).
            if self._apply_rows(node_id, await self.presence.rows(node_id)):
                self.notifier.push(self.policy.update([node_id]))
        elif previous != row:
            self.notifier.node_changed(node_id)

    async def _user_known(self, user_id: int | None) -> None:
        if user_id is not None and user_id not in self.state.users:
            try:
                self.state.users[user_id] = await self.state.db.users.get(user_id)
            except NotFound:
                pass

    def _remove(self, node_id: int) -> None:
        node = self.state.uncache_node(node_id)
        if node is None:
            return
        self.notifier.node_removed(node_id)
        if self.derp is not None and node.node_key.startswith("nodekey:"):
            try:
                self.derp.close_peer(bytes.fromhex(node.node_key[len("nodekey:"):]))
            except ValueError:
                pass

    async def _user(self, user_id: int) -> None:
        try:
            user = await self.state.db.users.get(user_id)
        except NotFound:
            self.state.users.pop(user_id, None)
            return
        if self.state.users.get(user_id) == user:
            return
        self.state.users[user_id] = user
        for node in self.state.nodes.values():
            if node.user_id == user_id:
                self.state.touch(node.id)
        self.notifier.user_changed(user_id)

    def _apply_rows(self, node_id: int, rows: dict[str, datetime]) -> bool:
        """Apply ``node_id``'s rows on live instances; whether the HA election must run for it."""
        state = self.state
        runtime = state.runtime.get(node_id)
        if runtime is None or node_id not in state.nodes:
            return False  # deleted meanwhile
        me = self.presence.instance_id
        others = [at for instance, at in rows.items() if instance != me]
        runtimes = state.runtime
        if self.notifier.is_connected(node_id) or (self.presence.holds(node_id) and not others):
            # It streams here (or is in its offline grace here): online is decided here; only the rank moves.
            runtimes.set_elsewhere(node_id, bool(others))
            known = [at for at in (*rows.values(), runtime.online_since) if at is not None]
            return self._rank(node_id, min(known) if known else None)
        online = bool(others)
        if online and self.presence.holds(node_id):
            # It came back on another instance during its offline grace here: not offline, and our row goes.
            self.notifier.cancel_offline_grace(node_id)
            self.presence.release(node_id)
        runtimes.set_elsewhere(node_id, online)
        ranked = self._rank(node_id, min(others) if online else None)
        was = runtime.online
        if not runtimes.set_online(node_id, online):
            return ranked and online
        if was is not None or online:
            self.notifier.announce_online(node_id, online)
        return True

    def _rank(self, node_id: int, since: datetime | None) -> bool:
        if not self.state.runtime.set_online_since(node_id, since):
            return False
        self.policy.election.reconsider(node_id)
        return True

    async def _membership(self, left: Iterable[str]) -> None:
        taken = await self.presence.forget(left)
        await self._reconcile_online()
        # Exactly one instance's delete took these rows: it stores when the nodes were last seen.
        now = self.state.now()
        for node_id in taken:
            runtime = self.state.runtime.get(node_id)
            if runtime is not None and runtime.online is False:
                try:
                    await self.state.update_node(node_id, last_seen=now)
                except NotFound:
                    pass

    async def _reconcile_online(self) -> None:
        online = await self.presence.online()
        elect = [node_id for node_id in list(self.state.nodes) if self._apply_rows(node_id, online.get(node_id, {}))]
        if elect:
            self.notifier.push(self.policy.update(elect))

    async def _resync(self) -> None:
        db = self.state.db
        users = {user.id: user for user in await db.users.list()}
        for user_id, user in users.items():
            if self.state.users.get(user_id) != user:
                await self._user(user_id)
        for user_id in [u for u in self.state.users if u not in users]:
            await self._user(user_id)
        stored = {node.id: node for node in await db.nodes.list()}
        for node_id in list(self.state.nodes):
            if node_id not in stored:
                await self._node(node_id)  # re-checks: it may have been created here meanwhile
        for node_id, row in stored.items():
            if self.state.nodes.get(node_id) != row:
                await self._node(node_id)
        await self._reload_policy()
        await self._reconcile_online()
        if self.auth_requests is not None:
            await self.auth_requests.recheck()
        self.log.info("cluster resync: {users} users, {nodes} nodes", users=len(users), nodes=len(stored))
