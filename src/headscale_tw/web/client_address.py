# -*- test-case-name: tests.web.test_client_address -*-
"""
The client's address for a request: the one place that decides who is asking.

Throttles, access logs, the audit log and per-source caps all key on it, so
they agree. Rules (Headscale's, for ``trusted_proxies``):

* The direct peer is the TCP (or TLS) peer of the connection. Unless it lies
  inside one of ``trusted_proxies``, it *is* the client, and
  ``True-Client-IP``, ``X-Real-IP`` and ``X-Forwarded-For`` are ignored
  (any client can send them).
* From a trusted peer, the first header that yields an address wins, in
  Headscale's order: ``True-Client-IP``, ``X-Real-IP`` (each one address),
  then ``X-Forwarded-For``, walked from the right: trusted hops are skipped
  and the first untrusted hop is the client (hops further left were written
  by the client and prove nothing). A malformed value, or a list whose hops
  are all trusted, yields nothing, and the direct peer stays the answer.
* Inside the Noise channel (``/ts2021``), the client is whoever opened the
  outer HTTP connection: that address was resolved by these same rules when
  the connection upgraded and is carried by the Noise peer
  (:attr:`~headscale_tw.noise.protocol.NoisePeer.client_address`). Headers
  sent inside Noise are never believed.

Addresses are returned in their canonical text form (``2001:db8::1``; an
IPv4-mapped IPv6 peer becomes its IPv4 address). A request with no network
peer (the CLI's unix socket) gets :data:`LOCAL`.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

import attrs

__all__ = ["TrustedProxies", "client_address", "parse_address", "LOCAL", "NO_PROXIES"]

#: The client address of a request with no IP peer (unix socket, test doubles).
LOCAL = "local"

_Address = ipaddress.IPv4Address | ipaddress.IPv6Address
_Network = ipaddress.IPv4Network | ipaddress.IPv6Network

#: Single-address headers, in the order Headscale consults them.
_SINGLE_HEADERS = (b"true-client-ip", b"x-real-ip")


def parse_address(text: str) -> _Address | None:
    """An IP address from a header or peer value, or ``None`` when it is not one.

    Accepts what proxies write: a bare address, ``1.2.3.4:5678``,
    ``[2001:db8::1]`` and ``[2001:db8::1]:443``. A zone (``%eth0``) is dropped;
    an IPv4-mapped IPv6 address is returned as IPv4.
    """
    text = text.strip()
    if not text or len(text) > 64:
        return None
    if text.startswith("["):
        end = text.find("]")
        if end < 0 or (end + 1 < len(text) and not _is_port(text[end + 1 :])):
            return None
        text = text[1:end]
    elif text.count(":") == 1:
        text, _, port = text.partition(":")
        if not port.isdigit():
            return None
    text = text.partition("%")[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _is_port(text: str) -> bool:
    return text.startswith(":") and text[1:].isdigit() and len(text) <= 6


@attrs.frozen
class TrustedProxies:
    """The ``trusted_proxies`` prefixes; build once with :meth:`from_config`."""

    networks: tuple[_Network, ...] = ()

    @classmethod
    def from_config(cls, prefixes: Iterable[str]) -> TrustedProxies:
        """From the configuration's CIDR strings (already validated by the config loader)."""
        return cls(tuple(ipaddress.ip_network(p, strict=False) for p in prefixes))

    def trusts(self, address: _Address) -> bool:
        """Whether ``address`` lies inside a trusted prefix."""
        return any(address.version == net.version and address in net for net in self.networks)


#: No proxy is trusted: every request's client is its direct peer.
NO_PROXIES = TrustedProxies()


def _peer_address(request) -> tuple[str | None, _Address | None]:
    """(Noise client address or None, the direct peer's IP or None)."""
    getter = getattr(request, "getClientAddress", None)
    peer = getter() if getter is not None else None
    noise_peer = getattr(peer, "peer", None)
    recorded = getattr(noise_peer, "client_address", None)
    if isinstance(recorded, str) and recorded:
        return recorded, None
    host = getattr(peer, "host", None)
    return None, parse_address(host) if isinstance(host, str) else None


def _header_values(request, name: bytes) -> list[str]:
    headers = getattr(request, "requestHeaders", None)
    if headers is None:
        return []
    return [v.decode("latin-1") for v in headers.getRawHeaders(name, [])]


def _from_headers(request, proxies: TrustedProxies) -> _Address | None:
    for name in _SINGLE_HEADERS:
        values = _header_values(request, name)
        if values:
            address = parse_address(values[-1])
            if address is not None:
                return address
    hops = [hop for value in _header_values(request, b"x-forwarded-for") for hop in value.split(",")]
    for hop in reversed(hops):
        address = parse_address(hop)
        if address is None:
            return None
        if not proxies.trusts(address):
            return address
    return None


def client_address(request, proxies: TrustedProxies = NO_PROXIES) -> str:
    """The address of the client that sent ``request`` (see the module docstring for the rules)."""
    recorded, direct = _peer_address(request)
    if recorded is not None:
        return recorded
    if direct is None:
        return LOCAL
    if proxies.trusts(direct):
        forwarded = _from_headers(request, proxies)
        if forwarded is not None:
            return str(forwarded)
    return str(direct)
