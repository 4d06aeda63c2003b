# -*- test-case-name: tests.control.test_policy_incremental -*-
"""
Incremental peer visibility for policies whose rules are the same for every node.

:class:`RuleIndex` keeps, for the rules of the last compilation, two bitmasks
per rule over node ids (may-be-source, may-be-destination: the same test as
:func:`~headscale_tw.control.policy.all_peer_views`), the rules each node
belongs to, and each node's *reach* (the nodes it sees). When some nodes
change, :meth:`RuleIndex.update` takes the new compilation's rules and:

* rules that are gone or new (their text differs: a source or destination
  set gained or lost an address) get their masks dropped or computed; the
  nodes they concern are the only ones whose filters can change;
* changed nodes are re-tested against the rules that stayed;
* only nodes sharing a rule with a changed node or a changed rule get their
  reach recomputed (bit operations over the rules they belong to).

Finding a new rule's members looks the rule's addresses up in an
address → node table when the rule covers few addresses, and tests only
nodes with routes besides; wide rules (``*``, big prefixes) test every node.
The reverse table (address → narrow rules naming it) gives a changed node the
rules it can belong to without testing every rule.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

from headscale_tw.policy.compile import Match, _overlaps_any
from headscale_tw.policy.ipset import IPSet, Range
from headscale_tw.policy.model import Node

__all__ = ["RuleIndex", "IndexUpdate"]

#: Rules covering at most this many addresses find members by address lookup.
_LOOKUP_LIMIT = 4096


def bits(mask: int) -> Iterable[int]:
    """The positions of the set bits of ``mask`` (node ids), lowest first."""
    while mask:
        low = mask & -mask
        yield low.bit_length() - 1
        mask ^= low


@dataclass
class IndexUpdate:
    """
    What an update can have affected.

    ``reach`` maps each node whose visibility was re-evaluated to
    ``(old_reach, new_reach)``; ``filters`` are nodes whose packet filter may
    differ; ``rules_changed`` says whether any rule was added or removed.
    """

    reach: dict[int, tuple[int, int]] = field(default_factory=dict)
    filters: set[int] = field(default_factory=set)
    rules_changed: bool = False


class RuleIndex:
    """Rule membership bitmasks and per-node reach (see the module docstring)."""

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self.rules: list[Any] = []
        self.matches: dict[Any, Match] = {}
        self.masks: dict[Any, list[int]] = {}
        self.internet: dict[Any, bool] = {}
        self.src_of: dict[int, set] = {}
        self.dst_of: dict[int, set] = {}
        self.reach: dict[int, int] = {}
        self.sets: dict[int, IPSet] = {}
        self.addrs: dict[int, tuple[tuple[int, int], ...]] = {}
        self.owner: dict[tuple[int, int], set[int]] = {}
        self.routed: set[int] = set()
        self.exits: set[int] = set()
        self.nodes: dict[int, Node] = {}
        #: address -> narrow rules naming it; rules too wide to list are in ``wide``.
        self.rules_at: dict[tuple[int, int], set] = {}
        self.wide: set = set()
        self.member_tests = 0

    # -- membership --------------------------------------------------------

    def _member(self, match: Match, internet: bool, node_id: int) -> tuple[bool, bool]:
        self.member_tests += 1
        node, node_set = self.nodes[node_id], self.sets[node_id]
        routes = node.subnet_routes
        src = match.srcs.overlaps(node_set) or (bool(routes) and _overlaps_any(match.srcs, routes))
        dst = (match.dsts.overlaps(node_set) or (bool(routes) and _overlaps_any(match.dsts, routes))
               or (internet and node.is_exit_node))
        return src, dst

    @staticmethod
    def _narrow(match: Match) -> Optional[tuple[Range, ...]]:
        """The address ranges of a rule, or None when it covers too many addresses to list."""
        ranges = match.srcs.ranges() + match.dsts.ranges()
        if sum(hi - lo + 1 for _, lo, hi in ranges) > _LOOKUP_LIMIT:
            return None
        return ranges

    def _candidates(self, match: Match) -> Iterable[int]:
        ranges = self._narrow(match)
        if ranges is None:
            return list(self.nodes)
        found = set(self.routed) | self.exits
        owner = self.owner
        for fam, lo, hi in ranges:
            for v in range(lo, hi + 1):
                ids = owner.get((fam, v))
                if ids:
                    found |= ids
        return found

    def _file_rule(self, rule, match: Match) -> None:
        """Record which addresses a rule names, so a changed node finds its rules by lookup."""
        ranges = self._narrow(match)
        if ranges is None:
            self.wide.add(rule)
            return
        rules_at = self.rules_at
        for fam, lo, hi in ranges:
            for v in range(lo, hi + 1):
                rules_at.setdefault((fam, v), set()).add(rule)

    def _unfile_rule(self, rule, match: Match) -> None:
        if rule in self.wide:
            self.wide.discard(rule)
            return
        rules_at = self.rules_at
        for fam, lo, hi in match.srcs.ranges() + match.dsts.ranges():
            for v in range(lo, hi + 1):
                at = rules_at.get((fam, v))
                if at is not None:
                    at.discard(rule)
                    if not at:
                        del rules_at[(fam, v)]

    def _rules_for(self, node: Node, kept: Sequence) -> Iterable:
        """The kept rules ``node`` may belong to: those naming its addresses, wide ones, or all if it routes."""
        if node.subnet_routes or node.is_exit_node:
            return kept
        found = set(self.wide)
        rules_at = self.rules_at
        for k in self.addrs[node.id]:
            at = rules_at.get(k)
            if at:
                found |= at
        return found

    def _add_node(self, node: Node) -> None:
        nid = node.id
        self.nodes[nid] = node
        self.sets[nid] = node.address_set
        keys = tuple((a.version, int(a)) for a in node.addresses)
        self.addrs[nid] = keys
        for k in keys:
            self.owner.setdefault(k, set()).add(nid)
        if node.subnet_routes:
            self.routed.add(nid)
        if node.is_exit_node:
            self.exits.add(nid)
        self.src_of[nid] = set()
        self.dst_of[nid] = set()

    def _drop_node(self, nid: int) -> None:
        for k in self.addrs.pop(nid, ()):
            ids = self.owner.get(k)
            if ids is not None:
                ids.discard(nid)
                if not ids:
                    del self.owner[k]
        self.nodes.pop(nid, None)
        self.sets.pop(nid, None)
        self.routed.discard(nid)
        self.exits.discard(nid)

    def _add_rule(self, rule, match: Match) -> int:
        """Compute a new rule's masks; return them OR-ed (its members)."""
        internet = self.internet[rule] = match.dsts_is_internet()
        self._file_rule(rule, match)
        src = dst = 0
        for nid in self._candidates(match):
            s, d = self._member(match, internet, nid)
            if s:
                src |= 1 << nid
                self.src_of[nid].add(rule)
            if d:
                dst |= 1 << nid
                self.dst_of[nid].add(rule)
        self.masks[rule] = [src, dst]
        return src | dst

    # -- building / updating -------------------------------------------------

    def build(self, rules: Sequence, matches: Sequence[Match], nodes: Mapping[int, Node]) -> None:
        """Index from scratch."""
        self._reset()
        for node in nodes.values():
            self._add_node(node)
        self.rules = list(rules)
        for rule, match in zip(rules, matches):
            if rule not in self.matches:
                self.matches[rule] = match
                self._add_rule(rule, match)
        for nid in self.nodes:
            self.reach[nid] = self._reach_of(nid)

    def _reach_of(self, nid: int) -> int:
        reach = 0
        masks = self.masks
        for rule in self.src_of.get(nid, ()):
            reach |= masks[rule][1]
        for rule in self.dst_of.get(nid, ()):
            reach |= masks[rule][0]
        return reach & ~(1 << nid)

    def update(self, rules: Sequence, matches: Sequence[Match], nodes: Mapping[int, Node],
               dirty: Iterable[int]) -> Optional[IndexUpdate]:
        """
        Take in a new compilation (``rules`` and their ``matches``) after the
        nodes in ``dirty`` were added, changed or removed (``nodes`` is the new
        full map of policy nodes). Returns None when the rules that stayed
        changed order (the caller must rebuild everything).
        """
        new: dict[Any, Match] = {}
        for rule, match in zip(rules, matches):
            new.setdefault(rule, match)
        old = self.matches
        # One pass over each rule list (hashing a rule is a Python call; these passes are
        # most of an update's fixed cost with a thousand rules): what stayed, in order,
        # what went, what came.
        stayed_before: list[Any] = []
        gone: list[Any] = []
        for r in self.rules:
            (stayed_before if r in new else gone).append(r)
        stayed: list[Any] = []
        added: list[Any] = []
        for r in rules:
            (stayed if r in old else added).append(r)
        if stayed_before != stayed:
            return None
        out = IndexUpdate()
        touched = 0  # members of changed rules and of rules a dirty node is/was in
        masks = self.masks
        for rule in dict.fromkeys(gone):
            src, dst = masks.pop(rule)
            self.internet.pop(rule, None)
            self._unfile_rule(rule, old[rule])
            touched |= src | dst
            out.filters.update(bits(dst))
            for nid in bits(src):
                self.src_of[nid].discard(rule)
            for nid in bits(dst):
                self.dst_of[nid].discard(rule)
            out.rules_changed = True
        kept = list(dict.fromkeys(stayed)) if len(stayed) != len(old) - len(set(gone)) else stayed
        dirty = set(dirty)
        previous = {}
        for nid in dirty:
            bit = 1 << nid
            for rule in self.src_of.pop(nid, ()):
                touched |= masks[rule][0] | masks[rule][1]
                masks[rule][0] &= ~bit
            for rule in self.dst_of.pop(nid, ()):
                touched |= masks[rule][0] | masks[rule][1]
                masks[rule][1] &= ~bit
            self._drop_node(nid)
            previous[nid] = self.reach.pop(nid, 0)
            node = nodes.get(nid)
            if node is None:
                continue
            self._add_node(node)
            out.filters.add(nid)
            for rule in self._rules_for(node, kept):
                if rule not in new:
                    continue
                s, d = self._member(new[rule], self.internet[rule], nid)
                if s:
                    masks[rule][0] |= bit
                    self.src_of[nid].add(rule)
                if d:
                    masks[rule][1] |= bit
                    self.dst_of[nid].add(rule)
                if s or d:
                    touched |= masks[rule][0] | masks[rule][1]
        for rule in dict.fromkeys(added):
            members = self._add_rule(rule, new[rule])
            touched |= members
            out.filters.update(bits(masks[rule][1]))
            out.rules_changed = True
        if out.rules_changed:
            out.filters |= self.exits
        self.rules = list(rules)
        self.matches = new
        for nid in set(bits(touched)) | dirty:
            if nid not in self.nodes:
                continue
            before = previous[nid] if nid in previous else self.reach.get(nid, 0)
            after = self._reach_of(nid)
            self.reach[nid] = after
            out.reach[nid] = (before, after)
        out.filters &= set(self.nodes)
        return out
