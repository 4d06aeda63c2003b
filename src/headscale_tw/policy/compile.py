# -*- test-case-name: tests.policy.test_compile -*-
"""
Compile a policy against a topology into per-node packet filters, peer sets,
SSH policies and node capabilities.

The work is split in two stages so the control plane can recompute cheaply:

1. :obj:`CompiledPolicy` (built by :obj:`PolicyEngine.compile`) resolves every alias
   of every grant (ACLs are turned into grants first) to address sets once
   per (policy, topology) pair. Grants that do not depend on the viewing node
   become ready-made, unreduced filter rules.
2. Per-node views (:obj:`CompiledPolicy.filter_for`, :obj:`CompiledPolicy.peers_for`,
   :obj:`CompiledPolicy.ssh_policy_for`, :obj:`CompiledPolicy.cap_map_for`) only add
   the node-specific parts (``autogroup:self``, ``via``) and reduce the rules
   to what concerns that node. Results are memoised per node id.

When a node changes, build a new :obj:`CompiledPolicy` from the same engine
(alias resolution is linear in the number of nodes) and ask only the affected
nodes again.
"""

from __future__ import annotations

__all__ = [
    "FilterRule",
    "NetPortRange",
    "CapGrant",
    "Match",
    "PolicyEngine",
    "CompiledPolicy",
    "FILTER_ALLOW_ALL",
]

import ipaddress
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Iterable, Mapping, Optional, Sequence, Union

from .incremental import DependencyMemo, TopologyIndex, grant_keys, idp_group_key
from .ipset import TAILSCALE_ALL, THE_INTERNET, IPSet, parse_ip_string
from .ipset import ranges_overlap as _sorted_ranges_overlap
from .model import (
    ACL,
    ANY_PORTS,
    IDP_GROUP_PREFIX,
    Alias,
    Destination,
    Grant,
    Node,
    Policy,
    ProtoPorts,
    Topology,
    User,
)
from .offered import OfferedRoutes
from .parse import parse_policy

Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]

