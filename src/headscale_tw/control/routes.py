# -*- test-case-name: tests.control.test_policy_routes -*-
"""
Subnet routes and exit nodes: what a node announces, what is approved, and
which online router is *primary* for each prefix (docs/control.md, *Policy integration*, Routes).

* Announced routes come from ``Hostinfo.RoutableIPs`` (the client adds both
  ``0.0.0.0/0`` and ``::/0`` for ``--advertise-exit-node``).
* Approved routes are stored per node (``Node.approved_routes``); approving one
  exit route approves both, since a client only offers an exit node whose
  AllowedIPs hold both ``/0`` prefixes.
* Served routes = announced ∩ approved.
* Election (G.3): candidates for a subnet prefix are online nodes serving it.
  The previous primary stays while it is a candidate (no flapping); otherwise
  the candidate with the lowest node id wins. Exit routes are not elected.

Pure functions, no I/O; the election lives in :mod:`~headscale_tw.control.election`
(re-exported here). Every function here does work
linear in the routes it is given (sets and dicts, never a list scan per
route): a node may announce :data:`~headscale_tw.control.limits.ROUTES_MAX`
prefixes, and routes stored before that limit existed may be more.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from functools import lru_cache
from typing import Union

from headscale_tw.control.election import RouteElection, sort_key
from headscale_tw.errors import InvalidInput

__all__ = [
    "Network",
    "EXIT_ROUTES",
    "parse_prefix",
    "clear_parse_caches",
    "announced_routes",
    "approved_routes",
    "normalize_approval",
    "served_routes",
    "serving",
    "RouteElection",
]

Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]

EXIT_ROUTES: tuple[Network, Network] = (ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0"))


def parse_prefix(text: object, where: str = "route") -> Network:
    """A prefix from its text; host bits are masked off. ``InvalidInput`` names a bad one."""
    if not isinstance(text, str):
        raise InvalidInput(f"{where}: {text!r} is not a prefix string")
    try:
        return _parse_network(text)
    except ValueError:
        raise InvalidInput(f"{where}: {text!r} is not an IP prefix like 10.0.0.0/24") from None


@lru_cache(maxsize=1 << 14)
def _parse_network(text: str) -> Network:
    # Every node's routes are parsed again on each change of it and for each
    # listing; networks are immutable, so the same text gives the same object.
    # 16,384 entries hold a few MiB at most.
    return ipaddress.ip_network(text.strip(), strict=False)


def _prefixes(values: Iterable[object]) -> tuple[Network, ...]:
    """The valid prefixes of ``values`` in first-seen order, each once."""
    key = tuple(values)
    try:
        return _prefixes_of(key)
    except TypeError:  # an unhashable entry (stored data is not checked like input)
        return _parse_all(key)


@lru_cache(maxsize=64)
def _prefixes_of(values: tuple) -> tuple[Network, ...]:
    # One change of a node reads its routes several times (served routes,
    # policy node, election, auto-approval); the last few lists are kept.
    return _parse_all(values)


def _parse_all(values: tuple) -> tuple[Network, ...]:
    out: dict[Network, None] = {}  # a dict keeps the first-seen order
    for value in values:
        try:
            net = parse_prefix(value)
        except InvalidInput:
            continue
        out.setdefault(net, None)
    return tuple(out)


def clear_parse_caches() -> None:
    """Forget parsed prefixes (for tests and benchmarks that count the work of parsing)."""
    _parse_network.cache_clear()
    _prefixes_of.cache_clear()
    _served.clear()


def announced_routes(node) -> tuple[Network, ...]:
    """The prefixes ``node`` announces in ``Hostinfo.RoutableIPs`` (invalid entries skipped)."""
    routable = (node.hostinfo or {}).get("RoutableIPs") or ()
    if not isinstance(routable, (list, tuple)):
        return ()
    return _prefixes(routable)


def approved_routes(node) -> tuple[Network, ...]:
    """The prefixes approved for ``node`` (stored as text)."""
    return _prefixes(node.approved_routes or ())


def normalize_approval(routes: Iterable[Network]) -> tuple[str, ...]:
    """Sorted, de-duplicated text form for storage; either exit route brings the other."""
    nets = set(routes)
    if nets & set(EXIT_ROUTES):
        nets.update(EXIT_ROUTES)
    return tuple(str(n) for n in sorted(nets, key=sort_key))


def served_routes(node) -> tuple[Network, ...]:
    """Announced and approved (subnet and exit) routes of ``node``."""
    return serving(announced_routes(node), approved_routes(node))


def serving(announced: Iterable[Network], approved: Iterable[Network]) -> tuple[Network, ...]:
    """The ``announced`` prefixes that are also ``approved``, in announced order.

    One change of a node asks this several times with the very same (cached)
    tuples; the last few answers are kept by the identity of their inputs, since
    hashing a prefix is a Python call and this is one per route each time.
    """
    if isinstance(announced, tuple) and isinstance(approved, tuple):
        key = (id(announced), id(approved))
        kept = _served.get(key)
        if kept is not None and kept[0] is announced and kept[1] is approved:
            return kept[2]
        approved_set = set(approved)
        result = tuple(r for r in announced if r in approved_set)
        if len(_served) >= 64:
            _served.pop(next(iter(_served)))
        _served[key] = (announced, approved, result)  # the inputs are kept: their ids stay theirs
        return result
    approved_set = set(approved)
    return tuple(r for r in announced if r in approved_set)


_served: dict[tuple[int, int], tuple[tuple, tuple, tuple]] = {}

