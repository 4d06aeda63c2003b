# -*- test-case-name: tests.policy.test_ipset -*-
"""
Immutable sets of IP addresses (IPv4 and IPv6) stored as merged ranges.

The policy compiler resolves aliases to address sets, unions them, and renders
them in the forms Tailscale puts on the wire: a single address (``100.64.0.1``),
an exact prefix (``10.0.0.0/8``) or an inclusive range (``a-b``). Ranges are
kept as ``(family, first, last)`` integer triples, sorted with IPv4 first.
"""

from __future__ import annotations

__all__ = [
    "IPSet",
    "ranges_overlap",
    "ranges_xor",
    "parse_ip_string",
    "parse_prefix",
    "TAILSCALE_ALL",
    "THE_INTERNET",
]

import ipaddress
from functools import lru_cache
from typing import Iterable, Iterator, Sequence, Union

Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]
Address = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]
Range = tuple[int, int, int]

_MAX = {4: (1 << 32) - 1, 6: (1 << 128) - 1}


def _addr(family: int, value: int) -> Address:
    return ipaddress.IPv4Address(value) if family == 4 else ipaddress.IPv6Address(value)


def parse_prefix(text: str) -> Network:
    """
    Parse ``a.b.c.d``, ``a.b.c.d/n`` or the IPv6 forms into a network.

    A bare address becomes a /32 or /128. Host bits are masked off (as Go's
    ``netip.ParsePrefix`` accepts them and policies use the masked form).

    :raises ValueError: if ``text`` is not an address or prefix.
    """
    if "/" not in text:
        a = ipaddress.ip_address(text)
        return ipaddress.ip_network(f"{a}/{a.max_prefixlen}")
    addr, _, bits = text.partition("/")
    if not bits.isdigit() or (len(bits) > 1 and bits[0] == "0"):
        raise ValueError(f"invalid prefix length in {text!r}")
    a = ipaddress.ip_address(addr)
    return ipaddress.ip_network(f"{a}/{bits}", strict=False)


class IPSet:
    """An immutable set of addresses; build with the class methods."""

    __slots__ = ("_ranges",)

    def __init__(self, ranges: Iterable[Range] = ()) -> None:
        self._ranges: tuple[Range, ...] = _normalise(ranges)

    # -- construction -----------------------------------------------------

    @classmethod
    def from_networks(cls, nets: Iterable[Network]) -> "IPSet":
        return cls(
            (n.version, int(n.network_address), int(n.broadcast_address)) for n in nets
        )

    @classmethod
    def from_addresses(cls, addrs: Iterable[Address]) -> "IPSet":
        return cls((a.version, int(a), int(a)) for a in addrs)

    @classmethod
    def from_strings(cls, texts: Iterable[str]) -> "IPSet":
        out: list[Range] = []
        for t in texts:
            out.extend(parse_ip_string(t)._ranges)
        return cls(out)

    # -- algebra ----------------------------------------------------------

    def __or__(self, other: "IPSet") -> "IPSet":
        return IPSet(self._ranges + other._ranges)

    def __sub__(self, other: "IPSet") -> "IPSet":
        out: list[Range] = []
        cuts = other._ranges
        for fam, lo, hi in self._ranges:
            cur = lo
            for cfam, clo, chi in cuts:
                if cfam != fam or chi < cur or clo > hi:
                    continue
                if clo > cur:
                    out.append((fam, cur, clo - 1))
                cur = chi + 1
                if cur > hi:
                    break
            if cur <= hi:
                out.append((fam, cur, hi))
        return IPSet(out)

    def __and__(self, other: "IPSet") -> "IPSet":
        out = []
        for fam, lo, hi in self._ranges:
            for ofam, olo, ohi in other._ranges:
                if ofam == fam and olo <= hi and ohi >= lo:
                    out.append((fam, max(lo, olo), min(hi, ohi)))
        return IPSet(out)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, IPSet) and self._ranges == other._ranges

    def __hash__(self) -> int:
        return hash(self._ranges)

    def __bool__(self) -> bool:
        return bool(self._ranges)

    def __repr__(self) -> str:
        return f"IPSet({self.strings()!r})"

    # -- queries ----------------------------------------------------------

    def contains(self, addr: Address) -> bool:
        v, fam = int(addr), addr.version
        return any(f == fam and lo <= v <= hi for f, lo, hi in self._ranges)

    def contains_any(self, addrs: Iterable[Address]) -> bool:
        return any(self.contains(a) for a in addrs)

    def overlaps(self, other: "IPSet") -> bool:
        # Plain loops, not any() over a generator: this runs for every node against every
        # rule a change touches (a hub's rule: once per node), and the generator's frame
        # cost about half of each call.
        theirs = other._ranges
        for f, lo, hi in self._ranges:
            for of, olo, ohi in theirs:
                if f == of and lo <= ohi and hi >= olo:
                    return True
        return False

    def overlaps_network(self, net: Network) -> bool:
        fam, lo, hi = net.version, int(net.network_address), int(net.broadcast_address)
        for f, a, b in self._ranges:  # a loop, as in overlaps
            if f == fam and a <= hi and b >= lo:
                return True
        return False

    def contains_network(self, net: Network) -> bool:
        fam, lo, hi = net.version, int(net.network_address), int(net.broadcast_address)
        return any(f == fam and a <= lo and hi <= b for f, a, b in self._ranges)

    def issubset(self, other: "IPSet") -> bool:
        return not (self - other)

    # -- rendering --------------------------------------------------------

    def ranges(self) -> tuple[Range, ...]:
        return self._ranges

    def networks(self) -> list[Network]:
        """The minimal list of CIDR prefixes covering the set, IPv4 first."""
        out: list[Network] = []
        for fam, lo, hi in self._ranges:
            out.extend(_range_networks(fam, lo, hi))
        return out

    def strings(self) -> list[str]:
        """Render each range as an address, an exact prefix, or ``a-b``."""
        out = []
        for fam, lo, hi in self._ranges:
            if lo == hi:
                out.append(str(_addr(fam, lo)))
                continue
            nets = _range_networks(fam, lo, hi)
            if len(nets) == 1:
                out.append(str(nets[0]))
            else:
                out.append(f"{_addr(fam, lo)}-{_addr(fam, hi)}")
        return out

    def range_strings(self) -> list[str]:
        """Render each range as ``a-b`` (a single address stays bare)."""
        return [
            str(_addr(fam, lo)) if lo == hi else f"{_addr(fam, lo)}-{_addr(fam, hi)}"
            for fam, lo, hi in self._ranges
        ]

    def addresses(self) -> Iterator[Address]:
        for fam, lo, hi in self._ranges:
            for v in range(lo, hi + 1):
                yield _addr(fam, v)