_ALL = IPSet.from_networks([ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0")])

#: Companion capabilities Tailscale adds (reversed) for some app capabilities.
COMPANION_CAPS = (
    ("tailscale.com/cap/drive", "tailscale.com/cap/drive-sharer"),
    ("tailscale.com/cap/relay", "tailscale.com/cap/relay-target"),
)

#: Node capabilities Tailscale adds alongside some ``nodeAttrs`` attributes.
COMPANION_NODE_CAPS = {
    "funnel": (
        "https://tailscale.com/cap/funnel-ports?ports=443,8443,10000",
        "https://tailscale.com/cap/warn-funnel-no-https",
    ),
}


# -- wire-shaped results ------------------------------------------------------


@dataclass(frozen=True)
class NetPortRange:
    """One ``DstPorts`` entry."""

    ip: str
    first: int
    last: int

    def to_wire(self) -> dict:
        return {"IP": self.ip, "Ports": {"First": self.first, "Last": self.last}}


@dataclass(frozen=True)
class CapGrant:
    """One ``CapGrant`` entry: destinations and the capabilities granted there."""

    dsts: tuple[Network, ...]
    cap_map: Mapping[str, Any] = field(hash=False)

    def to_wire(self) -> dict:
        return {"Dsts": [str(d) for d in self.dsts], "CapMap": dict(self.cap_map)}


@dataclass(frozen=True)
class FilterRule:
    """A ``tailcfg.FilterRule`` (never with the legacy SrcBits/Bits)."""

    src_ips: tuple[str, ...]
    dst_ports: tuple[NetPortRange, ...] = ()
    ip_proto: Optional[tuple[int, ...]] = None
    cap_grant: tuple[CapGrant, ...] = ()

    def __hash__(self) -> int:
        # Rules are dict keys and set members on every policy update (rule index, per-node
        # reduction); hashing the nested tuples each time was ~half of a join's cost.
        h = self.__dict__.get("_hash")
        if h is None:
            h = hash((self.src_ips, self.dst_ports, self.ip_proto, self.cap_grant))
            object.__setattr__(self, "_hash", h)
        return h

    def to_wire(self) -> dict:
        out: dict[str, Any] = {"SrcIPs": list(self.src_ips)}
        if self.dst_ports:
            out["DstPorts"] = [d.to_wire() for d in self.dst_ports]
        if self.ip_proto:
            out["IPProto"] = list(self.ip_proto)
        if self.cap_grant:
            out["CapGrant"] = [c.to_wire() for c in self.cap_grant]
        return out


#: The ACL Tailscale applies when a policy has neither ``acls`` nor ``grants``.
DEFAULT_ACL = ACL("", (Alias("*", "*"),), (Destination(Alias("*", "*"), (ANY_PORTS,)),))

FILTER_ALLOW_ALL = (FilterRule(("*",), (NetPortRange("*", 0, 65535),)),)


@dataclass(frozen=True)
class Match:
    """Source and destination address sets of one rule (for reachability)."""

    srcs: IPSet
    dsts: IPSet

    @classmethod
    def from_rule(cls, rule: FilterRule) -> "Match":
        srcs = _strings_to_set(rule.src_ips)
        dsts = _strings_to_set(d.ip for d in rule.dst_ports)
        if rule.cap_grant:
            dsts = dsts | IPSet.from_networks(n for c in rule.cap_grant for n in c.dsts)
        return cls(srcs, dsts)

    def dsts_is_internet(self) -> bool:
        return (
            self.dsts.contains_network(ipaddress.ip_network("0.0.0.0/0"))
            or self.dsts.contains_network(ipaddress.ip_network("::/0"))
            or THE_INTERNET.issubset(self.dsts)
        )


def _strings_to_set(texts: Iterable[str]) -> IPSet:
    out = IPSet()
    for t in texts:
        try:
            out = out | _parse_cached(t)
        except ValueError:
            continue
    return out


@lru_cache(maxsize=1 << 16)
def _ip_string(net: Network) -> str:
    # formatting IPv6 addresses is slow in ipaddress; every compilation formats every member
    if net.prefixlen == net.max_prefixlen:
        return str(net.network_address)
    return str(net)


# -- alias resolution ---------------------------------------------------------


class Resolver:
    """
    Resolves aliases to address sets for one (policy, topology) pair.

    ``index`` (a :class:`~headscale_tw.policy.incremental.TopologyIndex` of the
    topology's nodes) and ``memo`` (a
    :class:`~headscale_tw.policy.incremental.DependencyMemo`) may be carried
    over from an earlier compilation by an
    :class:`~headscale_tw.policy.incremental.IncrementalCompiler`; alone, the
    resolver indexes the topology and memoises for itself.
    """

    def __init__(self, policy: Policy, topology: Topology, index: Optional[TopologyIndex] = None,
                 memo: Optional[DependencyMemo] = None) -> None:
        self.policy = policy
        self.topology = topology
        self.index = index if index is not None else TopologyIndex(topology.nodes)
        self.memo = memo if memo is not None else DependencyMemo()
        self._node_sets: dict[int, IPSet] = {}
        self._users_by_token: dict[str, list[User]] = {}

    def node_set(self, node: Node) -> IPSet:
        s = self._node_sets.get(node.id)
        if s is None:
            s = IPSet.from_addresses(node.addresses)
            if self.index.nodes.get(node.id) is node:
                self._node_sets[node.id] = s
        return s

    def user_for(self, token: str) -> Optional[User]:
        """The single user a ``user@`` token names (email or name), else None."""
        t = token[:-1] if token.endswith("@") else token
        found = [u for u in self.topology.users if u.email == t or u.name == t]
        return found[0] if len(found) == 1 else None

    def users_for(self, token: str) -> list[User]:
        """Users a token names; ``user:*@<domain>`` names every user of that domain,
        ``idpgroup:<name>`` every user whose last sign-in carried that group."""
        found = self._users_by_token.get(token)
        if found is None:
            if token.startswith(IDP_GROUP_PREFIX):
                group = token[len(IDP_GROUP_PREFIX):]
                found = [u for u in self.topology.users if group in u.idp_groups]
            elif token.startswith("user:*@"):
                domain = token[len("user:*@"):].lower()
                found = [u for u in self.topology.users if u.email.rpartition("@")[2].lower() == domain]
            else:
                u = self.user_for(token)
                found = [u] if u is not None else []
            self._users_by_token[token] = found
        return found

    def nodes_of_user(self, user: Optional[User]) -> list[Node]:
        if user is None:
            return []
        return list(self.index.by_user.get(user.id, {}).values())

    def nodes_of_token(self, token: str) -> list[Node]:
        return [n for u in self.users_for(token) for n in self.nodes_of_user(u)]

    def _union(self, nodes: Iterable[Node]) -> IPSet:
        return IPSet.from_addresses(a for n in nodes for a in n.addresses)

    def alias_keys(self, alias: Alias) -> list[tuple]:
        """The dependency keys (see :mod:`~headscale_tw.policy.incremental`) an alias's set follows."""
        k = alias.kind
        if k == "user":
            return [("user", u.id) for u in self.users_for(alias.name)]
        if k == "group":
            members = self.policy.groups.get(alias.name, ())
            return [("user", u.id) for m in members for u in self.users_for(m)] + [
                idp_group_key(m) for m in members if m.startswith(IDP_GROUP_PREFIX)]
        if k == "idpgroup":
            return [("user", u.id) for u in self.users_for(alias.name)] + [idp_group_key(alias.name)]
        if k == "tag":
            return [("tag", alias.name)]
        if k == "autogroup":
            ag = alias.name[len("autogroup:"):]
            if ag == "member":
                return [("member",)]
            if ag == "tagged":
                return [("tagged",)]
            if ag in ("owner", "admin"):
                return [("user", u.id) for u in self.topology.users]
        return []

    def resolve(self, alias: Alias) -> Optional[IPSet]:
        """The addresses an alias stands for; None for ``autogroup:self``."""
        k = alias.kind
        if k == "*":
            return TAILSCALE_ALL
        return self.memo.get(("alias", alias), lambda: (self.alias_keys(alias), self._resolve(alias)))

    def _resolve(self, alias: Alias) -> Optional[IPSet]:
        k = alias.kind
        if k == "prefix":
            return IPSet.from_networks([alias.prefix])
        if k == "host":
            net = self.policy.hosts.get(alias.name)
            return IPSet.from_networks([net]) if net is not None else IPSet()
        if k in ("user", "idpgroup"):
            return self._union(self.nodes_of_token(alias.name))
        if k == "group":
            nodes: list[Node] = []
            for member in self.policy.groups.get(alias.name, ()):
                nodes.extend(self.nodes_of_token(member))
            return self._union(nodes)
        if k == "tag":
            return self._union(self.index.by_tag.get(alias.name, {}).values())
        if k == "autogroup":
            ag = alias.name[len("autogroup:"):]
            if ag == "member":
                return self._union(self.index.untagged.values())
            if ag == "tagged":
                return self._union(self.index.tagged.values())
            if ag == "internet":
                return THE_INTERNET
            if ag == "danger-all":
                return _ALL
            if ag in ("owner", "admin"):
                # Without roles in the topology, the first user owns the tailnet
                # and every user is an admin (as on a fresh Tailscale tailnet).
                users = sorted(self.topology.users, key=lambda u: u.id)
                if ag == "owner":
                    users = users[:1]
                return self._union(n for u in users for n in self.nodes_of_user(u))
            return None
        return IPSet()

    def resolve_all(self, aliases: Iterable[Alias]) -> IPSet:
        out = IPSet()
        for a in aliases:
            r = self.resolve(a)
            if r is not None:
                out = out | r
        return out

    def approved_subnet_routes(self) -> list[str]:
        seen: dict[str, None] = {}
        routed = self.index.routed
        for nid in sorted(routed):
            for r in routed[nid].subnet_routes:
                seen.setdefault(str(r), None)
        return list(seen)


# -- grant compilation --------------------------------------------------------


@dataclass
class _CompiledGrant:
    rules: list[FilterRule]
    self_srcs: Optional[list[IPSet]] = None
    ip: tuple[ProtoPorts, ...] = ()
    app: Optional[Mapping[str, Any]] = None
    via_tags: tuple[str, ...] = ()
    via_dsts: tuple[Network, ...] = ()
    via_internet: bool = False
    via_src_strings: tuple[str, ...] = ()

    @property
    def is_self(self) -> bool:
        return self.self_srcs is not None

    @property
    def is_via(self) -> bool:
        return bool(self.via_tags)


def acl_to_grants(acl: Any) -> list[Grant]:
    """One grant per ACL destination; non-self destinations come first."""
    dsts = list(acl.dst)
    if any(d.alias.kind != "autogroup" for d in dsts):
        dsts = [d for d in dsts if not d.alias.is_autogroup("self")] + [
            d for d in dsts if d.alias.is_autogroup("self")
        ]
    return [Grant(acl.src, (d.alias,), (ProtoPorts(acl.proto, d.ports),)) for d in dsts]


def _companion_rules(dst_strings: list[str], src_nets: list[Network],
                     app: Mapping[str, Any]) -> list[FilterRule]:
    out = []
    for original, companion in COMPANION_CAPS:
        if original in app:
            out.append(FilterRule(tuple(dst_strings), cap_grant=(CapGrant(tuple(src_nets), {companion: None}),)))
    return out


def merge_rules(rules: Iterable[FilterRule]) -> list[FilterRule]:
    """Merge DstPorts of rules with equal SrcIPs and IPProto (no dedupe)."""
    out: list[FilterRule] = []
    index: dict[tuple, int] = {}
    for r in rules:
        if r.cap_grant:
            out.append(r)
            continue
        key = (r.src_ips, r.ip_proto)
        if key in index:
            i = index[key]
            out[i] = FilterRule(r.src_ips, out[i].dst_ports + r.dst_ports, r.ip_proto)
        else:
            index[key] = len(out)
            out.append(r)
    return out


class _GrantCompiler:
    def __init__(self, resolver: Resolver) -> None:
        self.r = resolver

    def src_strings(self, srcs: Sequence[Alias], resolved: list[IPSet],
                    non_wild: list[IPSet]) -> list[str]:
        merged = IPSet()
        for s in resolved:
            merged = merged | s
        if not merged:
            return []
        has_wild = any(a.kind == "*" for a in srcs)
        if any(a.is_autogroup("danger-all") for a in srcs):
            return ["*"]
        out = merged.strings()
        if has_wild:
            out += self.r.approved_subnet_routes()
            for s in non_wild:
                for x in s.strings():
                    if x not in out:
                        out.append(x)
        return out

    def compile(self, grant: Grant) -> Optional[_CompiledGrant]:
        resolved, non_wild = [], []
        for a in grant.src:
            if a.is_autogroup("self"):
                return None
            ips = self.r.resolve(a)
            if ips is not None:
                resolved.append(ips)
                if a.kind != "*":
                    non_wild.append(ips)
        if grant.via:
            return self.compile_via(grant, resolved)
        if not grant.src or not grant.dst:
            return None
        if not resolved and grant.app is None:
            return None
        src_strings = self.src_strings(grant.src, resolved, non_wild)
        self_dsts = [d for d in grant.dst if d.is_autogroup("self")]
        other = [d for d in grant.dst if not d.is_autogroup("self")]
        cg = _CompiledGrant(rules=[])
        if other:
            cg.rules = self.other_rules(grant, other, resolved, src_strings)
        if self_dsts:
            cg.self_srcs = resolved
            cg.ip = grant.ip
            cg.app = grant.app
        return cg

    def other_rules(self, grant: Grant, dsts: list[Alias], resolved: list[IPSet],
                    src_strings: list[str]) -> list[FilterRule]:
        rules: list[FilterRule] = []
        for ipp in grant.ip:
            ports: list[NetPortRange] = []
            for d in dsts:
                if d.kind == "*":
                    ports.extend(NetPortRange("*", f, l) for f, l in ipp.ports)
                    continue
                ips = self.r.resolve(d)
                if ips is None:
                    continue
                if d.is_autogroup("internet"):
                    # Tailscale sends the internet set as address ranges.
                    ports.extend(NetPortRange(t, f, l) for t in ips.range_strings() for f, l in ipp.ports)
                    continue
                for net in ips.networks():
                    ports.extend(NetPortRange(_ip_string(net), f, l) for f, l in ipp.ports)
            proto = ipp.ip_proto()
            if ports and src_strings:
                rules.append(FilterRule(tuple(src_strings), tuple(ports),
                                        tuple(proto) if proto else None))
        if grant.app is not None:
            caps, dst_strings = [], []
            for d in dsts:
                ips = self.r.resolve(d)
                if ips is None:
                    continue
                caps.append(CapGrant(tuple(ips.networks()), grant.app))
                dst_strings.extend(ips.strings())
            if caps:
                src_nets = [n for s in resolved for n in s.networks()]
                rules.append(FilterRule(tuple(src_strings), cap_grant=tuple(caps)))
                if any(d.kind == "*" for d in dsts):
                    dst_strings.extend(self.r.approved_subnet_routes())
                rules.extend(_companion_rules(dst_strings, src_nets, grant.app))
        return rules

    def compile_via(self, grant: Grant, resolved: list[IPSet]) -> Optional[_CompiledGrant]:
        if not grant.ip:
            return None
        merged = IPSet()
        for s in resolved:
            merged = merged | s
        if not merged:
            return None
        if any(a.is_autogroup("danger-all") for a in grant.src):
            srcs = ["*"]
        else:
            srcs = merged.strings()
            if any(a.kind == "*" for a in grant.src):
                srcs += self.r.approved_subnet_routes()
        nets: list[Network] = []
        internet = False
        for d in grant.dst:
            if d.is_autogroup("internet"):
                internet = True
                continue
            ips = self.r.resolve(d)
            if ips is not None:
                nets.extend(ips.networks())
        return _CompiledGrant(rules=[], ip=grant.ip, via_tags=grant.via, via_dsts=tuple(nets),
                              via_internet=internet, via_src_strings=tuple(srcs))


def _self_rules(cg: _CompiledGrant, node: Node, resolver: Resolver) -> list[FilterRule]:
    if node.is_tagged or node.user_id is None or cg.self_srcs is None:
        return []
    same = [n for n in resolver.topology.nodes if not n.is_tagged and n.user_id == node.user_id]
    if not same:
        return []
    src = IPSet()
    for s in cg.self_srcs:
        for n in same:
            if s.contains_any(n.addresses):
                src = src | resolver.node_set(n)
    if not src:
        return []
    rules = []
    for ipp in cg.ip:
        ports = [NetPortRange(str(a), f, l) for n in same for f, l in ipp.ports for a in n.addresses]
        proto = ipp.ip_proto()
        if ports:
            rules.append(FilterRule(tuple(src.strings()), tuple(ports), tuple(proto) if proto else None))
    if cg.app is not None:
        caps = [CapGrant(tuple(n.address_prefixes), cg.app) for n in same]
        dst_strings = [str(a) for n in same for a in n.addresses]
        rules.append(FilterRule(tuple(src.strings()), cap_grant=tuple(caps)))
        rules.extend(_companion_rules(dst_strings, src.networks(), cg.app))
    return rules


def _via_rules(cg: _CompiledGrant, node: Node) -> list[FilterRule]:
    if not any(t in node.tags for t in cg.via_tags):
        return []
    routes = node.subnet_routes
    dsts = [d for d in cg.via_dsts if any(d.overlaps(r) for r in routes if d.version == r.version)]
    if cg.via_internet and node.is_exit_node:
        dsts.extend(THE_INTERNET.networks())
    rules = []
    for ipp in cg.ip:
        ports = [NetPortRange(str(d), f, l) for d in dsts for f, l in ipp.ports]
        proto = ipp.ip_proto()
        if ports:
            rules.append(FilterRule(cg.via_src_strings, tuple(ports), tuple(proto) if proto else None))
    return rules


# -- per-node reduction -------------------------------------------------------


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


#: Rule address strings recur across nodes and compilations; IPSets are immutable.
_parse_cached = lru_cache(maxsize=1 << 16)(parse_ip_string)


@lru_cache(maxsize=1 << 14)
def _match_by_value(rule: FilterRule) -> Match:
    return Match.from_rule(rule)


def _match_of(rule: FilterRule) -> Match:
    # Most rules survive a recompilation as the same object (compiled grants are reused):
    # their Match is kept on the rule; an equal new object (a merged rule) finds it by value.
    match = rule.__dict__.get("_match")
    if match is None:
        match = _match_by_value(rule)
        object.__setattr__(rule, "_match", match)
    return match


def reduce_rules(node: Node, rules: Iterable[FilterRule], node_set: IPSet) -> list[FilterRule]:
    """Keep only the rules and destinations that concern ``node``."""
    out = []
    routes = node.subnet_routes
    is_exit = node.is_exit_node
    for rule in rules:
        if rule.cap_grant:
            r = _reduce_cap_rule(node, rule)
            if r is not None:
                out.append(r)
            continue
        kept = []
        for d in rule.dst_ports:
            try:
                s = _parse_cached(d.ip)
            except ValueError:
                continue
            if s.overlaps(node_set) or _overlaps_any(s, routes) or (is_exit and s.issubset(THE_INTERNET)):
                kept.append(d)
        if kept:
            out.append(FilterRule(rule.src_ips, tuple(kept), rule.ip_proto))
    return out


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


@dataclass(frozen=True)
class PeerView:
    """A peer as a node sees it: AllowedIPs and PrimaryRoutes (strings)."""

    node: Node
    allowed_ips: tuple[str, ...]
    primary_routes: tuple[str, ...]


class PolicyEngine:
    """
    A parsed policy, ready to be compiled against topologies.

    ``PolicyEngine(None)`` (or empty text) is "no policy": every node may
    reach every node.

    :raises PolicyError: if the policy text is invalid.
    """

    def __init__(self, policy: Union[str, bytes, dict, Policy, None], server_url: str = "https://unused",
                 domains: Optional[Iterable[str]] = None) -> None:
        self.policy: Optional[Policy] = policy if isinstance(policy, Policy) else parse_policy(policy)
        self.server_url = server_url
        self._domains = None if domains is None else frozenset(d.lower() for d in domains)
        self._grants: Optional[tuple[Grant, ...]] = None

    def tailnet_domains(self, topology: Topology) -> frozenset[str]:
        """
        Domains usable in ``localpart:*@<domain>``: those given to the
        constructor, else the email domain of the first user (the owner).
        """
        if self._domains is not None:
            return self._domains
        users = sorted((u for u in topology.users if "@" in u.email), key=lambda u: u.id)
        if not users:
            return frozenset()
        return frozenset([users[0].email.rpartition("@")[2].lower()])

    def compile(self, topology: Topology) -> "CompiledPolicy":
        """Resolve the policy against ``topology`` (do this once per change)."""
        return CompiledPolicy(self, topology)

    def grant_list(self) -> tuple[Grant, ...]:
        """The policy's grants followed by its ACLs turned into grants (computed once)."""
        if self._grants is None:
            grants: list[Grant] = []
            if self.policy is not None:
                grants = list(self.policy.grants or ())
                acls = self.policy.acls
                if acls is None and self.policy.grants is None:
                    # Neither section: Tailscale applies its default "* -> *:*" ACL.
                    acls = (DEFAULT_ACL,)
                for acl in acls or ():
                    grants.extend(acl_to_grants(acl))
            self._grants = tuple(grants)
        return self._grants

    def check(self, topology: Topology) -> None:
        """
        Run the checks that need users and nodes: ``localpart:`` domains,
        ``tests`` and ``sshTests``.

        :raises PolicyError: if one fails (the policy must then be rejected).
        """
        if self.policy is not None:
            self.check_compiled(self.compile(topology))

    def check_compiled(self, cp: "CompiledPolicy") -> None:
        """:meth:`check` on a compilation already made (e.g. by an IncrementalCompiler)."""
        from .checks import check_policy

        if self.policy is not None:
            check_policy(cp)

    # conveniences mirroring CompiledPolicy, for one-off callers
    def filter_for(self, node: Node, topology: Topology) -> list[FilterRule]:
        return self.compile(topology).filter_for(node)

    def peers_for(self, node: Node, topology: Topology) -> list[PeerView]:
        return self.compile(topology).peers_for(node)

    def ssh_policy_for(self, node: Node, topology: Topology) -> Optional[dict]:
        return self.compile(topology).ssh_policy_for(node)

    def cap_map_for(self, node: Node, topology: Topology) -> dict[str, Any]:
        return self.compile(topology).cap_map_for(node)


class CompiledPolicy:
    """A policy resolved against one topology; per-node views are memoised."""

    def __init__(self, engine: PolicyEngine, topology: Topology, index: Optional[TopologyIndex] = None,
                 memo: Optional[DependencyMemo] = None, grant_compiler=None,
                 offered: Optional[OfferedRoutes] = None) -> None:
        self.engine = engine
        self.policy = engine.policy
        self.topology = topology
        self.resolver = Resolver(self.policy or Policy(), topology, index=index, memo=memo)
        self._unreduced: dict[int, list[FilterRule]] = {}
        self._matches: dict[int, list[Match]] = {}
        self._filters: dict[int, list[FilterRule]] = {}
        #: Each router's offered routes with their rule masks (an incremental compiler's carries over).
        self.offered = offered if offered is not None else OfferedRoutes()
        self.allow_all = self.policy is None
        self.grants: list[_CompiledGrant] = []
        grants = engine.grant_list()
        if grants:
            gc = _GrantCompiler(self.resolver)
            memo = self.resolver.memo
            resolver = self.resolver

            def compiled(i: int, grant: Grant):
                # A grant's rules follow only the aliases it names (and, with "*", the routes).
                return memo.get(("grant", i), lambda: (grant_keys(grant, resolver.alias_keys), gc.compile(grant)))

            if grant_compiler is not None:  # an IncrementalCompiler recompiling only stale grants
                every = grant_compiler(grants, resolver, compiled)
            else:
                every = [compiled(i, g) for i, g in enumerate(grants)]
            self.grants = [cg for cg in every if cg is not None]
        self.per_node = any(cg.is_self or cg.is_via for cg in self.grants)
        # (grant, resolved sources, destination prefixes, has autogroup:internet)
        # for via steering of peer routes; None when no grant uses via.
        self._via_grants: Optional[list[tuple[Grant, IPSet, list[Network], bool]]] = None
        if self.policy is not None and any(g.via for g in self.policy.grants or ()):
            self._via_grants = []
            for g in engine.grant_list():
                dst_nets: list[Network] = []
                for d in g.dst:
                    if d.is_autogroup("internet") or d.is_autogroup("self"):
                        continue
                    ips = self.resolver.resolve(d)
                    if ips is not None:
                        dst_nets.extend(ips.networks())
                self._via_grants.append((g, self.resolver.resolve_all(g.src), dst_nets,
                                         any(d.is_autogroup("internet") for d in g.dst)))
        self._global: Optional[list[FilterRule]] = None

    # filters ---------------------------------------------------------------

    def unreduced_rules(self, node: Node) -> list[FilterRule]:
        """All rules relevant for computing this node's view, before reduction."""
        if self.allow_all:
            return list(FILTER_ALLOW_ALL)
        if not self.per_node:
            if self._global is None:
                self._global = merge_rules(r for cg in self.grants for r in cg.rules)
            return self._global
        if node.id not in self._unreduced:
            rules: list[FilterRule] = []
            for cg in self.grants:
                rules.extend(cg.rules)
                if cg.is_self:
                    rules.extend(_self_rules(cg, node, self.resolver))
                if cg.is_via:
                    rules.extend(_via_rules(cg, node))
            self._unreduced[node.id] = merge_rules(rules)
        return self._unreduced[node.id]

    def matches_for(self, node: Node) -> list[Match]:
        if not self.per_node and not self.allow_all:
            key = -1
        else:
            key = node.id
        if key not in self._matches:
            self._matches[key] = list(map(_match_of, self.unreduced_rules(node)))
        return self._matches[key]

    def filter_for(self, node: Node) -> list[FilterRule]:
        """The packet filter rules to send to ``node`` (``PacketFilters.base``)."""
        if node.id not in self._filters:
            self._filters[node.id] = reduce_rules(node, self.unreduced_rules(node), self.resolver.node_set(node))
        return self._filters[node.id]

    def filter_wire_for(self, node: Node) -> list[dict]:
        return [r.to_wire() for r in self.filter_for(node)]

    # peers -----------------------------------------------------------------

    def sees(self, a: Node, b: Node) -> bool:
        """Do ``a`` and ``b`` get each other as peers (symmetric)?"""
        sa, sb = self.resolver.node_set(a), self.resolver.node_set(b)
        ma = self.matches_for(a)
        mb = self.matches_for(b)
        return (
            can_access(a, b, ma, sa, sb)
            or can_access(b, a, mb, sb, sa)
            or (ma is not mb and (can_access(b, a, ma, sb, sa) or can_access(a, b, mb, sa, sb)))
        )

    def peers_for(self, node: Node) -> list[PeerView]:
        """The peers ``node`` may see, sorted by node id, with their routes."""
        out = []
        matches = self.matches_for(node)
        own = self.resolver.node_set(node)
        for peer in sorted(self.topology.nodes, key=lambda n: n.id):
            if peer.id == node.id or not self.sees(node, peer):
                continue
            routes = self.route_texts_for_peer(node, peer, matches, own)
            allowed = self._visible_prefixes(node, peer) + [t for _, t in routes]
            primaries = [t for r, t in routes if r.prefixlen != 0]
            out.append(PeerView(peer, tuple(allowed), tuple(primaries)))
        return out

    def routes_for_peer(self, viewer: Node, peer: Node, matches: Sequence[Match],
                        viewer_set: IPSet) -> list[Network]:
        """The routes of ``peer`` that ``viewer`` gets in the peer's AllowedIPs."""
        return [r for r, _ in self.route_texts_for_peer(viewer, peer, matches, viewer_set)]

    def route_view_key(self, viewer: Node, matches: Sequence[Match], viewer_set: IPSet) -> Optional[tuple]:
        """What decides which of any peer's routes ``viewer`` gets from :meth:`route_texts_for_peer`.

        The bit masks of the rules whose sources, and whose destinations,
        overlap the viewer, and for a viewer serving subnet routes itself
        those routes (an HA secondary is shown who is primary for them):
        viewers with equal keys get the same routes of every peer, so a view
        builder can compute a router's entry once per key instead of once per
        viewer. None when more than that decides (``via`` grants).
        """
        if self._via_grants is not None:
            return None
        masks = _viewer_masks(viewer, matches, viewer_set)
        subnets = viewer.subnet_route_set
        return masks if not subnets else masks + (subnets,)

    def route_texts_for_peer(self, viewer: Node, peer: Node, matches: Sequence[Match],
                             viewer_set: IPSet) -> list[tuple[Network, str]]:
        """:meth:`routes_for_peer` with the text of each route.

        A router may serve many prefixes and this runs for each viewer of it:
        the per-route work (overlap with each rule, text form) is done once
        per peer (:class:`~headscale_tw.policy.offered.OfferedRoutes`), and a viewer without ``via``
        grants or routes of its own costs two integer ANDs per route.
        """
        include, exclude, use_primary = self.via_routes_for_peer(viewer, peer, viewer_set)
        reduced: list[tuple[Network, str]] = []
        offered = self.offered.get(peer, matches)
        if offered:
            src_side, dst_side = _viewer_masks(viewer, matches, viewer_set)
            reduced = [(o.route, o.text) for o in offered if src_side & o.dsts_hit or dst_side & o.srcs_hit]
            if exclude:
                excluded = set(exclude)
                reduced = [pair for pair in reduced if pair[0] not in excluded]
        viewer_subnets = viewer.subnet_route_set
        if not include and not viewer_subnets:
            return reduced
        text = peer.route_text
        kept = {r for r, _ in reduced}
        primary_only = set(use_primary)
        for r in include:
            if r in kept:
                continue
            if r in peer.primary_route_set or r not in primary_only:
                reduced.append((r, text.get(r) or str(r)))
                kept.add(r)
        # co-router visibility: HA secondaries learn who is primary for their prefix
        for r in peer.primary_routes:
            if r in viewer_subnets and r not in kept:
                reduced.append((r, text.get(r) or str(r)))
                kept.add(r)
        return reduced

    def offered_routes(self, peer: Node, matches: Sequence[Match]) -> tuple:
        """``peer``'s primary and exit routes with their rule masks (the same tuple while they hold)."""
        return self.offered.get(peer, matches)

    def via_routes_for_peer(self, viewer: Node, peer: Node, viewer_set: IPSet
                            ) -> tuple[list[Network], list[Network], list[Network]]:
        """Routes a ``via`` grant steers to (include) or away from (exclude) ``peer``."""
        include: list[Network] = []
        exclude: list[Network] = []
        use_primary: list[Network] = []
        if self._via_grants is None or viewer.id == peer.id:
            return include, exclude, use_primary
        matched = []
        for g, src_set, dsts, internet in self._via_grants:
            if not src_set.overlaps(viewer_set):
                continue
            matched.append((g, dsts))
            if not g.via:
                continue
            prefixes = [r for d in dsts for r in peer.subnet_routes if d.version == r.version and d.overlaps(r)]
            if internet and peer.is_exit_node:
                prefixes.extend(peer.exit_routes)
            if not prefixes:
                continue
            if any(t in peer.tags for t in g.via):
                include.extend(prefixes)
            else:
                exclude.extend(prefixes)
        if not include and not exclude:
            return include, exclude, use_primary
        for g, dsts in matched:
            if not g.via:
                continue
            for d in dsts:
                for r in list(include):
                    if d.version != r.version or not d.overlaps(r):
                        continue
                    holders = [n.id for n in self.topology.nodes
                               if any(t in n.tags for t in g.via) and r in n.subnet_route_set]
                    if holders and peer.id != min(holders):
                        include = [x for x in include if x != r]
                        if r not in exclude:
                            exclude.append(r)
        for g, dsts in matched:
            if g.via:
                continue
            for d in dsts:
                for r in include:
                    if d.version == r.version and d.overlaps(r) and r not in use_primary:
                        use_primary.append(r)
                exclude = [r for r in exclude if not (d.version == r.version and d.overlaps(r))]
        return include, exclude, use_primary

    def self_allowed_ips(self, node: Node) -> list[str]:
        """The node's own AllowedIPs: addresses plus every route it serves."""
        text = node.route_text  # each route's text made once per node, shared with its peers' views
        return self._visible_prefixes(node, node) + [
            text.get(r) or str(r) for r in node.subnet_routes + node.exit_routes
        ]

    # route approval ----------------------------------------------------------

    def can_auto_approve(self, node: Node, route: Network) -> bool:
        """May ``node`` have ``route`` approved by ``autoApprovers``?"""
        if self.policy is None:
            return False
        aa = self.policy.auto_approvers
        addrs = node.addresses
        if route.prefixlen == 0:
            return bool(aa.exit_node) and self.resolver.resolve_all(aa.exit_node).contains_any(addrs)
        for prefix, owners in aa.routes:
            if prefix.version == route.version and prefix.prefixlen <= route.prefixlen \
                    and route.subnet_of(prefix):  # type: ignore[arg-type]  # same version, checked first
                if self.resolver.resolve_all(owners).contains_any(addrs):
                    return True
        return False

    def auto_approvable(self, node: Node, routes: Iterable[Network]) -> list[Network]:
        """The ``routes`` that ``node`` may have approved by ``autoApprovers`` (as :meth:`can_auto_approve`).

        Who owns each ``autoApprovers`` entry is resolved once, not once per route.
        """
        if self.policy is None:
            return []
        aa = self.policy.auto_approvers
        addrs = node.addresses
        # (version, length, the prefix's leading bits) of each owned entry: a route is inside
        # one when its own leading bits are the same (integer shifts, not subnet_of per pair).
        owned = [(p.version, p.prefixlen, int(p.network_address) >> (p.max_prefixlen - p.prefixlen), p.max_prefixlen)
                 for p, owners in aa.routes if self.resolver.resolve_all(owners).contains_any(addrs)]
        exit_ok: Optional[bool] = None
        out = []
        for route in routes:
            if route.prefixlen == 0:
                if exit_ok is None:
                    exit_ok = bool(aa.exit_node) and self.resolver.resolve_all(aa.exit_node).contains_any(addrs)
                if exit_ok:
                    out.append(route)
                continue
            version, length, value = route.version, route.prefixlen, int(route.network_address)
            if any(v == version and plen <= length and value >> (bits - plen) == lead
                   for v, plen, lead, bits in owned):
                out.append(route)
        return out

    def auto_approved_routes(self, node: Node) -> tuple[Network, ...]:
        """``node``'s approved routes plus the advertised ones the policy approves."""
        seen = set(node.approved_routes)
        new = [r for r in node.advertised_routes if r not in seen]
        return tuple(node.approved_routes) + tuple(dict.fromkeys(self.auto_approvable(node, new)))

    # ssh / caps ------------------------------------------------------------

    def ssh_policy_for(self, node: Node) -> Optional[dict]:
        """The ``SSHPolicy`` for ``node``, or None when the policy has no ``ssh``."""
        from .ssh import compile_ssh_policy

        return compile_ssh_policy(self, node)

    def cap_map_for(self, node: Node) -> dict[str, Any]:
        """Node capabilities from ``nodeAttrs`` and ``randomizeClientPort``."""
        caps: dict[str, Any] = {}
        if self.policy is None:
            return caps
        if self.policy.randomize_client_port:
            caps["randomize-client-port"] = None
        for na in self.policy.node_attrs:
            if not na.attr:
                continue
            s = self.resolver.resolve_all(na.target)
            if s.contains_any(node.addresses):
                for a in na.attr:
                    caps.setdefault(a, None)
                    for extra in COMPANION_NODE_CAPS.get(a, ()):
                        caps.setdefault(extra, None)
        return caps

    def _visible_prefixes(self, viewer: Node, node: Node) -> list[str]:
        prefixes = node.address_prefixes
        if "disable-ipv4" in self.cap_map_for(viewer) or "disable-ipv4" in self.cap_map_for(node):
            prefixes = tuple(p for p in prefixes if p.version == 6)
        return [str(p) for p in prefixes]
