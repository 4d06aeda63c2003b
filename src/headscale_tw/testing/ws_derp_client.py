# -*- test-case-name: tests.derp.test_websocket_transport -*-
"""
A DERP-over-WebSocket client for tests, built on the sans-IO codec.

:class:`WebSocketDERPClient` sends the opening handshake
(``GET /derp``, ``Upgrade: websocket``, ``Sec-WebSocket-Protocol: derp``),
checks the 101 answer (``Sec-WebSocket-Accept`` and the chosen subprotocol),
then runs a :class:`~headscale_tw.testing.derp_client.RecordingDERPClient`
over a client-role :class:`~headscale_tw.derp.websocket.WebSocketStream`
(masked binary messages).
"""

from __future__ import annotations

import base64
import os
from typing import Callable

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime, ITransport
from twisted.internet.protocol import Protocol

from headscale_tw.derp import _websocket as ws
from headscale_tw.derp._upgrade import HeadTooLong, ResponseHead
from headscale_tw.derp.websocket import WebSocketStream

from .derp_client import RecordingDERPClient

__all__ = ["WebSocketDERPClient", "websocket_request"]


def websocket_request(host: str, path: str, key: bytes, protocols: str | None = "derp", extra: str = "") -> bytes:
    """The bytes of a WebSocket opening request (``key`` is the base64 text)."""
    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: {host}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Version: 13",
        "Sec-WebSocket-Key: " + key.decode("ascii"),
    ]
    if protocols is not None:
        lines.append("Sec-WebSocket-Protocol: " + protocols)
    text = "\r\n".join(lines) + "\r\n" + extra + "\r\n"
    return text.encode("ascii")


class WebSocketDERPClient(Protocol):
    """Handshake, then DERP over WebSocket.

    :ivar derp: the DERP client (``ready``, ``packets``, ``send_packet`` ...).
    :ivar upgraded: fires with the 101 response's headers (lower-case names).
    :ivar failure_reason: why the handshake was rejected, if it was.
    """

    _MAX_HEAD = 8192
    transport: ITransport  # makeConnection sets it before any other callback

    def __init__(
        self,
        clock: IReactorTime,
        derp: RecordingDERPClient | None = None,
        *,
        host: str = "derp.test",
        path: str = "/derp",
        mask_source: Callable[[int], bytes] | None = None,
    ):
        self.clock = clock
        self.derp = derp or RecordingDERPClient()
        self.host = host
        self.path = path
        self.key = base64.b64encode(os.urandom(16))
        self.mask_source = mask_source
        self.upgraded: Deferred = Deferred()
        self.failure_reason: str | None = None
        self.stream: WebSocketStream | None = None
        self._head: ResponseHead | None = ResponseHead(self._MAX_HEAD)

    def connectionMade(self) -> None:
        self.transport.write(websocket_request(self.host, self.path, self.key))

    def dataReceived(self, data: bytes) -> None:
        if self.stream is not None:
            self.stream.dataReceived(data)
            return
        if self._head is None:
            return
        try:
            head = self._head.feed(data)
        except HeadTooLong as e:
            self._fail(str(e))
            return
        if head is None:
            return
        status, headers, rest = head
        self._head = None
        if not ResponseHead.is_switching(status):
            self._fail("upgrade refused: " + status.decode("latin-1"))
            return
        if headers.get(b"sec-websocket-accept") != ws.accept_key(self.key):
            self._fail("wrong Sec-WebSocket-Accept")
            return
        if headers.get(b"sec-websocket-protocol") != b"derp":
            self._fail("server did not choose the derp subprotocol")
            return
        self.stream = WebSocketStream(self.derp, self.clock, client=True, mask_source=self.mask_source)
        self.stream.makeConnection(self.transport)
        self.upgraded.callback(headers)
        if rest:
            self.stream.dataReceived(rest)

    def _fail(self, reason: str) -> None:
        self.failure_reason = reason
        self.transport.loseConnection()

    def connectionLost(self, reason=None) -> None:
        if self.stream is not None:
            self.stream.connectionLost(reason)
        elif not self.upgraded.called:
            self.upgraded.errback(ConnectionError(self.failure_reason or "connection lost before the upgrade"))