@lru_cache(maxsize=4096)
def _range_networks(fam: int, lo: int, hi: int) -> tuple[Network, ...]:
    return tuple(ipaddress.summarize_address_range(_addr(fam, lo), _addr(fam, hi)))


def ranges_xor(a: Sequence[Range], b: Sequence[Range]) -> list[Range]:
    """The ranges covered by exactly one of two normalised (sorted, disjoint) range lists, sorted and merged.

    One sort of the bounds: linear in the ranges apart from it (``IPSet.__sub__`` is quadratic).
    """
    if a == b:
        return []
    bounds = sorted({(f, lo) for f, lo, _ in a} | {(f, lo) for f, lo, _ in b}
                    | {(f, hi + 1) for f, _, hi in a} | {(f, hi + 1) for f, _, hi in b})
    out: list[Range] = []
    ia = ib = 0
    for (fam, start), (other, end) in zip(bounds, bounds[1:]):
        if fam != other:
            continue
        while ia < len(a) and (a[ia][0], a[ia][2]) < (fam, start):
            ia += 1
        while ib < len(b) and (b[ib][0], b[ib][2]) < (fam, start):
            ib += 1
        in_a = ia < len(a) and a[ia][0] == fam and a[ia][1] <= start
        in_b = ib < len(b) and b[ib][0] == fam and b[ib][1] <= start
        if in_a != in_b:
            if out and out[-1][0] == fam and out[-1][2] + 1 == start:
                out[-1] = (fam, out[-1][1], end - 1)
            else:
                out.append((fam, start, end - 1))
    return out


def ranges_overlap(x: Sequence[Range], y: Sequence[Range]) -> bool:
    """Whether two sorted lists of disjoint ``(family, low, high)`` ranges share an address (one merge pass)."""
    i = j = 0
    while i < len(x) and j < len(y):
        fx, lx, hx = x[i]
        fy, ly, hy = y[j]
        if (fx, hx) < (fy, ly):
            i += 1
        elif (fy, hy) < (fx, lx):
            j += 1
        else:
            return True
    return False


def _normalise(ranges: Iterable[Range]) -> tuple[Range, ...]:
    items = sorted(ranges)
    out: list[Range] = []
    for fam, lo, hi in items:
        if out and out[-1][0] == fam and lo <= out[-1][2] + 1:
            if hi > out[-1][2]:
                out[-1] = (fam, out[-1][1], hi)
        else:
            out.append((fam, lo, hi))
    return tuple(out)


def parse_ip_string(text: str) -> IPSet:
    """
    Parse a filter-rule address string: ``*``, an address, a prefix (no
    host bits) or an inclusive range ``a-b``.

    :raises ValueError: if the string is none of those.
    """
    if text == "*":
        return IPSet([(4, 0, _MAX[4]), (6, 0, _MAX[6])])
    if "/" in text:
        net = ipaddress.ip_network(text, strict=True)
        return IPSet.from_networks([net])
    if text.count("-") == 1:
        a, b = (ipaddress.ip_address(x) for x in text.split("-"))
        if a.version != b.version or int(a) > int(b):
            raise ValueError(f"invalid range {text!r}")
        return IPSet([(a.version, int(a), int(b))])
    a = ipaddress.ip_address(text)
    return IPSet.from_addresses([a])


def _nets(*texts: str) -> IPSet:
    return IPSet.from_networks(ipaddress.ip_network(t) for t in texts)


#: What ``*`` means as a source: the Tailscale address space.
TAILSCALE_ALL = _nets("100.64.0.0/10", "fd7a:115c:a1e0::/48") - _nets("100.115.92.0/23")

#: ``autogroup:internet``: public address space.
THE_INTERNET = _nets("0.0.0.0/0", "2000::/3") - _nets(
    "fc00::/7",
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "fd7a:115c:a1e0::/48",
    "100.64.0.0/10",
    "fe80::/10",
    "169.254.0.0/16",
)
