# -*- test-case-name: tests.control.test_policy_views -*-
"""
What each node was told, and what changes: the records of policy views.

:class:`NodeView` is what one node was last published (packet filter, peers
with their ``AllowedIPs``/``PrimaryRoutes``, SSH policy, capabilities, its own
entry); :class:`ViewChange` and :class:`Changes` are the differences the
:class:`~headscale_tw.control.policy.TailnetPolicy` returns for the notifier after a
change. :func:`all_peer_views` computes every node's peers from a compiled
policy in one pass (the full rebuild when no incremental index applies).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from headscale_tw.control.variants import Variant
from headscale_tw.policy.compile import CompiledPolicy, _overlaps_any

__all__ = ["NodeView", "ViewChange", "Changes", "all_peer_views"]


@dataclass(frozen=True)
class NodeView:
    """What one node was last told, for comparison with the next compilation."""

    filter: bytes
    peers: dict[int, Variant]
    ssh: Optional[bytes]
    caps: tuple[str, ...]
    self_allowed: tuple[str, ...]
    self_primary: tuple[str, ...]


@dataclass
class ViewChange:
    """The differences for one viewer; ``None``/empty = unchanged."""

    filter: Optional[bytes] = None
    ssh: Optional[bytes] = None
    self_changed: bool = False
    peers_changed: set[int] = field(default_factory=set)
    peers_removed: set[int] = field(default_factory=set)


@dataclass
class Changes:
    """
    What to tell whom after a change.

    ``viewers`` holds per-viewer differences; ``touched`` are nodes whose entry
    changed for every viewer that sees them; ``removed`` are nodes gone for all.
    """

    viewers: dict[int, ViewChange] = field(default_factory=dict)
    touched: set[int] = field(default_factory=set)
    removed: set[int] = field(default_factory=set)

    def viewer(self, node_id: int) -> ViewChange:
        return self.viewers.setdefault(node_id, ViewChange())

    def __bool__(self) -> bool:
        return bool(self.viewers or self.touched or self.removed)


def all_peer_views(cp: CompiledPolicy) -> dict[int, dict[int, Variant]]:
    """
    Every node's visible peers with their ``(AllowedIPs, PrimaryRoutes)``,
    equal to ``cp.peers_for(node)`` for each node but computed in O(rules × nodes)
    set tests plus bit operations when the rules are the same for every node
    (no ``autogroup:self``/``via``), instead of O(rules × nodes²) set tests.
    """
    nodes = sorted(cp.topology.nodes, key=lambda n: n.id)
    if cp.per_node or cp.allow_all or not nodes:
        return {
            n.id: {pv.node.id: (pv.allowed_ips, pv.primary_routes) for pv in cp.peers_for(n)} for n in nodes
        }
    matches = cp.matches_for(nodes[0])
    sets = [cp.resolver.node_set(n) for n in nodes]
    masks = []
    for m in matches:
        internet = m.dsts_is_internet()
        src = dst = 0
        for i, n in enumerate(nodes):
            node_routes = n.subnet_routes
            if m.srcs.overlaps(sets[i]) or _overlaps_any(m.srcs, node_routes):
                src |= 1 << i
            if m.dsts.overlaps(sets[i]) or _overlaps_any(m.dsts, node_routes) or (internet and n.is_exit_node):
                dst |= 1 << i
        if src and dst:
            masks.append((src, dst))
    v6_only = set()
    prefixes = []
    for n in nodes:
        if "disable-ipv4" in cp.cap_map_for(n):
            v6_only.add(n.id)
        both = n.prefix_strings
        six = n.prefix_strings_v6
        prefixes.append((both, six))
    out: dict[int, dict[int, Variant]] = {}
    for i, a in enumerate(nodes):
        bit = 1 << i
        reach = 0
        for src, dst in masks:
            if src & bit:
                reach |= dst
            if dst & bit:
                reach |= src
        reach &= ~bit
        peers: dict[int, Variant] = {}
        while reach:
            low = reach & -reach
            j = low.bit_length() - 1
            reach ^= low
            b = nodes[j]
            visible = prefixes[j][1] if (a.id in v6_only or b.id in v6_only) else prefixes[j][0]
            if b.primary_routes or b.subnet_routes or b.exit_routes:
                routes = cp.routes_for_peer(a, b, matches, sets[i])
            else:
                routes = []
            peers[b.id] = (
                tuple(visible) + tuple(str(r) for r in routes),
                tuple(str(r) for r in routes if r.prefixlen != 0),
            )
        out[a.id] = peers
    return out
