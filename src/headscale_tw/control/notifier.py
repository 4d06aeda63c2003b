# -*- test-case-name: tests.control.test_notifier -*-
"""
Fans changes out to map sessions (the domain's :class:`INodeNotifier`).

Rules:

* One live stream per node: a new stream **replaces** older ones (they are
  finished), as the client runs one map poll at a time and an older one is
  a leftover of a dead connection.
* A change is built and serialized **once**, and framed at most once per
  encoding (zstd or plain, as each stream's ``MapRequest.Compress`` asked, and
  only encodings some receiving stream uses); the same bytes are written to
  every session of that encoding that should see it; work grows
  with the number of receiving sessions, never with N² node pairs. Finding
  them is proportional too: with a policy only the changed node's watchers
  (its peers, visibility being symmetric) are visited, not every session.
* Policy: before announcing a node change the notifier lets the
  :class:`~headscale_tw.control.policy.TailnetPolicy` take it in; the
  resulting per-viewer differences (filter, peers gained/lost, routes, SSH
  policy, self caps) are merged into one message per viewer, and viewers
  whose messages are identical share one frame (:meth:`MapNotifier.push`).
* Online: a node is online while it has a stream. When its last stream ends
  it stays online for ``offline_grace`` seconds, so a quick reconnect is not
  announced to peers at all; then peers get ``OnlineChange``/``PeerSeenChange``.
* Batching: every change is recorded the same way. Policy and peer
  differences are held per viewer as a :class:`HeldDelta` (peers changed and
  removed: the last word per peer wins; latest filter/SSH policy; self node if
  any asked); patches and online flags, the same for every viewer of a node,
  once per node as a :class:`PeerNews`, whose viewers are found at the flush.
  Joins share one policy update per flush. With ``batch_delay`` > 0 the flush
  comes that many seconds after the first held change; with ``0`` it runs at
  once. At the flush each viewer's delta becomes a :class:`DeltaMessage`
  (entries, patches and flags built from the state then; a full entry or a
  removal of a peer supersedes its news), and viewers with equal ones share
  one message. A stream's full map drops what was held for it (news recorded
  before it opened included); any other write (broadcasts, full maps) flushes
  first, so each stream still gets every change in order.
  With several instances, the ``presence`` hook given at construction records
  the first stream here and the end of the grace in the shared database.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from zope.interface import implementer

from headscale_tw.control.framing import ZSTD, FramedMessage
from headscale_tw.control.mapper import Mapper
from headscale_tw.control.policy import TailnetPolicy
from headscale_tw.control.sessions import MapSession, keepalive_interval
from headscale_tw.control.state import ControlState
from headscale_tw.control.variants import Variant
from headscale_tw.control.views import Changes
from headscale_tw.counters import MapCounters, Stopwatch
from headscale_tw.errors import NotFound
from headscale_tw.interfaces import INodeNotifier

__all__ = ["MapNotifier", "HeldDelta", "PeerNews", "DeltaMessage"]


@dataclass(slots=True)
class HeldDelta:
    """
    What one viewer is owed since the last flush, merged.

    Peers carry the last word only (changed or removed); their entries are
    built at the flush from the state then, so several changes of one peer
    within a window cost one entry (which also supersedes that peer's
    :class:`PeerNews`).
    """

    #: peer id -> True: send its full entry; False: send it as removed.
    peers: dict[int, bool] = field(default_factory=dict)
    #: The latest packet filter, if the viewer's filter changed.
    packet_filter: bytes | None = None
    #: The latest SSH policy, if it changed.
    ssh: bytes | None = None
    #: The viewer's own ``Node`` changed.
    self_node: bool = False

    def merge(self, changed: Iterable[int], removed: Iterable[int], packet_filter: bytes | None,
              ssh: bytes | None, self_node: bool) -> None:
        """Fold one change in: removals first, so a peer both removed and changed ends changed."""
        peers = self.peers
        for pid in removed:
            peers[pid] = False
        for pid in changed:
            peers[pid] = True
        if packet_filter is not None:
            self.packet_filter = packet_filter
        if ssh is not None:
            self.ssh = ssh
        self.self_node = self.self_node or self_node


@dataclass(slots=True)
class PeerNews:
    """
    What every viewer of one node is owed about it, the same for all of them:
    patched fields (``PeersChangedPatch``, built at the flush from the node's
    state then) and whether it came online or went offline (``OnlineChange``).

    Held once per node, not per viewer, so a change fanned out to N streams
    costs one record; the viewers are found at the flush. ``seq`` orders it
    against streams opened meanwhile (their full map already has it).
    """

    seq: int
    patched: set[str] = field(default_factory=set)
    online: bool | None = None


@dataclass(frozen=True, slots=True)
class DeltaMessage:
    """
    The delta one viewer gets at a flush, as a key: viewers with equal ones
    share one built and framed message.

    ``self_of`` is the viewer when its own ``Node`` is in the message (which
    no other viewer may share), else ``None``.
    """

    changed: tuple[tuple[int, Variant], ...] = ()
    removed: tuple[int, ...] = ()
    packet_filter: bytes | None = None
    ssh: bytes | None = None
    self_of: int | None = None
    #: ``(peer id, sorted field names)`` for each ``PeersChangedPatch`` entry.
    patches: tuple[tuple[int, tuple[str, ...]], ...] = ()
    #: ``(peer id, online)`` for ``OnlineChange``.
    online: tuple[tuple[int, bool], ...] = ()

    def __bool__(self) -> bool:
        return bool(self.changed or self.removed or self.packet_filter is not None or self.ssh is not None
                    or self.self_of is not None or self.patches or self.online)

    @property
    def response_type(self) -> str:
        """Headscale's ``response_type`` of this delta (its ``change.Type()``): policy, peers, patch or self."""
        if self.packet_filter is not None or self.ssh is not None:
            return "policy"
        if self.changed or self.removed:
            return "peers"
        if self.patches or self.online:
            return "patch"
        return "self"


