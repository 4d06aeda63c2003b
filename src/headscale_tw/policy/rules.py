# -*- test-case-name: tests.policy.test_compile -*-
"""
The wire-shaped results of policy compilation (``tailcfg.FilterRule`` and its
parts), the reachability view of one rule (:obj:`Match`) and the rule-level
helpers shared by grant compilation and per-node reduction.
"""

from __future__ import annotations

__all__ = [
    "NetPortRange",
    "CapGrant",
    "FilterRule",
    "Match",
    "DEFAULT_ACL",
    "FILTER_ALLOW_ALL",
    "merge_rules",
]

import ipaddress
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Iterable, Mapping, Optional

from .ipset import THE_INTERNET, IPSet, Network, parse_ip_string
from .model import ACL, ANY_PORTS, Alias, Destination


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
