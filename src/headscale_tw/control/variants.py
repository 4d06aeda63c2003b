# -*- test-case-name: tests.control.test_variants -*-
"""
A peer as each viewer sees it, computed once per *class* of viewers.

A router's entry in a viewer's map (``AllowedIPs``, ``PrimaryRoutes``) lists
its addresses and the routes the viewer may use. Which routes those are
depends on the viewer only through the rules it takes part in
(:meth:`~headscale_tw.policy.compile.CompiledPolicy.route_view_key`), so every
viewer with the same key gets the same entry. :class:`PeerVariants` keeps the
entries of each router per key while the router and its offered routes (their
rule masks, :class:`~headscale_tw.policy.offered.OfferedRoutes`, carried over
recompilations that do not change them) stay the same: a router announcing
1,024 routes to a thousand viewers of one kind costs one pass over its routes,
not a thousand, and a node joining elsewhere costs none.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from typing import Any, Optional

from headscale_tw.policy.ipset import IPSet
from headscale_tw.policy.model import Node

__all__ = ["PeerVariants", "Variant"]

#: A peer as one viewer sees it: (AllowedIPs, PrimaryRoutes), both tuples of prefix strings.
Variant = tuple[tuple[str, ...], tuple[str, ...]]


class PeerVariants:
    """
    Entries of peers with routes, kept per router and viewer key.

    ``intern`` makes equal variants one object (views compare them by
    identity first). ``computed`` counts the route lists actually built: the
    work a change of a router costs (tests assert it grows with the number of
    viewer classes, not of viewers).
    """

    def __init__(self, intern: Callable[[Any], Any]) -> None:
        self._intern = intern
        #: router id -> (the router, its offered routes, {(key, v6 only): variant}); the offered
        #: routes are the same tuple while every mask in them holds, across compilations.
        self._by_router: dict[int, tuple[Node, Sequence[Any], dict[Hashable, Variant]]] = {}
        self.computed = 0

    def variant(self, cp: Any, viewer: Node, peer: Node, matches: Sequence[Any], viewer_set: IPSet,
                v6_only: bool) -> Variant:
        """``peer`` as ``viewer`` sees it (``cp`` is the :class:`~headscale_tw.policy.compile.CompiledPolicy`)."""
        prefixes = peer.prefix_strings_v6 if v6_only else peer.prefix_strings
        if not (peer.primary_routes or peer.subnet_routes or peer.exit_routes):
            return self._intern((prefixes, ()))
        key = cp.route_view_key(viewer, matches, viewer_set)
        known: Optional[dict[Hashable, Variant]] = None
        if key is not None:
            offered = cp.offered_routes(peer, matches)
            entry = self._by_router.get(peer.id)
            if entry is None or entry[0] is not peer or entry[1] is not offered:
                entry = (peer, offered, {})
                self._by_router[peer.id] = entry
            known = entry[2]
            found = known.get((key, v6_only))
            if found is not None:
                return found
        self.computed += 1
        routes = cp.route_texts_for_peer(viewer, peer, matches, viewer_set)
        variant = self._intern((
            tuple(prefixes) + tuple(t for _, t in routes),
            tuple(t for r, t in routes if r.prefixlen != 0),
        ))
        if known is not None:
            known[(key, v6_only)] = variant
        return variant

    def forget(self, router_id: int) -> None:
        """Drop what is kept for a node that is gone."""
        self._by_router.pop(router_id, None)

    def clear(self) -> None:
        """Drop everything (a new policy)."""
        self._by_router.clear()
