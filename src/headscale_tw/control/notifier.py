# -*- test-case-name: tests.control.test_notifier -*-
"""
Fans changes out to map sessions (the domain's :class:`INodeNotifier`).

Rules:

* One live stream per node: a new stream **replaces** older ones (they are
  finished), as the client runs one map poll at a time and an older one is
  a leftover of a dead connection.
* A change is built, serialized, compressed and framed **once**, and the
  same bytes are written to every session that should see it; work grows
  with the number of receiving sessions, never with N² node pairs.
* Online: a node is online while it has a stream. When its last stream ends
  it stays online for ``offline_grace`` seconds, so a quick reconnect is not
  announced to peers at all; then peers get ``OnlineChange``/``PeerSeenChange``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from zope.interface import implementer

from headscale_tw.control.framing import frame
from headscale_tw.control.mapper import Mapper
from headscale_tw.control.sessions import MapSession, keepalive_interval
from headscale_tw.control.state import ControlState
from headscale_tw.errors import NotFound
from headscale_tw.interfaces import INodeNotifier

__all__ = ["MapNotifier"]


@implementer(INodeNotifier)
class MapNotifier:
    """Registry of map sessions plus the fan-out of deltas."""

    log = Logger()

    def __init__(
        self,
        state: ControlState,
        mapper: Mapper,
        clock,
        offline_grace: float = 10.0,
        interval: Callable[[], float] = keepalive_interval,
    ) -> None:
        self.state = state
        self.mapper = mapper
        self.clock = clock
        self.offline_grace = offline_grace
        self.interval = interval
        self.sessions: dict[int, list[MapSession]] = {}
        self._offline_timers: dict = {}
        self._stopping = False
        self.frames_built = 0

    # -- sessions ----------------------------------------------------------

    def open_stream(self, node_id: int, write, finish) -> MapSession:
        """Start a streaming session for ``node_id``: full map first, then deltas."""
        node = self.state.get(node_id)
        older = list(self.sessions.get(node_id, ()))
        session = MapSession(node_id, write, finish, self.clock, self._session_closed, self.interval)
        self.sessions.setdefault(node_id, []).append(session)
        came_online = self._mark_online(node.id)
        session.start(self._frame(self.mapper.full_map(node_id)))
        for old in older:
            old.close()
        if came_online:
            self._to_peers(node_id, self.mapper.online_changed(node_id, True))
        return session

    def one_shot(self, node_id: int) -> bytes:
        """The framed full map for a non-streaming, non-lite request."""
        return self._frame(self.mapper.full_map(node_id))

    def is_connected(self, node_id: int) -> bool:
        """True while the node has a live stream."""
        return bool(self.sessions.get(node_id))

    def _mark_online(self, node_id: int) -> bool:
        timer = self._offline_timers.pop(node_id, None)
        if timer is not None and timer.active():
            timer.cancel()
        runtime = self.state.runtime[node_id]
        runtime.disconnected_at = None
        if runtime.online:
            return False
        runtime.online = True
        self.state.touch(node_id)
        return True

    def _session_closed(self, session: MapSession) -> None:
        live = self.sessions.get(session.node_id, [])
        if session in live:
            live.remove(session)
        if live:
            return
        self.sessions.pop(session.node_id, None)
        if self._stopping:
            return
        if session.node_id in self.state.nodes:
            runtime = self.state.runtime[session.node_id]
            runtime.disconnected_at = self.state.now()
            old = self._offline_timers.pop(session.node_id, None)
            if old is not None and old.active():
                old.cancel()
            self._offline_timers[session.node_id] = self.clock.callLater(
                self.offline_grace, self._went_offline, session.node_id
            )

    def _went_offline(self, node_id: int) -> None:
        self._offline_timers.pop(node_id, None)
        if node_id not in self.state.nodes or self.sessions.get(node_id):
            return
        runtime = self.state.runtime[node_id]
        runtime.online = False
        self.state.touch(node_id)
        self._to_peers(node_id, self.mapper.online_changed(node_id, False))
        self._persist_last_seen(node_id)

    def _persist_last_seen(self, node_id: int) -> Deferred:
        async def save():
            try:
                await self.state.update_node(node_id, last_seen=self.state.now())
            except NotFound:
                pass

        d = Deferred.fromCoroutine(save())
        d.addErrback(lambda f: self.log.failure("saving last_seen of node {node_id}", f, node_id=node_id))
        return d

    # -- fan-out -----------------------------------------------------------

    def _frame(self, message: bytes) -> bytes:
        self.frames_built += 1
        return frame(message)

    def _write_to(self, node_ids: Iterable[int], framed: bytes) -> int:
        count = 0
        for node_id in node_ids:
            for session in list(self.sessions.get(node_id, ())):
                session.send(framed)
                count += 1
        return count

    def _to_peers(self, node_id: int, message: bytes) -> None:
        """Frame ``message`` once and write it to every streaming node that sees ``node_id``."""
        targets = [viewer for viewer in self.sessions if self.state.visible(viewer, node_id)]
        if targets:
            self._write_to(targets, self._frame(message))

    def node_changed(self, node_id: int, self_too: bool = True) -> None:
        """Peers get the node's full entry in ``PeersChanged``; its own sessions get ``Node``."""
        if node_id not in self.state.nodes:
            return
        self._to_peers(node_id, self.mapper.peers_changed([node_id]))
        if self_too and self.sessions.get(node_id):
            self._write_to([node_id], self._frame(self.mapper.self_update(node_id)))

    def node_added(self, node_id: int) -> None:
        """A new node: peers learn about it through ``PeersChanged``."""
        self.node_changed(node_id, self_too=False)

    def node_patched(self, node_id: int, fields: Iterable[str]) -> None:
        """Only patchable fields changed (endpoints, DERP home, disco key, key, key expiry)."""
        if node_id not in self.state.nodes:
            return
        patch = self.mapper.patch_for(self.state.nodes[node_id], fields)
        self._to_peers(node_id, self.mapper.peers_patched([patch]))

    def node_removed(self, node_id: int) -> None:
        """Peers get ``PeersRemoved``; the node's own streams end."""
        self.mapper.forget(node_id)
        timer = self._offline_timers.pop(node_id, None)
        if timer is not None and timer.active():
            timer.cancel()
        framed = self._frame(self.mapper.peers_removed([node_id]))
        self._write_to([viewer for viewer in self.sessions if viewer != node_id], framed)
        for session in list(self.sessions.get(node_id, ())):
            session.close()

    def policy_changed(self) -> None:
        """Every session gets a fresh full map (``Peers`` replaces the peer set)."""
        for node_id in list(self.sessions):
            if node_id in self.state.nodes:
                self._write_to([node_id], self._frame(self.mapper.full_map(node_id)))

    def broadcast(self, message: bytes) -> None:
        """Send one message to every session (e.g. a new DERP map)."""
        self._write_to(list(self.sessions), self._frame(message))

    def stop(self) -> None:
        """Close every session and cancel every timer (service shutdown)."""
        self._stopping = True
        for timer in self._offline_timers.values():
            if timer.active():
                timer.cancel()
        self._offline_timers.clear()
        for node_id in list(self.sessions):
            for session in list(self.sessions.get(node_id, ())):
                session.close()
