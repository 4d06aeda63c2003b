# -*- test-case-name: tests.derp.test_websocket_transport -*-
"""
DERP over WebSocket: a thin Twisted adapter around the sans-IO codec in
:mod:`headscale_tw.derp._websocket`.

:class:`WebSocketStream` sits between a real transport and a wrapped
protocol (a :class:`~headscale_tw.derp.protocol.DERPServerProtocol`, or a test
client). To the wrapped protocol it is the transport: every ``write`` goes out
as one binary message; the payload of every binary frame received is handed to
``dataReceived``. Message boundaries mean nothing (DERP frames carry their own
lengths), so the wrapped protocol sees a plain byte stream and runs unchanged.

* Ping → Pong at once; Pong ignored.
* Text message → close 1003 (DERP is binary only).
* Protocol violation → close with the codec's code (1002/1007/1009), then
  drop the TCP connection; ``on_failure(reason)`` is called (a counter).
* Peer's Close → our Close echoing its code, then the TCP connection is
  dropped (the server closes TCP first, RFC 6455 section 7.1.1).
* Wrapped protocol's ``loseConnection`` → our Close (1000); the TCP
  connection is dropped when the peer answers, or after ``close_timeout``.
* Producer registration, pause/resume of reading, peer/host addresses and
  ``abortConnection`` go straight to the real transport.

The close timer is cancelled in ``connectionLost``.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime, ITransport
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from zope.interface import implementer

from headscale_tw.transport import IProducerTransport

from . import _websocket as ws

__all__ = ["WebSocketStream", "DERP_SUBPROTOCOL"]

#: The subprotocol a DERP WebSocket client offers and the server must choose.
DERP_SUBPROTOCOL = b"derp"


@implementer(ITransport, IPushProducer)
class WebSocketStream(Protocol):
    """Carry ``wrapped``'s byte stream in WebSocket binary messages.

    :param wrapped: the protocol that speaks over the stream.
    :param clock: for the closing-handshake timeout.
    :param client: take the client role (mask what we send).
    :param on_failure: called with a reason when the peer breaks RFC 6455.
    """

    log = Logger()
    transport: IProducerTransport  # makeConnection sets it before any other callback

    def __init__(
        self,
        wrapped: Any,
        clock: IReactorTime,
        *,
        client: bool = False,
        close_timeout: float = 2.0,
        max_frame_size: int = 1 << 20,
        mask_source: Callable[[int], bytes] | None = None,
        on_failure: Callable[[str], None] | None = None,
    ):
        kwargs: dict[str, Any] = {"client": client, "max_frame_size": max_frame_size}
        if mask_source is not None:
            kwargs["mask_source"] = mask_source
        self.ws = ws.WebSocketConnection(**kwargs)
        self.wrapped = wrapped
        self.clock = clock
        self.close_timeout = close_timeout
        self.on_failure = on_failure
        self.disconnecting = False
        self.close_code: int | None = None
        self.failure_reason: str | None = None
        self._close_timer: IDelayedCall | None = None

    # -- towards the real transport --------------------------------------

    def connectionMade(self) -> None:
        self.wrapped.makeConnection(self)

    def dataReceived(self, data: bytes) -> None:
        try:
            events = self.ws.receive_data(data)
        except ws.WebSocketProtocolError as e:
            self._fail(e.code, e.reason)
            return
        for event in events:
            if self.transport is None or self.failure_reason is not None:
                return
            if isinstance(event, ws.BinaryData):
                if event.data and not self.ws.close_sent:
                    self.wrapped.dataReceived(event.data)
            elif isinstance(event, ws.Ping):
                if not self.ws.close_sent:
                    self.transport.write(self.ws.send_pong(event.payload))
            elif isinstance(event, ws.TextData):
                self._fail(ws.CloseCode.UNSUPPORTED_DATA, "DERP over WebSocket uses binary messages only")
            elif isinstance(event, ws.CloseReceived):
                self._close_received(event)

    def connectionLost(self, reason=None) -> None:
        self._cancel_close_timer()
        wrapped, self.wrapped = self.wrapped, None
        if wrapped is not None:
            wrapped.connectionLost(reason)

    def _close_received(self, event: ws.CloseReceived) -> None:
        self.close_code = event.code
        if not self.ws.close_sent:
            self.transport.write(self.ws.send_close(event.code, ""))
        self._drop()

    def _fail(self, code: int, reason: str) -> None:
        self.failure_reason = reason
        self.log.debug("WebSocket peer {peer} broke the protocol: {reason}", peer=self.getPeer(), reason=reason)
        if self.on_failure is not None:
            self.on_failure(reason)
        if not self.ws.close_sent:
            self.transport.write(self.ws.send_close(code, reason))
        self._drop()

    def _drop(self) -> None:
        self._cancel_close_timer()
        self.disconnecting = True
        if self.transport is not None:
            self.transport.loseConnection()

    def _cancel_close_timer(self) -> None:
        timer, self._close_timer = self._close_timer, None
        if timer is not None and timer.active():
            timer.cancel()

    # -- ITransport, as seen by the wrapped protocol ------------------------

    def write(self, data: bytes) -> None:
        if data and not self.ws.close_sent and self.transport is not None:
            self.transport.write(self.ws.send_binary(bytes(data)))

    def writeSequence(self, data) -> None:
        self.write(b"".join(data))

    def loseConnection(self) -> None:
        """Start the closing handshake; TCP goes when the peer answers or after ``close_timeout``."""
        if self.disconnecting or self.transport is None:
            return
        self.disconnecting = True
        if not self.ws.close_sent:
            self.transport.write(self.ws.send_close(ws.CloseCode.NORMAL))
        self._close_timer = self.clock.callLater(self.close_timeout, self._drop)

    def abortConnection(self) -> None:
        self._cancel_close_timer()
        self.disconnecting = True
        if self.transport is not None:
            self.transport.abortConnection()

    def getPeer(self):
        return self.transport.getPeer() if self.transport is not None else None

    def getHost(self):
        return self.transport.getHost() if self.transport is not None else None

    def registerProducer(self, producer, streaming: bool) -> None:
        if self.transport is not None:
            self.transport.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        if self.transport is not None:
            self.transport.unregisterProducer()

    # IPushProducer: the wrapped protocol pauses/resumes reading through us.
    def pauseProducing(self) -> None:
        if self.transport is not None:
            self.transport.pauseProducing()

    def resumeProducing(self) -> None:
        if self.transport is not None:
            self.transport.resumeProducing()

    def stopProducing(self) -> None:
        if self.transport is not None:
            self.transport.stopProducing()
