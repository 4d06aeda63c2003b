# -*- test-case-name: tests.derp.test_stun -*-
"""
The STUN responder: a UDP ``DatagramProtocol`` answering netcheck's Binding Requests.

Each valid request gets a Binding Success Response with XOR-MAPPED-ADDRESS set
to the datagram's source, sent from the same socket. Anything else is ignored
silently and counted. See :mod:`headscale_tw.derp._stun` for the wire format.
"""

from __future__ import annotations

from twisted.internet.interfaces import IReactorUDP, IUDPTransport
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger

from headscale_tw.hostport import parse_hostport

from ._stun import STUNError, build_binding_response, parse_binding_request

__all__ = ["STUNServerProtocol", "parse_listen_addr", "listen_stun"]


class STUNServerProtocol(DatagramProtocol):
    """Answers STUN Binding Requests.

    :ivar requests: / ``responses`` / ``malformed``: counters.
    :param strict: only answer Tailscale-style requests (SOFTWARE ``tailnode`` + FINGERPRINT).
    """

    log = Logger()
    transport: IUDPTransport  # makeConnection sets it before any datagram arrives

    def __init__(self, strict: bool = False):
        self.strict = strict
        self.requests = 0
        self.responses = 0
        self.malformed = 0

    def datagramReceived(self, data: bytes, addr) -> None:
        self.requests += 1
        try:
            txid = parse_binding_request(data, strict=self.strict)
            host, port = addr[0], addr[1]
            response = build_binding_response(txid, host, port)
        except (STUNError, ValueError):
            self.malformed += 1
            return
        self.transport.write(response, addr)
        self.responses += 1


def parse_listen_addr(text: str) -> tuple[str, int]:
    """Split ``"0.0.0.0:3478"`` or ``"[::]:3478"`` into ``(interface, port)``."""
    try:
        host, port = parse_hostport(text)
    except ValueError as e:
        raise ValueError(f"derp.server.stun_listen_addr: {e}") from None
    return host or "0.0.0.0", int(port)


def listen_stun(reactor: IReactorUDP, listen_addr: str, protocol: STUNServerProtocol | None = None):
    """Listen for STUN on ``listen_addr`` (``host:port``); return the port object."""
    host, port = parse_listen_addr(listen_addr)
    return reactor.listenUDP(port, protocol or STUNServerProtocol(), interface=host, maxPacketSize=8192)