def _news_message(news: dict[int, PeerNews], about: Iterable[int]) -> DeltaMessage:
    """The patches and online flags of the nodes ``about`` (sorted by id), as a delta."""
    patches = []
    online = []
    for node_id in about:
        item = news[node_id]
        if item.patched:
            patches.append((node_id, tuple(sorted(item.patched))))
        if item.online is not None:
            online.append((node_id, item.online))
    return DeltaMessage(patches=tuple(patches), online=tuple(online))


@implementer(INodeNotifier)
class MapNotifier:
    """Registry of map sessions plus the fan-out of deltas."""

    log = Logger()

    def __init__(
        self,
        state: ControlState,
        mapper: Mapper,
        policy: TailnetPolicy,
        clock,
        offline_grace: float = 10.0,
        interval: Callable[[], float] = keepalive_interval,
        batch_delay: float = 0.0,
        presence: Callable[[int, bool], object] | None = None,
    ) -> None:
        self.state = state
        self.mapper = mapper
        self.clock = clock
        self.offline_grace = offline_grace
        self.interval = interval
        self.sessions: dict[int, list[MapSession]] = {}
        self._offline_timers: dict[int, IDelayedCall] = {}
        self._stopping = False
        #: Frames built (one per message and encoding some stream needed); a work counter.
        self.frames_built = 0
        #: Sessions examined to find who a change concerns (push, peers of a node); a work counter.
        self.viewers_visited = 0
        #: Seconds deltas are held to be merged; ``0`` sends each at once.
        self.batch_delay = batch_delay
        #: viewer -> what it is owed at the next flush
        self._pending: dict[int, HeldDelta] = {}
        #: node -> what all its viewers are owed about it at the next flush
        self._news: dict[int, PeerNews] = {}
        #: ``PeerNews.seq`` of the latest news; streams opened since the last flush -> seq at their opening
        self._seq = 0
        self._opened: dict[int, int] = {}
        #: nodes joined since the last flush: node id -> whether its own sessions need ``Node``
        self._changed_nodes: dict[int, bool] = {}
        #: flushes begun so far: a message's looked-up variants hold while no other flush began
        self._flushes = 0
        self.policy_updates = 0
        #: Messages built and sent, lite updates and ended streams (``headscale_mapresponse_*``).
        self.map_counters = MapCounters()
        self._flush_timer: IDelayedCall | None = None
        self.policy = policy
        #: Called with ``(node_id, True)`` when a node's first stream opens here (none open, no offline
        #: grace pending) and ``(node_id, False)`` when its offline grace ends here (cluster mode:
        #: :class:`~headscale_tw.control.presence.NodePresence`).
        self.presence = presence

    # -- sessions ----------------------------------------------------------

    def open_stream(self, node_id: int, write, finish, unsent=None, abort=None,
                    encoding: str = ZSTD) -> MapSession:
        """
        Start a streaming session for ``node_id``: full map first, then deltas.

        ``unsent()`` (bytes written but not taken by the client) and ``abort()``
        let the session drop a client that stopped reading (see :class:`MapSession`);
        ``encoding`` is the frame encoding the client asked for.
        """
        node = self.state.get(node_id)
        # Its full map supersedes whatever was held for it; other streams keep their batch
        # (flushing here made every reconnect in a storm a flush of everyone's deltas).
        self._pending.pop(node_id, None)
        self._opened[node_id] = self._seq
        older = list(self.sessions.get(node_id, ()))
        first_here = not older and node_id not in self._offline_timers
        session = MapSession(node_id, write, finish, self.clock, self._session_closed, self.interval,
                             unsent=unsent, abort=abort, encoding=encoding, counters=self.map_counters)
        self.sessions.setdefault(node_id, []).append(session)
        self._cancel_offline_timer(node.id)
        came_online = self.state.runtime.came_online(node.id)
        if first_here and self.presence is not None:
            self.presence(node_id, True)  # before the election below: it ranks by online_since
        changes = self.policy.update([node_id])  # HA election may pick this router
        session.start(self._frame(self.mapper.full_map(node_id), "full"))
        for old in older:
            old.close()
        if came_online:
            self._online_to_peers(node_id, True)
        changes.viewers.pop(node_id, None)  # its full map is already current
        self.push(changes, exclude=node_id)
        return session

    def one_shot(self, node_id: int, encoding: str = ZSTD) -> bytes:
        """The framed full map for a non-streaming, non-lite request."""
        # a node that joined in a held batch is taken in now: the policy side does not catch up on reads
        self.push(self.policy.update([node_id]), exclude=node_id)
        return self._frame(self.mapper.full_map(node_id), "full").framed(encoding)

    @property
    def held(self) -> int:
        """Changes waiting for the next batch flush: joined nodes, viewers with held deltas, nodes with news."""
        return len(self._changed_nodes) + len(self._pending) + len(self._news)

    def is_connected(self, node_id: int) -> bool:
        """True while the node has a live stream."""
        return bool(self.sessions.get(node_id))

    def _cancel_offline_timer(self, node_id: int) -> None:
        timer = self._offline_timers.pop(node_id, None)
        if timer is not None and timer.active():
            timer.cancel()

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
            self.state.runtime.disconnected(session.node_id)
            self._cancel_offline_timer(session.node_id)
            self._offline_timers[session.node_id] = self.clock.callLater(
                self.offline_grace, self._went_offline, session.node_id
            )

    def _went_offline(self, node_id: int) -> None:
        self._offline_timers.pop(node_id, None)
        if node_id not in self.state.nodes or self.sessions.get(node_id):
            return
        self.state.runtime.went_offline(node_id)
        self._online_to_peers(node_id, False)
        self.push(self.policy.update([node_id]))  # fail its primary routes over
        self._persist_last_seen(node_id)
        if self.presence is not None:
            self.presence(node_id, False)

    def _persist_last_seen(self, node_id: int) -> Deferred:
        async def save():
            try:
                await self.state.update_node(node_id, last_seen=self.state.now())
            except NotFound:
                pass

        d = Deferred.fromCoroutine(save())
        d.addErrback(lambda f: self.log.failure("saving last_seen of node {node_id}", f, node_id=node_id))
        return d

    def cancel_offline_grace(self, node_id: int) -> None:
        """Forget a pending "went offline" for ``node_id`` (it is streaming again, maybe elsewhere)."""
        self._cancel_offline_timer(node_id)

    def announce_online(self, node_id: int, online: bool) -> None:
        """Tell every stream that sees ``node_id`` that it came online or went offline."""
        self._online_to_peers(node_id, online)

    # -- finding who a change concerns ---------------------------------------

    def _viewers_of(self, node_id: int) -> list[int]:
        """
        The streaming nodes that have ``node_id`` among their peers.

        With a policy only the node's watchers (its peers, as visibility is
        symmetric) are visited, not every session; with no policy every other
        session sees it.
        """
        policy, sessions = self.policy, self.sessions
        if policy.uniform:
            if node_id not in self.state.nodes:
                return []
            self.viewers_visited += len(sessions)
            return [viewer for viewer in sessions if viewer != node_id]
        watchers = policy.watchers(node_id)
        if watchers is None:  # no view of it yet: ask every session
            watchers = sessions
        out = []
        for viewer in watchers:
            if viewer in sessions:
                self.viewers_visited += 1
                if policy.sees(viewer, node_id):
                    out.append(viewer)
        return out

    # -- recording changes (held until the next flush; at once without batching) --

    def _held(self, viewer: int) -> HeldDelta:
        held = self._pending.get(viewer)
        if held is None:
            held = self._pending[viewer] = HeldDelta()
        return held

    def _settle(self) -> int:
        """
        After a change was recorded: send it now (no batching, or shutting
        down) or make sure a flush is due; return the messages built now.
        """
        if self.batch_delay <= 0 or self._stopping:
            return self.flush()
        if (self._pending or self._news or self._changed_nodes) and self._flush_timer is None:
            self._flush_timer = self.clock.callLater(self.batch_delay, self.flush)
        return 0

    def _news_of(self, node_id: int) -> PeerNews:
        self._seq += 1
        news = self._news.get(node_id)
        if news is None:
            news = self._news[node_id] = PeerNews(self._seq)
        else:
            news.seq = self._seq
        return news

    def _online_to_peers(self, node_id: int, online: bool) -> None:
        self._news_of(node_id).online = online
        self._settle()

    def push(self, changes: Changes, touched: Iterable[int] = (), exclude: int | None = None) -> int:
        """
        Send policy/route differences (a :class:`~headscale_tw.control.views.Changes`)
        plus full entries of ``touched`` nodes to every streaming viewer they concern.

        One message per viewer; identical messages are built and framed once.
        Only viewers the change concerns are visited (those with per-viewer
        differences and those that see a touched node), except when nodes are
        removed for all or, with no policy, a touched node is seen by everyone.
        Returns the number of messages built now (none while batching holds them).
        """
        self._record(changes, touched, exclude)
        return self._settle()

    def _record(self, changes: Changes, touched: Iterable[int], exclude: int | None) -> None:
        touched = set(touched) | changes.touched
        policy, nodes, sessions = self.policy, self.state.nodes, self.sessions
        uniform = policy.uniform
        seen: dict[int, set[int]] = {}  # viewer -> touched nodes it sees (with a policy)
        present: set[int] = set()  # touched nodes everyone sees (no policy)
        if uniform:
            present = {t for t in touched if t in nodes}
            everyone = bool(present or changes.removed)
        else:
            for t in touched:
                for viewer in self._viewers_of(t):
                    seen.setdefault(viewer, set()).add(t)
            everyone = bool(changes.removed)
        if everyone:
            viewers = list(sessions)
            self.viewers_visited += len(viewers)
        else:  # those that see a touched node (visited above) and those with their own differences
            viewers = list(seen)
            for viewer in changes.viewers:
                if viewer in sessions and viewer not in seen:
                    viewers.append(viewer)
                    self.viewers_visited += 1
        for viewer in viewers:
            if viewer == exclude or viewer not in nodes:
                continue
            vc = changes.viewers.get(viewer)
            changed = present - {viewer} if uniform else seen.get(viewer) or set()
            removed = set(changes.removed)
            packet_filter = ssh = None
            self_node = False
            if vc is not None:
                changed |= vc.peers_changed
                removed |= vc.peers_removed
                packet_filter, ssh, self_node = vc.filter, vc.ssh, vc.self_changed
            removed.discard(viewer)
            if not (changed or removed or packet_filter is not None or ssh is not None or self_node):
                continue
            self._held(viewer).merge(changed, removed, packet_filter, ssh, self_node)

    # -- sending -------------------------------------------------------------

    def flush(self) -> int:
        """
        Take in the nodes changed meanwhile (one policy update for all of them),
        then send every held delta, one merged message per viewer; return messages built.
        """
        if self._changed_nodes:
            changed, self._changed_nodes = self._changed_nodes, {}
            self._apply_node_changes(changed)
        timer, self._flush_timer = self._flush_timer, None
        if timer is not None and timer.active():
            timer.cancel()
        pending, self._pending = self._pending, {}
        news, self._news = self._news, {}
        opened, self._opened = self._opened, {}
        if not (pending or news):
            return 0
        self._flushes += 1
        nodes = self.state.nodes
        # viewer -> the nodes whose news it gets (those it sees, unless its stream opened since)
        told: dict[int, list[int]] = {}
        for node_id in sorted(news):
            if node_id not in nodes:
                continue
            seq = news[node_id].seq
            for viewer in self._viewers_of(node_id):
                if opened.get(viewer, -1) < seq:
                    told.setdefault(viewer, []).append(node_id)
        groups: dict[DeltaMessage, list[int]] = {}
        for viewer, held in pending.items():
            message = self._message_for(viewer, held, news, told.get(viewer, ()))
            if message:
                groups.setdefault(message, []).append(viewer)
        # viewers owed only news: those told the same nodes share one message
        shared: dict[tuple[int, ...], list[int]] = {}
        for viewer, told_about in told.items():
            if viewer not in pending and viewer in nodes:
                shared.setdefault(tuple(told_about), []).append(viewer)
        for news_of, viewers in shared.items():
            groups.setdefault(_news_message(news, news_of), []).extend(viewers)
        return self._send_groups(groups)

    def _message_for(self, viewer: int, held: HeldDelta, news: dict[int, PeerNews],
                     told: Iterable[int]) -> DeltaMessage | None:
        """What ``viewer`` gets for ``held`` and the news it is told, built from the state now
        (``None``: it no longer streams)."""
        policy, nodes = self.policy, self.state.nodes
        if viewer not in nodes or not self.sessions.get(viewer):
            return None
        last = held.peers
        changed = sorted(pid for pid, up in last.items() if up and pid in nodes and policy.sees(viewer, pid))
        kept = set(changed)
        removed = sorted(pid for pid in last if pid not in kept)
        # a full entry or a removal supersedes the news of that peer
        about = [pid for pid in told if pid not in last]
        message = _news_message(news, about)
        return DeltaMessage(
            changed=tuple((pid, policy.variant(viewer, pid)) for pid in changed),
            removed=tuple(removed),
            packet_filter=held.packet_filter,
            ssh=held.ssh,
            self_of=viewer if held.self_node else None,
            patches=message.patches,
            online=message.online,
        )

    def _send_groups(self, groups: dict[DeltaMessage, list[int]]) -> int:
        """Build one delta per group of viewers with identical views, frame it once, write it to all."""
        nodes = self.state.nodes
        shared: dict = {}  # parts equal messages have in common (such as a joining hub's entry)
        flushes = self._flushes
        for message, viewers in groups.items():
            # the variants in the key were looked up at this flush; a flush begun
            # meanwhile (by a write) may have changed them, so look them up again then
            current = flushes == self._flushes
            built = self.mapper.delta(
                viewers[0],
                changed=() if current else [pid for pid, _ in message.changed],
                removed=message.removed,
                packet_filter=message.packet_filter,
                ssh=message.ssh,
                self_node=message.self_of is not None,
                patches=[self.mapper.patch_for(nodes[pid], fields) for pid, fields in message.patches],
                online=message.online,
                shared=shared,
                variants=message.changed if current else None,
            )
            self._write_to(viewers, self._frame(built, message.response_type))
        return len(groups)

    def _frame(self, message: bytes, response_type: str) -> FramedMessage:
        """Wrap a built message for framing; count it under ``response_type`` (see :class:`MapCounters`)."""
        self.map_counters.count_generated(response_type)
        return FramedMessage(message, self._frame_built)

    def _frame_built(self, encoding: str) -> None:
        self.frames_built += 1

    def _write_to(self, node_ids: Iterable[int], framed: FramedMessage) -> int:
        if self._pending or self._news or self._changed_nodes:
            self.flush()  # whatever is held goes first, so every stream gets changes in order
        count = 0
        for node_id in node_ids:
            for session in list(self.sessions.get(node_id, ())):
                session.send(framed)
                count += 1
        return count

    # -- INodeNotifier: what the domain reports ------------------------------

    def node_changed(self, node_id: int, self_too: bool = True) -> None:
        """Peers get the node's full entry in ``PeersChanged``; its own sessions get ``Node``."""
        if node_id not in self.state.nodes:
            return
        self._apply_node_changes({node_id: self_too})

    def _apply_node_changes(self, nodes: dict[int, bool]) -> None:
        ids = [node_id for node_id in nodes if node_id in self.state.nodes]
        if not ids:
            return
        self.policy_updates += 1
        counters = self.state.counters
        batch = Stopwatch(self.clock.seconds)
        changes = self.policy.update(ids)
        counters.peers_seconds.observe(batch.elapsed())
        for node_id in ids:
            if nodes[node_id]:
                changes.viewer(node_id).self_changed = True
        self.push(changes, touched=ids)
        counters.batch_size.observe(len(ids))
        counters.batch_seconds.observe(batch.elapsed())

    def user_changed(self, user_id: int) -> None:
        """A user was renamed or changed (after ``state.refresh_user``): its nodes' entries and policy views."""
        nodes = [n for n, node in self.state.nodes.items() if node.user_id == user_id]
        self.push(self.policy.update(nodes), touched=nodes)

    def node_added(self, node_id: int) -> None:
        """
        A new node: peers learn about it through ``PeersChanged``.

        With batching the join is only noted: at the flush, every node that
        joined meanwhile goes through *one* policy update, so a burst of
        registrations costs one recompilation per batch, not one per node.
        Anything that publishes state (a full map, any other write) flushes
        first; the new node's own requests catch its view up on demand.
        """
        if node_id not in self.state.nodes:
            return
        self._changed_nodes.setdefault(node_id, False)
        self._settle()

    def node_patched(self, node_id: int, fields: Iterable[str]) -> None:
        """Only patchable fields changed (endpoints, DERP home, disco key, key, key expiry)."""
        if node_id not in self.state.nodes:
            return
        # held like any news; the patch is built at the flush from the node's state then
        self._news_of(node_id).patched.update(fields)
        self._settle()

    def node_removed(self, node_id: int) -> None:
        """Peers that saw it get ``PeersRemoved`` (plus any policy fallout); its own streams end."""
        self.mapper.forget(node_id)
        self._cancel_offline_timer(node_id)
        self.push(self.policy.update([node_id]), exclude=node_id)
        for session in list(self.sessions.get(node_id, ())):
            session.close()

    def policy_changed(self) -> None:
        """Every session gets a fresh full map (a big hammer; policy changes normally use :meth:`push`)."""
        for node_id in list(self.sessions):
            if node_id in self.state.nodes:
                self._write_to([node_id], self._frame(self.mapper.full_map(node_id), "full"))

    def broadcast(self, message: bytes) -> None:
        """Send one message to every session (e.g. a new DERP map)."""
        self._write_to(list(self.sessions), self._frame(message, "config"))

    def send_each(self, message_for: Callable[[int], bytes]) -> None:
        """Send every streaming node its own message (e.g. a DNSConfig holding its own name)."""
        for node_id in list(self.sessions):
            if node_id in self.state.nodes:
                self._write_to([node_id], self._frame(message_for(node_id), "config"))

    def stop(self) -> None:
        """Close every session and cancel every timer (service shutdown)."""
        self._stopping = True
        self._pending.clear()
        self._news.clear()
        self._opened.clear()
        self._changed_nodes.clear()
        if self._flush_timer is not None and self._flush_timer.active():
            self._flush_timer.cancel()
        self._flush_timer = None
        for timer in self._offline_timers.values():
            if timer.active():
                timer.cancel()
        self._offline_timers.clear()
        for node_id in list(self.sessions):
            for session in list(self.sessions.get(node_id, ())):
                session.close()
