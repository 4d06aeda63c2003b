# -*- test-case-name: tests.control.test_presence -*-
"""
This instance's node streams in the shared ``node_sessions`` table, and the
cluster's online set read back from it: :class:`NodePresence` (issue #16).

:class:`~headscale_tw.control.notifier.MapNotifier` calls the presence
(``presence(node_id, True)``) when a node's first stream opens here and
(``presence(node_id, False)``) when its offline grace ends here. Each call
writes or deletes this instance's row and then publishes ``online``/``offline``
on the change feed, so every other instance re-reads the node's rows
(:class:`~headscale_tw.control.cluster.ClusterSync`). The writes for one node
run one at a time, in call order, so an open and the close that follows it
cannot swap; different nodes' writes run alongside.

A node is online while it has a row on a live instance; the store's reads
join the ``instances`` table, so the rows of a dead instance stop counting as
soon as its heartbeat runs out, before anyone deletes them.

``online_since`` (``NodeRuntime.online_since``) is the HA election's rank: the
value written with a row is the one this instance already knew (from another
instance's row while the node moves), or now, so it stays the same on every
instance and across moves.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from datetime import datetime

from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.logger import Logger

from headscale_tw.clock import utc_now
from headscale_tw.errors import NotFound
from headscale_tw.interfaces import INodeSessionStore

__all__ = ["NodePresence", "LATEST"]

#: The rank of an online node whose ``online_since`` is not known yet: after every known one.
LATEST = datetime.max.replace(tzinfo=None)


class NodePresence:
    """
    Writes this instance's node sessions and reads everyone's.

    :param store: the node session store (``db.node_sessions``).
    :param instance_id: this instance's id (the change feed's and the registry's).
    :param publish: the change feed's ``publish(kind, ident)`` coroutine function.
    :param state: the control state whose ``runtime[node].online_since`` is set here.
    :param clock: the injected clock.
    """

    log = Logger()

    def __init__(self, store: INodeSessionStore, instance_id: str, publish: Callable[[str, int], Awaitable[None]],
                 state, clock) -> None:
        self.store = store
        self.instance_id = instance_id
        self.publish = publish
        self.state = state
        self.clock = clock
        self._held: set[int] = set()
        #: node id -> [the chain of its queued writes, how many are queued]
        self._pending: dict[int, list] = {}
        self._outstanding: set[Deferred] = set()

    def now(self) -> datetime:
        """The injected clock's time."""
        return utc_now(self.clock)

    # -- this instance's rows ------------------------------------------------------

    def __call__(self, node_id: int, online: bool) -> Deferred:
        """The notifier's hook: ``node_id``'s first stream opened here, or its offline grace ended here."""
        runtimes = self.state.runtime
        runtime = runtimes.get(node_id)
        if online:
            self._held.add(node_id)
            if runtime is not None and runtime.online_since is None:
                runtimes.set_online_since(node_id, self.now())
            since = runtime.online_since if runtime is not None else None
            return self._queue(self._open, node_id, since or self.now())
        self._held.discard(node_id)
        if runtime is not None and not runtime.online:
            runtimes.set_online_since(node_id, None)
        return self._queue(self._close, node_id)

    def holds(self, node_id: int) -> bool:
        """Whether this instance has (or is writing) a row for ``node_id``."""
        return node_id in self._held

    def release(self, node_id: int) -> Deferred:
        """Delete this instance's row of ``node_id`` if there is one (it streams on another instance now)."""
        if node_id not in self._held:
            return succeed(None)
        self._held.discard(node_id)
        return self._queue(self._close, node_id)

    def _queue(self, work, node_id: int, *args) -> Deferred:
        """Run ``work(node_id, *args)`` after the writes already queued for that node (other nodes' run
        alongside: a reconnect storm is not one long line); the Deferred fires when it has run."""
        entry = self._pending.get(node_id)
        if entry is None:
            entry = self._pending[node_id] = [succeed(None), 0]
        entry[1] += 1
        done: Deferred = Deferred()

        def finished(_) -> None:
            entry[1] -= 1
            if entry[1] == 0 and self._pending.get(node_id) is entry:
                del self._pending[node_id]
            self._outstanding.discard(done)
            done.callback(None)

        def run(_):
            d = Deferred.fromCoroutine(work(node_id, *args))
            d.addErrback(lambda f: self.log.failure("writing the session of node {node_id}", f, node_id=node_id))
            d.addBoth(finished)
            return d

        self._outstanding.add(done)
        entry[0].addCallback(run)
        return done

    async def _open(self, node_id: int, since: datetime) -> None:
        if node_id not in self._held:
            return  # closed again before its turn came
        try:
            await self.store.open(node_id, self.instance_id, since)
        except NotFound:
            self._held.discard(node_id)
            return
        await self.publish("online", node_id)

    async def _close(self, node_id: int) -> None:
        if node_id in self._held:
            return  # opened again before its turn came
        if await self.store.close(node_id, self.instance_id):
            await self.publish("offline", node_id)

    async def close(self) -> list[int]:
        """A clean stop: delete every row of this instance (nobody streams here any more)."""
        self._held.clear()
        if self._outstanding:
            await DeferredList(list(self._outstanding))
        return await self.store.forget([self.instance_id], self.now())

    # -- everyone's rows ---------------------------------------------------------------

    async def rows(self, node_id: int) -> dict[str, datetime]:
        """``node_id``'s rows on live instances: instance id to ``connected_at``."""
        return await self.store.rows(node_id, self.now())

    async def online(self) -> dict[int, dict[str, datetime]]:
        """Every node with a row on a live instance, with its rows."""
        return await self.store.online(self.now())

    async def forget(self, instance_ids: Iterable[str]) -> list[int]:
        """Delete the rows of instances that left (and of any expired one); the nodes whose rows this deleted."""
        return await self.store.forget(instance_ids, self.now())

    def rank(self, node_id: int) -> tuple:
        """The HA election's sort key: when the node came online (unknown: last), then its id."""
        runtime = self.state.runtime.get(node_id)
        since = runtime.online_since if runtime is not None else None
        return (since.replace(tzinfo=None) if since is not None else LATEST, node_id)
