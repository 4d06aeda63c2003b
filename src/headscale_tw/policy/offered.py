# -*- test-case-name: tests.policy.test_offered -*-
"""
The routes a router offers, with the rules that concern each one, kept across compilations.

A viewer gets a route of a peer in the peer's ``AllowedIPs`` when a rule
relates the viewer to it. For each route :func:`route_masks` finds, once, the
rules (by position) whose destinations and whose sources overlap it, so that a
viewer's test is two integer ANDs. A router may offer 1,024 routes.

:class:`OfferedRoutes` keeps each router's result while the router's entry
stays the same object. A recompilation gives new rule objects; the masks are
carried over unless a rule at some position changed *within the router's
routes*: the addresses a changed rule gained or lost are compared with the
span of the router's routes, never route by route, so a node joining elsewhere
in the tailnet costs a router nothing per route.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .ipset import IPSet, Range, ranges_overlap, ranges_xor
from .model import Network, Node

__all__ = ["OfferedRoute", "OfferedRoutes", "route_masks"]


@dataclass(frozen=True)
class OfferedRoute:
    """A route a peer offers, its text, and which rules' destinations and sources overlap it (bit masks)."""

    route: Network
    text: str
    dsts_hit: int
    srcs_hit: int


def route_masks(routes: Sequence[Network], matches: Sequence[Any]) -> tuple[tuple[int, int], ...]:
    """For each route: (matches whose destinations overlap it, matches whose sources do) as bit masks.

    Each route's bounds are computed once and each rule's ranges read once (the
    same test as ``IPSet.overlaps_network``, which converts the route again per
    call).
    """
    rules = [(1 << i, m.dsts.ranges(), m.srcs.ranges()) for i, m in enumerate(matches)]
    out = []
    for r in routes:
        fam, lo, hi = r.version, int(r.network_address), int(r.broadcast_address)
        dsts_hit = srcs_hit = 0
        for bit, dsts, srcs in rules:
            if any(f == fam and a <= hi and b >= lo for f, a, b in dsts):
                dsts_hit |= bit
            if any(f == fam and a <= hi and b >= lo for f, a, b in srcs):
                srcs_hit |= bit
        out.append((dsts_hit, srcs_hit))
    return tuple(out)


@dataclass(frozen=True)
class _Entry:
    peer: Node
    matches: Sequence[Any]
    offered: tuple[OfferedRoute, ...]
    span: tuple[Range, ...]


class OfferedRoutes:
    """
    Per router: its primary and exit routes with their rule masks, carried over recompilations.

    Work counters for tests: :attr:`routes_tested` counts routes whose masks
    were computed, :attr:`carried` the times a router's masks were kept for new
    rule objects.
    """

    def __init__(self) -> None:
        self._by_peer: dict[int, _Entry] = {}
        self.routes_tested = 0
        self.carried = 0

    def get(self, peer: Node, matches: Sequence[Any]) -> tuple[OfferedRoute, ...]:
        """``peer``'s offered routes under ``matches``; the same tuple object while nothing it shows changed."""
        entry = self._by_peer.get(peer.id)
        if entry is not None and entry.peer is peer:
            if entry.matches is matches:
                return entry.offered
            if self._still_right(entry, matches):
                self.carried += 1
                self._by_peer[peer.id] = _Entry(peer, matches, entry.offered, entry.span)
                return entry.offered
        routes = peer.primary_routes + peer.exit_routes
        text = peer.route_text
        self.routes_tested += len(routes)
        offered = tuple(
            OfferedRoute(r, text.get(r) or str(r), dsts_hit, srcs_hit)
            for r, (dsts_hit, srcs_hit) in zip(routes, route_masks(routes, matches))
        )
        span = IPSet((r.version, int(r.network_address), int(r.broadcast_address)) for r in routes).ranges()
        self._by_peer[peer.id] = _Entry(peer, matches, offered, span)
        return offered

    def forget(self, peer_id: int) -> None:
        """Drop what is kept for a node that is gone."""
        self._by_peer.pop(peer_id, None)

    @staticmethod
    def _still_right(entry: _Entry, matches: Sequence[Any]) -> bool:
        """Whether every mask of ``entry`` holds under ``matches`` (the same rules by position within its span)."""
        old = entry.matches
        if len(old) != len(matches):
            return False
        span = entry.span
        if not span:
            return True
        for before, after in zip(old, matches):
            if before is after:
                continue
            for a, b in ((before.dsts, after.dsts), (before.srcs, after.srcs)):
                if a is b:
                    continue
                if ranges_overlap(ranges_xor(a.ranges(), b.ranges()), span):
                    return False
        return True
