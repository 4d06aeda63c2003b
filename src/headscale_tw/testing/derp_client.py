# -*- test-case-name: tests.derp.test_protocol -*-
"""
A small DERP client for tests and benchmarks.

The sans-IO part is :class:`headscale_tw.derp._client.DERPClientConnection`
(re-exported here); :class:`RecordingDERPClient` drives it over a Twisted
transport and records every event, with Deferreds for "handshake done" and
"connection lost".
"""

from __future__ import annotations

from typing import Any, Callable

from nacl.public import PrivateKey
from twisted.internet.defer import Deferred

from headscale_tw.derp import _client as events
from headscale_tw.derp._client import DERPClientConnection
from headscale_tw.derp.mesh import DERPClientProtocol

__all__ = ["DERPClientConnection", "RecordingDERPClient", "events"]


class RecordingDERPClient(DERPClientProtocol):
    """A DERP client protocol that keeps what it receives.

    :ivar events: every event (unless ``record=False``).
    :ivar packets: ``(source, data)`` of relayed packets (unless ``record=False``).
    :ivar packet_count: / ``byte_count``: totals, always kept.
    :ivar ready: fires with the ServerInfo dict.
    :ivar lost: fires (with ``None``; see ``lost_reason``) when the connection is lost.
    """

    def __init__(
        self,
        private_key: PrivateKey | None = None,
        *,
        record: bool = True,
        on_packet: Callable[[bytes, bytes], Any] | None = None,
        **kwargs: Any,
    ):
        super().__init__(private_key or PrivateKey.generate(), **kwargs)
        self.record = record
        self.on_packet = on_packet
        self.events: list[Any] = []
        self.packets: list[tuple[bytes, bytes]] = []
        self.packet_count = 0
        self.byte_count = 0
        self.ready: Deferred = Deferred()
        self.lost: Deferred = Deferred()
        self.lost_reason = None

    @property
    def public_key(self) -> bytes:
        """This client's node public key."""
        return self.conn.public_key

    def event_received(self, event: Any) -> None:
        if isinstance(event, events.PacketReceived):
            self.packet_count += 1
            self.byte_count += len(event.data)
            if self.on_packet is not None:
                self.on_packet(event.source, event.data)
            if not self.record:
                return
            self.packets.append((event.source, event.data))
        elif isinstance(event, events.ServerInfoReceived) and not self.ready.called:
            self.ready.callback(event.info)
        if self.record:
            self.events.append(event)

    def connectionLost(self, reason=None) -> None:
        self.lost_reason = reason
        if not self.lost.called:
            self.lost.callback(None)
