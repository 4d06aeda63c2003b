# -*- test-case-name: tests.control.test_ipalloc -*-
"""
Tailnet address allocation from the configured IPv4 and IPv6 prefixes.

Two strategies, as Headscale's ``prefixes.allocation``:

* ``sequential``: remember the last address handed out (starting at the
  network address), step forward, skip used and reserved addresses, and fail
  when the prefix is exhausted (no wrap-around).
* ``random``: start at a random address inside the prefix and scan upward,
  wrapping once, for the first free, non-reserved address.

The used set is loaded from the store at start (``INodeStore.allocated_ips``)
and kept in step by :meth:`IPAllocator.release` when nodes are deleted. v4 and
v6 are allocated independently. Never handed out: the network and last
address, ``100.115.92.0/23`` (ChromeOS VMs), ``100.100.100.100`` and
``fd7a:115c:a1e0::53`` (the quad-100 resolver) and the special ULA sub-ranges
(4via6, 4to6, ephemeral).
"""

from __future__ import annotations

import ipaddress
import secrets
from collections.abc import Iterable

from headscale_tw.errors import InvalidInput

__all__ = ["IPAllocator", "AddressesExhausted", "RESERVED_NETWORKS"]

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

RESERVED_NETWORKS: tuple[Network, ...] = tuple(
    ipaddress.ip_network(text)
    for text in (
        "100.115.92.0/23",
        "100.100.100.100/32",
        "fd7a:115c:a1e0::53/128",
        "fd7a:115c:a1e0:b1a::/64",
        "fd7a:115c:a1e0:ab12:4843:cd96:6200::/104",
        "fd7a:115c:a1e0:efe3::/64",
    )
)


class AddressesExhausted(Exception):
    """No free address is left in a prefix."""


class _Pool:
    """One prefix: its used set, its sequential cursor, its reserved ranges."""

    def __init__(self, network: Network, strategy: str, randbelow) -> None:
        self.network = network
        self.strategy = strategy
        self._randbelow = randbelow
        self._first = int(network.network_address)
        self._last = int(network.broadcast_address)
        self._cursor = self._first
        self._used: set[int] = set()
        self._reserved = [
            (int(r.network_address), int(r.broadcast_address))
            for r in RESERVED_NETWORKS
            if r.version == network.version and r.overlaps(network)
        ]

    def _skip_reserved(self, value: int) -> int:
        """Return ``value`` or, if it falls in a reserved range, the first address after it."""
        moved = True
        while moved:
            moved = False
            for low, high in self._reserved:
                if low <= value <= high:
                    value = high + 1
                    moved = True
        return value

    def _usable(self, value: int) -> bool:
        return self._first < value < self._last and value not in self._used

    def mark_used(self, address: Address) -> None:
        if address in self.network:
            self._used.add(int(address))

    def release(self, address: Address) -> None:
        self._used.discard(int(address))

    def allocate(self, scatter: bool = False) -> Address:
        if self.strategy == "random" or scatter:
            found = self._scan_random()
        else:
            found = self._scan_from(self._cursor + 1, self._last - 1)
            if found is not None:
                self._cursor = found
        if found is None:
            raise AddressesExhausted(f"no free address left in {self.network}")
        self._used.add(found)
        return ipaddress.ip_address(found)

    def _scan_from(self, start: int, stop: int) -> int | None:
        value = start
        while value <= stop:
            value = self._skip_reserved(value)
            if value > stop:
                return None
            if self._usable(value):
                return value
            value += 1
        return None

    def _scan_random(self) -> int | None:
        size = self._last - self._first - 1
        if size <= 0:
            return None
        start = self._first + 1 + self._randbelow(size)
        found = self._scan_from(start, self._last - 1)
        if found is None:
            found = self._scan_from(self._first + 1, start - 1)
        return found


class IPAllocator:
    """Hands out one IPv4 and/or one IPv6 address per node.

    ``v4``/``v6`` are prefix strings (either may be ``None``), ``allocation``
    is ``"sequential"`` or ``"random"``; ``randbelow`` is injectable for tests.
    """

    def __init__(
        self,
        v4: str | None,
        v6: str | None,
        allocation: str = "sequential",
        randbelow=secrets.randbelow,
    ) -> None:
        if allocation not in ("sequential", "random"):
            raise InvalidInput(f"prefixes.allocation: expected sequential or random, got {allocation!r}")
        if not v4 and not v6:
            raise InvalidInput("prefixes: at least one of v4 and v6 must be set")
        self._pools: dict[int, _Pool] = {}
        for version, text in ((4, v4), (6, v6)):
            if not text:
                continue
            try:
                network = ipaddress.ip_network(text, strict=False)
            except ValueError:
                raise InvalidInput(f"prefixes.v{version}: not a prefix: {text!r}") from None
            if network.version != version:
                raise InvalidInput(f"prefixes.v{version}: {text!r} is not an IPv{version} prefix")
            self._pools[version] = _Pool(network, allocation, randbelow)

    def load(self, used: Iterable[str]) -> None:
        """Mark addresses (text, with or without ``/len``) as taken, e.g. from the store."""
        for text in used:
            if not text:
                continue
            try:
                address = ipaddress.ip_address(text.split("/")[0])
            except ValueError:
                continue
            pool = self._pools.get(address.version)
            if pool is not None:
                pool.mark_used(address)

    def allocate(self, scatter: bool = False) -> tuple[str | None, str | None]:
        """Return ``(ipv4, ipv6)`` text for a new node; ``AddressesExhausted`` if a prefix is full.

        ``scatter``: take a free address from a random start, whatever the strategy, and leave
        the sequential cursor where it is. For a retry after another instance on the same
        database took the address: instances allocating sequentially from the same view would
        otherwise collide again on the next address, and again, for as many registrations as
        each has in flight (seen with two workers: 16 collisions in a row).
        """
        v4 = self._pools.get(4)
        v6 = self._pools.get(6)
        first = str(v4.allocate(scatter)) if v4 is not None else None
        try:
            second = str(v6.allocate(scatter)) if v6 is not None else None
        except AddressesExhausted:
            if first is not None and v4 is not None:
                v4.release(ipaddress.ip_address(first))
            raise
        return first, second

    def families(self) -> frozenset[int]:
        """The IP versions (4, 6) that have a configured prefix."""
        return frozenset(self._pools)

    def allocate_family(self, version: int) -> str:
        """One free address of IP ``version`` (``headscale nodes backfillips``);
        ``AddressesExhausted`` if its prefix is full, ``KeyError`` if it has none."""
        return str(self._pools[version].allocate())

    def release(self, *addresses: str | None) -> None:
        """Give addresses of a deleted node back to the pool."""
        for text in addresses:
            if not text:
                continue
            address = ipaddress.ip_address(text.split("/")[0])
            pool = self._pools.get(address.version)
            if pool is not None:
                pool.release(address)
