# -*- test-case-name: tests.policy.test_compile -*-
"""
Grant compilation: each grant (ACLs are turned into grants first) becomes
ready-made, unreduced filter rules, plus what the node-specific parts
(``autogroup:self`` destinations, ``via`` steering) need to be added per node.
"""

from __future__ import annotations

__all__ = ["acl_to_grants", "COMPANION_CAPS"]

from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

from .ipset import THE_INTERNET, IPSet, Network
from .model import Alias, Grant, Node, ProtoPorts
from .resolve import Resolver
from .rules import CapGrant, FilterRule, NetPortRange, _ip_string

#: Companion capabilities Tailscale adds (reversed) for some app capabilities.
COMPANION_CAPS = (
    ("tailscale.com/cap/drive", "tailscale.com/cap/drive-sharer"),
    ("tailscale.com/cap/relay", "tailscale.com/cap/relay-target"),
)


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
