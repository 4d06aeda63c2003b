# -*- test-case-name: tests.policy.test_compile -*-
"""
Per-node reduction and reachability: which rules and destinations concern one
node, may one node reach another, and which of a peer's routes a node is given.
Pure functions of nodes and :obj:`~headscale_tw.policy.rules.Match` lists.
"""

from __future__ import annotations

__all__ = ["reduce_rules", "kept_destinations", "can_access", "route_hits", "can_access_route"]

import ipaddress
from typing import Iterable, Optional, Sequence

from .ipset import THE_INTERNET, IPSet, Network
from .ipset import ranges_overlap as _sorted_ranges_overlap
from .model import Node
from .rules import CapGrant, FilterRule, Match, _parse_cached


def _overlaps_any(s: IPSet, nets: Iterable[Network]) -> bool:
    """Does ``s`` overlap any of ``nets``?

    A long tuple (a router's routes, asked about once per rule) is turned into
    sorted ranges once, kept by the tuple's identity, and compared with ``s`` in
    one merge of the two sorted lists, instead of a scan of ``s`` per route.
    """
    if isinstance(nets, tuple) and len(nets) > _SWEEP_FROM:
        return _sorted_ranges_overlap(s.ranges(), _ranges_of(nets))
    return any(s.overlaps_network(n) for n in nets)


_SWEEP_FROM = 16
_RANGES_KEPT = 64
_ranges_kept: dict[int, tuple[tuple[Network, ...], tuple[tuple[int, int, int], ...]]] = {}


def _ranges_of(nets: tuple[Network, ...]) -> tuple[tuple[int, int, int], ...]:
    kept = _ranges_kept.get(id(nets))
    if kept is not None and kept[0] is nets:
        return kept[1]
    ranges = IPSet.from_networks(nets).ranges()
    if len(_ranges_kept) >= _RANGES_KEPT:
        _ranges_kept.pop(next(iter(_ranges_kept)))
    _ranges_kept[id(nets)] = (nets, ranges)  # the tuple is kept too: its id stays its own
    return ranges


def reduce_rules(node: Node, rules: Iterable[FilterRule], node_set: IPSet) -> list[FilterRule]:
    """Keep only the rules and destinations that concern ``node``."""
    out = []
    for rule in rules:
        if rule.cap_grant:
            r = _reduce_cap_rule(node, rule)
            if r is not None:
                out.append(r)
            continue
        kept = kept_destinations(node, rule, node_set)
        if kept:
            dst_ports = rule.dst_ports
            out.append(FilterRule(rule.src_ips, tuple(dst_ports[i] for i in kept), rule.ip_proto))
    return out


def kept_destinations(node: Node, rule: FilterRule, node_set: IPSet) -> tuple[int, ...]:
    """
    The positions in ``rule.dst_ports`` of the destinations that concern
    ``node`` (its addresses, its subnet routes, the internet for an exit
    node); a rule without cap grants reduces to exactly these, so callers
    may keep one encoding per ``(rule, positions)`` for every node alike.
    """
    routes = node.subnet_routes
    is_exit = node.is_exit_node
    kept = []
    # a destination is one (address, ports) pair: an address on several ports is tested once
    verdicts: dict[str, bool] = {}
    for i, d in enumerate(rule.dst_ports):
        ip = d.ip
        hit = verdicts.get(ip)
        if hit is None:
            try:
                s = _parse_cached(ip)
            except ValueError:
                hit = False
            else:
                hit = s.overlaps(node_set) or _overlaps_any(s, routes) or (is_exit and s.issubset(THE_INTERNET))
            verdicts[ip] = hit
        if hit:
            kept.append(i)
    return tuple(kept)


def _reduce_cap_rule(node: Node, rule: FilterRule) -> Optional[FilterRule]:
    caps = []
    addrs = node.addresses
    routes = node.subnet_routes
    for cg in rule.cap_grant:
        dsts: list[Network] = []
        for d in cg.dsts:
            if d.prefixlen == d.max_prefixlen:
                if d.network_address in addrs:
                    dsts.append(d)
            else:
                dsts.extend(ipaddress.ip_network(a) for a in addrs if a.version == d.version and a in d)
        for d in cg.dsts:
            for r in routes:
                if d.version == r.version and d.overlaps(r):
                    dsts.append(d)
        if dsts:
            uniq = sorted(set(dsts), key=lambda n: (n.version, n.network_address, n.prefixlen))
            caps.append(CapGrant(tuple(uniq), cg.cap_map))
    if not caps:
        return None
    return FilterRule(rule.src_ips, cap_grant=tuple(caps))


def can_access(src: Node, dst: Node, matches: Sequence[Match], src_set: IPSet, dst_set: IPSet) -> bool:
    """May ``src`` open a connection to ``dst`` (its IPs, subnets, or internet if exit)?"""
    src_routes, dst_routes, dst_exit = src.subnet_routes, dst.subnet_routes, dst.is_exit_node
    for m in matches:
        if not (m.srcs.overlaps(src_set) or _overlaps_any(m.srcs, src_routes)):
            continue
        if m.dsts.overlaps(dst_set) or _overlaps_any(m.dsts, dst_routes):
            return True
        if dst_exit and m.dsts_is_internet():
            return True
    return False


def route_hits(node: Node, matches: Sequence[Match]) -> Optional[list[tuple[bool, bool]]]:
    """
    For each match: do its sources, and its destinations, overlap ``node``'s own subnet routes?

    ``None`` when the node serves no subnet route. It does not depend on the
    route being checked, so :func:`can_access_route` takes it precomputed
    (once per viewer and peer, not once per route of the peer).
    """
    routes = node.subnet_routes
    if not routes:
        return None
    return [(_overlaps_any(m.srcs, routes), _overlaps_any(m.dsts, routes)) for m in matches]


def _viewer_masks(node: Node, matches: Sequence[Match], node_set: IPSet) -> tuple[int, int]:
    """
    Bit ``i`` of the first mask: match ``i``'s sources overlap ``node`` or its subnet routes;
    of the second: its destinations do. With :func:`~headscale_tw.policy.offered.route_masks` this is
    :func:`can_access_route` as two ANDs per route.
    """
    hits = route_hits(node, matches)
    src_side = dst_side = 0
    for i, m in enumerate(matches):
        if m.srcs.overlaps(node_set) or (hits is not None and hits[i][0]):
            src_side |= 1 << i
        if m.dsts.overlaps(node_set) or (hits is not None and hits[i][1]):
            dst_side |= 1 << i
    return src_side, dst_side


def can_access_route(node: Node, matches: Sequence[Match], route: Network, node_set: IPSet,
                     hits: Optional[list[tuple[bool, bool]]] = None) -> bool:
    """Should ``node`` be given ``route`` in a peer's AllowedIPs?

    ``hits`` is :func:`route_hits` of ``node`` and ``matches``, computed here when not given.
    """
    if hits is None:
        hits = route_hits(node, matches)
    for i, m in enumerate(matches):
        if m.srcs.overlaps(node_set) and m.dsts.overlaps_network(route):
            return True
        if m.srcs.overlaps_network(route) and m.dsts.overlaps(node_set):
            return True
        if hits is not None:
            srcs_hit, dsts_hit = hits[i]
            if srcs_hit and m.dsts.overlaps_network(route):
                return True
            if dsts_hit and m.srcs.overlaps_network(route):
                return True
    return False


# -- public API ---------------------------------------------------------------

