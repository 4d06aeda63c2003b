# -*- test-case-name: tests.control.test_policy_in_force -*-
"""
The tailnet's policy in force and what it means for each node's map.

:class:`TailnetPolicy` is what the mapper, notifier, poll service, cluster
sync, admin services and SSH checks call. It composes single-purpose parts,
each in its own module:

* :class:`~headscale_tw.control.policy_source.PolicySource`: where the text
  comes from (``policy.mode`` ``file`` or ``database``), reading, storing
  and parsing it;
* :class:`~headscale_tw.control.policy_inputs.PolicyInputs`: each node as the
  policy engine sees it, what changed, and the subnet-route HA election;
* :class:`~headscale_tw.control.compilation.PolicyCompilation`: the engine in
  force compiled over those inputs, incrementally, and checks of new policies;
* :class:`~headscale_tw.control.viewcache.ViewCache`: each node's published
  view (filter, peers, SSH policy, caps, own entry), kept up to date
  incrementally, and the differences (:class:`Changes`) an update makes;
* the ``tagOwners`` and ``autoApprovers`` rules, pure, in
  :mod:`headscale_tw.policy.tags` and :mod:`headscale_tw.policy.approval`.

It never talks to the notifier: whatever changes views (:meth:`TailnetPolicy.update`,
:meth:`~TailnetPolicy.set_policy`, :meth:`~TailnetPolicy.reload`) returns the
:class:`Changes`, and the caller pushes them. Reads (:meth:`~TailnetPolicy.peer_ids`,
:meth:`~TailnetPolicy.filter_bytes`, ...) change nothing: a node is known once a
writer called :meth:`~TailnetPolicy.update` for it.

A policy that fails to parse or whose ``tests``/``sshTests`` fail is rejected
with :class:`PolicyRejected` and the previous one stays in force.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Optional

from twisted.logger import Logger
from zope.interface import implementer

from headscale_tw.control.compilation import PolicyCompilation
from headscale_tw.control.election import RouteElection
from headscale_tw.control.policy_inputs import PolicyInputs, users_key
from headscale_tw.control.policy_source import PolicyRejected, PolicySource, PolicyUpdateRefused
from headscale_tw.control.routes import announced_routes, approved_routes, normalize_approval
from headscale_tw.control.variants import Variant
from headscale_tw.control.viewcache import ALLOW_ALL_BYTES, ALLOW_ALL_FILTER, ViewCache
from headscale_tw.control.views import Changes, NodeView, ViewChange, all_peer_views
from headscale_tw.counters import Histogram
from headscale_tw.errors import InvalidInput
from headscale_tw.interfaces import ITailnetPolicy
from headscale_tw.policy.approval import pending_approval, routes_to_approve
from headscale_tw.policy.compile import CompiledPolicy, PolicyEngine
from headscale_tw.policy.model import PolicyError
from headscale_tw.policy.ssh import check_period
from headscale_tw.policy.tags import defines_tag, unowned_tags

__all__ = [
    "TailnetPolicy",
    "PolicySource",
    "PolicyRejected",
    "PolicyUpdateRefused",
    "NodeView",
    "ViewChange",
    "Changes",
    "Variant",
    "ALLOW_ALL_FILTER",
    "all_peer_views",
]


def _regrouped(before: tuple, after: tuple) -> Optional[set[int]]:
    """The ids of users whose IdP groups changed, when nothing else about users did (else None)."""
    if len(before) != len(after):
        return None
    out = set()
    for old, new in zip(before, after):
        if old[:3] != new[:3]:
            return None
        if old[3] != new[3]:
            out.add(new[0])
    return out


@implementer(ITailnetPolicy)
class TailnetPolicy:
    """
    The policy in force, its compilation over the current nodes, and per-node views.

    ``state`` is the :class:`~headscale_tw.control.state.ControlState` (users,
    nodes, runtime, ``now``); ``source`` the :class:`PolicySource` (default:
    none, allow all).
    """

    log = Logger()

    def __init__(self, state, source: PolicySource | None = None, election: RouteElection | None = None) -> None:
        self.state = state
        self.source = source if source is not None else PolicySource()
        #: ``election``: several instances pass one ranked by when each router came online (shared state).
        self.inputs = PolicyInputs(state, election)
        self.compilation = PolicyCompilation(PolicyEngine(None, server_url=self.source.server_url), state.now)
        self.views = ViewCache(self.inputs)
        #: The text of the policy in force (``""``: none, allow all).
        self.text = ""
        # the users the views were last brought up to date with (a ``users_key``)
        self._view_users: tuple = ()

    # -- what is in force ----------------------------------------------------------

    @property
    def election(self) -> RouteElection:
        """The HA route election the views are built with (cluster mode re-ranks it from shared state)."""
        return self.inputs.election

    @property
    def engine(self) -> PolicyEngine:
        """The parsed policy in force."""
        return self.compilation.engine

    @property
    def uniform(self) -> bool:
        """True with no policy: allow all, everyone sees everyone the same way."""
        return self.compilation.engine.policy is None

    @property
    def mode(self) -> str:
        """``policy.mode``: ``"file"`` or ``"database"``."""
        return self.source.mode

    @property
    def path(self) -> str:
        """``policy.path`` (file mode; ``""``: none)."""
        return self.source.path

    @property
    def compile_seconds(self) -> Histogram:
        """Seconds per policy compilation (a metric)."""
        return self.compilation.compile_seconds

    def adopt(self, engine: PolicyEngine, text: str) -> None:
        """Put ``engine`` (parsed from ``text``) in force; views are not recomputed (see :meth:`load`)."""
        self.compilation.adopt(engine)
        self.text = text

    def compiled(self) -> CompiledPolicy:
        """The policy compiled against the known nodes (recompiled only when stale)."""
        return self.compilation.compiled(self.inputs, users_key(self.state))

    def _compiled_or_none(self) -> Optional[CompiledPolicy]:
        return None if self.uniform else self.compiled()

    # -- loading, policy text: get / check / set / reload -----------------------------

    async def load(self) -> None:
        """Read the policy (file or database) and index every node; call once at start.

        :raises PolicyRejected: if the stored/file policy is invalid (the server should not start).
        """
        text = await self.source.read()
        self.inputs.sync_all()
        if text:
            self.adopt(self._checked(text), text)
        self.rebuild_views()

    def rebuild_views(self) -> None:
        """Compute every known node's view afresh and keep it as published (start, tests)."""
        self.views.rebuild(self._compiled_or_none())
        self.inputs.dirty.clear()
        self._view_users = users_key(self.state)

    def get_policy(self) -> str:
        """The text of the policy in force (``""`` = none, allow all)."""
        return self.text

    def check_policy(self, text: str) -> None:
        """Validate ``text`` against the current nodes without applying it.

        :raises PolicyRejected: naming the problem (parse error, failed test).
        """
        self.compilation.check(self.source.parse(text), self.inputs)

    def _checked(self, text) -> PolicyEngine:
        """``text`` parsed and compiled over the known nodes, synced with the state first.

        That compilation is the one :meth:`_apply` puts in force when no node changes
        in between (one compilation per policy change).
        """
        engine = self.source.parse(text)
        self.inputs.sync_all()
        self.compilation.check(engine, self.inputs, users_key(self.state))
        return engine

    async def set_policy(self, text: str) -> Changes:
        """Validate, store (database mode) and apply ``text``; return what each viewer must be told.

        :raises PolicyUpdateRefused: in file mode.
        :raises PolicyRejected: if invalid; the old policy stays in force.
        """
        self.source.refuse_unless_writable()
        engine = self._checked(text)
        await self.source.store_text(text, now=self.state.now())
        return await self._apply(engine, text)

    async def reload(self) -> Optional[Changes]:
        """Re-read the policy source (SIGHUP); return what changed, or None if the policy did not.

        A rejected or unreadable source is logged, the old policy stays and None is returned.
        """
        try:
            text = await self.source.read()
            if text == self.text:
                return None
            engine = self._checked(text)
        except (PolicyError, InvalidInput) as e:
            self.log.error("policy reload rejected, previous policy stays in force: {reason}", reason=str(e))
            return None
        changes = await self._apply(engine, text)
        self.log.info("policy reloaded ({mode})", mode=self.mode)
        return changes

    async def _apply(self, engine: PolicyEngine, text: str) -> Changes:
        # ``engine`` was checked over the nodes synced with the state just before (:meth:`_checked`);
        # whatever changed since (the store's write is awaited) the sync below takes in
        inputs, views = self.inputs, self.views
        before = views.materialized(self._compiled_or_none())
        # the kept views are those of the nodes as they are now: only the policy changes them
        settled = not inputs.dirty and not self.uniform and users_key(self.state) == self._view_users
        self.adopt(engine, text)
        await self._auto_approve_all()
        inputs.sync_all()
        cp = self._compiled_or_none()
        after = views.compute(cp, keep_peers=settled and not inputs.dirty)
        changes = views.diff(before, after)
        views.rebuild(cp, after)
        inputs.dirty.clear()
        self._view_users = users_key(self.state)
        return changes

    # -- changes of nodes and users ------------------------------------------------------

    def update(self, node_ids: Iterable[int] = ()) -> Changes:
        """
        Take in changes of ``node_ids`` (created, updated or deleted in the
        state), of online state and of users; return what each viewer must be told.
        """
        inputs = self.inputs
        for node_id in node_ids:
            inputs.mark(node_id)
        inputs.elect()
        users = users_key(self.state)
        if users != self._view_users:
            regrouped = _regrouped(self._view_users, users)
            self._view_users = users
            if not self.uniform:
                # A sign-in that changed only IdP groups concerns the nodes of those users (and,
                # through the rules naming the groups, whoever the rule index finds); any other
                # change of users, every node.
                inputs.dirty.update(inputs.nodes if regrouped is None else inputs.owned_by(regrouped))
        try:
            if not inputs.dirty:
                return Changes()
            dirty, inputs.dirty = inputs.dirty, set()
            return self.views.update(self._compiled_or_none(), dirty)
        finally:
            inputs.previous.clear()

    # -- reads for the mapper / notifier (no side effects) ------------------------------

    def _view(self, node_id: int) -> Optional[NodeView]:
        return None if self.uniform else self.views.get(node_id)

    def peer_ids(self, node_id: int) -> list[int]:
        """The ids ``node_id`` sees as peers, sorted."""
        if self.uniform:
            return sorted(k for k in self.state.nodes if k != node_id)
        view = self.views.get(node_id)
        return sorted(view.peers) if view is not None else []

    def sees(self, viewer_id: int, node_id: int) -> bool:
        """Whether ``viewer_id`` has ``node_id`` among its peers."""
        if viewer_id == node_id:
            return False
        if self.uniform:
            return node_id in self.state.nodes
        view = self.views.get(viewer_id)
        return view is not None and node_id in view.peers

    def watchers(self, node_id: int) -> Optional[Iterable[int]]:
        """
        The nodes that may have ``node_id`` among their peers (every node for
        which :meth:`sees` can be true, possibly more), or None when that is
        every node (no policy) or not known (``node_id`` has no view).

        Visibility is symmetric (``CompiledPolicy.sees``; the rule masks of
        :func:`all_peer_views` and the rule index give ``a`` reach ``b``
        exactly when ``b`` reaches ``a``), so these are ``node_id``'s own
        peers: the fan-out visits them instead of every session.
        """
        if self.uniform:
            return None
        view = self.views.get(node_id)
        return None if view is None else view.peers.keys()

    def _uniform_entry(self, node_id: int):
        """A node's (peer, self) entries with no policy; one not taken in yet is derived, not kept."""
        if node_id in self.inputs.nodes:
            return self.views.uniform_entry(node_id)
        node = self.state.nodes.get(node_id)
        return None if node is None else self.views.uniform_entry_of(self.inputs.node_for(node))

    def variant(self, viewer_id: int, node_id: int) -> Variant:
        """``(AllowedIPs, PrimaryRoutes)`` of ``node_id`` as ``viewer_id`` sees it."""
        view = self._view(viewer_id)
        if view is not None and node_id in view.peers:
            return view.peers[node_id]
        entry = self._uniform_entry(node_id)
        return ((), ()) if entry is None else entry[0]

    def filter_bytes(self, node_id: int) -> bytes:
        """The node's ``PacketFilter`` as JSON bytes."""
        if self.uniform:
            return ALLOW_ALL_BYTES
        view = self.views.get(node_id)
        return view.filter if view is not None else b"[]"

    def ssh_bytes(self, node_id: int) -> Optional[bytes]:
        """The node's ``SSHPolicy`` JSON bytes, or None (policy without ``ssh``)."""
        view = self._view(node_id)
        return view.ssh if view is not None else None

    def self_view(self, node_id: int) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
        """``(AllowedIPs, PrimaryRoutes, policy caps)`` of the node's own entry."""
        if self.uniform:
            entry = self._uniform_entry(node_id)
            return ((), (), ()) if entry is None else (entry[1][0], entry[1][1], ())
        view = self.views.get(node_id)
        if view is None:
            return (), (), ()
        return view.self_allowed, view.self_primary, view.caps

    def ssh_check_period(self, src_id: int, dst_id: int) -> Optional[float]:
        """Seconds an SSH check from ``src_id`` to ``dst_id`` stays good (0: check every time).

        None when no ``check`` rule of the policy in force lets ``src_id`` SSH to ``dst_id``.
        """
        if self.uniform:
            return None
        known, nodes = self.inputs.nodes, self.state.nodes
        src, dst = (known.get(i) or (self.inputs.node_for(nodes[i]) if i in nodes else None)
                    for i in (src_id, dst_id))
        if src is None or dst is None:
            return None
        return check_period(self.compiled(), src, dst)

    def primary_routes(self, node_id: int) -> tuple[str, ...]:
        """The subnet prefixes ``node_id`` is currently primary for."""
        return tuple(str(r) for r in self.inputs.election.primary_routes(node_id))

    # -- route approval (the database write stays here; the rule is in policy.approval) ----

    async def auto_approve(self, node_id: int) -> bool:
        """Approve the node's announced routes that ``autoApprovers`` allow; True if any were.

        The caller tells the notifier (the node changed).
        """
        if self.uniform or node_id not in self.state.nodes:
            return False
        node = self.state.nodes[node_id]
        approved = approved_routes(node)
        pending = pending_approval(announced_routes(node), approved)
        if not pending:
            return False
        self.inputs.mark(node_id)
        new = routes_to_approve(self.compiled(), self.inputs.nodes[node_id], pending)
        if not new:
            return False
        routes = normalize_approval(approved + tuple(new))
        await self.state.update_node(node_id, approved_routes=routes)
        self.log.info("auto-approved routes {routes} for node {node_id}", routes=[str(r) for r in new], node_id=node_id)
        self.inputs.mark(node_id)
        return True

    async def _auto_approve_all(self) -> list[int]:
        """Run auto-approval over every node (after a policy change); return the ids changed."""
        changed = []
        for node_id in sorted(self.state.nodes):
            if await self.auto_approve(node_id):
                changed.append(node_id)
        return changed

    # -- tags ----------------------------------------------------------------------------

    def defines_tag(self, tag: str) -> bool:
        """Whether the policy declares ``tag`` in ``tagOwners`` (always True with no policy)."""
        return defines_tag(self.engine.policy, tag)

    def may_own_tags(self, tags: Iterable[str], user_id: Optional[int], node_tags: Iterable[str] = ()) -> list[str]:
        """
        The tags in ``tags`` that neither ``user_id`` nor the node's current
        tags own per ``tagOwners`` (empty = all permitted). With no policy no
        tag can be requested by a node.
        """
        return unowned_tags(self._compiled_or_none(), tags, user_id, node_tags)
