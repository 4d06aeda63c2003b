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
* ``online``/``offline``: the node's map stream started/ended on another
  instance; peers here get ``OnlineChange`` and the HA route election reruns.
  ``NodeRuntime.elsewhere`` marks such nodes (ephemeral collection skips them).
* resync (after the feed (re)connects): every user and node is re-read and the
  differences are applied as above; auth requests waited on here are re-read.

This instance's own stream starts/ends are published through ``MapNotifier.presence``.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger

from headscale_tw.errors import NotFound
from headscale_tw.storage.models import Change

__all__ = ["ClusterSync"]


class ClusterSync:
    """The consumer of a change feed for one control plane.

    ``publish(kind, ident)`` is the feed's coroutine function (``ChangeFeed.publish``);
    ``derp`` is the local ``DERPServer`` (or ``None``); ``auth_requests`` the
    control plane's :class:`~headscale_tw.control.authrequests.AuthRequests` (or ``None``).
    """

    log = Logger()

    def __init__(self, state, notifier, policy, publish, derp=None, auth_requests=None) -> None:
        self.state = state
        self.auth_requests = auth_requests
        self.notifier = notifier
        self.policy = policy
        self.publish = publish
        self.derp = derp
        self._tail: Deferred = succeed(None)
        #: Called with each applied ``Change`` (or ``None`` for a resync); for tests and metrics.
        self.observers: list[Callable[[Change | None], object]] = []
        notifier.presence = self.presence

    # -- feed callbacks --------------------------------------------------------

    def changed(self, change: Change) -> Deferred:
        """Queue one change from another instance; the Deferred fires once it is applied."""
        return self._enqueue(lambda: self._apply(change), change)

    def resync(self) -> Deferred:
        """Queue a full re-read of users, nodes and the policy."""
        return self._enqueue(self._resync, None)

    def presence(self, node_id: int, online: bool) -> Deferred:
        """Tell the other instances that ``node_id``'s stream started or ended here."""
        d = Deferred.fromCoroutine(self.publish("online" if online else "offline", node_id))
        d.addErrback(lambda f: self.log.failure("publishing presence of node {node_id}", f, node_id=node_id))
        return d

    def _enqueue(self, work, change: Change | None) -> Deferred:
        done: Deferred = Deferred()

        def run(_):
            d = Deferred.fromCoroutine(work())
            d.addErrback(lambda f: self.log.failure("applying cluster change {change}", f, change=change))
            d.addCallback(lambda _: self._applied(change))
            d.addBoth(lambda _: done.callback(None))
            return d

        self._tail.addCallback(run)
        return done

    def _applied(self, change: Change | None) -> None:
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
            self._presence(change.ident, change.kind == "online")

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

    def _presence(self, node_id: int, online: bool) -> None:
        state = self.state
        if node_id not in state.nodes or self.notifier.is_connected(node_id):
            return  # unknown here, or its live stream is on this instance
        runtime = state.runtime[node_id]
        runtime.elsewhere = online
        if online:
            # A grace timer from a stream that used to be here must not announce it offline.
            self.notifier.cancel_offline_grace(node_id)
            runtime.disconnected_at = None
        else:
            runtime.disconnected_at = state.now()
        if runtime.online == online:
            return
        runtime.online = online
        state.touch(node_id)
        self.notifier.announce_online(node_id, online)
        self.notifier.push(self.policy.update([node_id]))

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
        if self.auth_requests is not None:
            await self.auth_requests.recheck()
        self.log.info("cluster resync: {users} users, {nodes} nodes", users=len(users), nodes=len(stored))
