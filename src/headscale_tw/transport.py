"""
The transport our stream protocols are written against, as a type for annotations.

Twisted types ``Protocol.transport`` as an optional ``ITransport``; the DERP and
WebSocket protocols also use the producer and consumer methods that TCP, TLS and
:class:`~headscale_tw.derp.websocket.WebSocketStream` all provide.
"""

from __future__ import annotations

from twisted.internet.interfaces import IConsumer, IPushProducer, ITCPTransport

__all__ = ["IProducerTransport"]


class IProducerTransport(ITCPTransport, IConsumer, IPushProducer):
    """A connected stream transport that is also a push producer (reading) and a consumer (writing).

    Only for annotations: transports provide the three interfaces, not this one.
    """
