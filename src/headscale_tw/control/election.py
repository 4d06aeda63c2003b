# -*- test-case-name: tests.control.test_election -*-
"""
Which online router is *primary* for each subnet prefix (docs/control.md, *Policy integration*, Routes).

Candidates for a prefix are the online nodes serving it. The previous primary
stays while it is a candidate (no flapping); otherwise the candidate with the
lowest node id wins. Exit routes (``/0``) are not elected.

:class:`RouteElection` is incremental: each call of :meth:`RouteElection.elect`
compares the candidates with the previous call's, by identity first, and
re-elects only the prefixes of nodes whose candidacy changed. A change of one
router costs work in its own routes, however many other routers there are;
a call where nothing changed costs one look per router.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from typing import Union

__all__ = ["RouteElection", "sort_key"]

Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]


def sort_key(prefix: Network) -> tuple[int, int, int]:
    """The order of prefixes in listings and maps: family, address, length.

    The address as an integer: comparing ``ipaddress`` objects is a Python call
    per comparison (n log n of them), converting is one per prefix.
    """
    return (prefix.version, int(prefix.network_address), prefix.prefixlen)


class RouteElection:
    """Primary router per subnet prefix, sticky across re-elections.

    ``primaries`` maps each prefix to its primary node; ``by_node`` is the same
    map turned around, so that a node's primary prefixes are found without
    scanning every prefix. ``visited`` counts the prefixes looked at (work
    counts in tests).
    """

    def __init__(self) -> None:
        self.primaries: dict[Network, int] = {}
        self.by_node: dict[int, set[Network]] = {}
        self.visited = 0
        self._candidates: dict[int, frozenset[Network]] = {}
        self._given: dict[int, object] = {}
        self._holders: dict[Network, set[int]] = {}
        self._sorted: dict[int, tuple[Network, ...]] = {}

    def elect(self, candidates: Mapping[int, Iterable[Network]]) -> set[int]:
        """
        Re-elect from ``candidates`` (online node id → subnet routes it serves).

        Returns the ids of nodes whose set of primary prefixes changed. A node
        missing from ``candidates`` (offline, deleted, serving nothing) loses
        its prefixes to the other candidates.
        """
        affected: set[Network] = set()
        for node_id in [n for n in self._given if n not in candidates]:
            affected |= self._set_candidate(node_id, frozenset())
        for node_id, routes in candidates.items():
            if self._given.get(node_id) is routes:
                continue  # the very same object as last time: nothing to look at
            affected |= self._set_candidate(node_id, frozenset(r for r in routes if r.prefixlen != 0))
            self._given[node_id] = routes
        changed: set[int] = set()
        holders = self._holders
        for prefix in affected:
            self.visited += 1
            previous = self.primaries.get(prefix)
            ids = holders.get(prefix)
            winner = None if not ids else (previous if previous in ids else min(ids))
            if winner == previous:
                continue
            if previous is not None:
                self._move(prefix, previous, None)
                changed.add(previous)
            if winner is not None:
                self._move(prefix, None, winner)
                changed.add(winner)
        return changed

    def _set_candidate(self, node_id: int, new: frozenset[Network]) -> frozenset[Network]:
        """Record what ``node_id`` serves now; return the prefixes it gained or lost."""
        old = self._candidates.get(node_id, frozenset())
        if not new:
            self._candidates.pop(node_id, None)
            self._given.pop(node_id, None)
        if new == old:
            return frozenset()
        if new:
            self._candidates[node_id] = new
        holders = self._holders
        if not old or not new:  # a first announcement or a withdrawal: no set differences to hash
            if new:
                for prefix in new:
                    holders.setdefault(prefix, set()).add(node_id)
            else:
                self._drop(node_id, old)
            return old or new
        self._drop(node_id, old - new)
        for prefix in new - old:
            holders.setdefault(prefix, set()).add(node_id)
        return old ^ new

    def _drop(self, node_id: int, prefixes: Iterable[Network]) -> None:
        holders = self._holders
        for prefix in prefixes:
            ids = holders.get(prefix)
            if ids is not None:
                ids.discard(node_id)
                if not ids:
                    del holders[prefix]

    def _move(self, prefix: Network, frm: int | None, to: int | None) -> None:
        if frm is not None:
            mine = self.by_node.get(frm)
            if mine is not None:
                mine.discard(prefix)
                if not mine:
                    del self.by_node[frm]
            self._sorted.pop(frm, None)
            del self.primaries[prefix]
        if to is not None:
            self.primaries[prefix] = to
            self.by_node.setdefault(to, set()).add(prefix)
            self._sorted.pop(to, None)

    def primary_routes(self, node_id: int) -> tuple[Network, ...]:
        """The prefixes ``node_id`` is primary for, sorted (kept until they change)."""
        found = self._sorted.get(node_id)
        if found is None:
            found = self._sorted[node_id] = tuple(sorted(self.by_node.get(node_id, ()), key=sort_key))
        return found
