# -*- test-case-name: tests.web.test_upgrade -*-
"""
HTTP/1.1 ``Upgrade`` handoff: the one place where a ``twisted.web`` request's
connection is taken away from the HTTP channel and given to another protocol.

Used by ``/ts2021`` (Noise control protocol) and ``/derp`` (DERP relay). The
precedent is autobahn's ``WebSocketResource.render``: take the channel's
transport, detach the HTTP channel (timeout, producer registration), point the
transport at the new protocol, write the ``101 Switching Protocols`` head and
call ``makeConnection``. Bytes the HTTP channel already buffered after the
request are replayed into the new protocol.

This touches ``twisted.web.http.HTTPChannel`` internals (``_dataBuffer``,
``_networkProducer``); Twisted is pinned in setup.cfg and tests/web/test_upgrade.py
covers it.
"""

from __future__ import annotations

from twisted.internet.interfaces import IProtocol
from twisted.protocols.policies import ProtocolWrapper
from twisted.web.server import NOT_DONE_YET

__all__ = ["switch_protocols", "UpgradeError", "NOT_DONE_YET"]


class UpgradeError(Exception):
    """The request cannot be upgraded (e.g. it arrived over HTTP/2)."""


class _ForwardingBuffer(list):
    """Stands in for a detached channel's ``_dataBuffer``: appended bytes go to the new protocol."""

    def __init__(self, protocol: IProtocol):
        super().__init__()
        self._protocol = protocol

    def append(self, data: bytes) -> None:
        if data:
            self._protocol.dataReceived(data)


def switch_protocols(
    request,
    protocol: IProtocol,
    upgrade: bytes,
    extra_headers: list[tuple[bytes, bytes]] = (),
    first_bytes: bytes = b"",
    send_head: bool = True,
) -> None:
    """Answer ``request`` with ``101 Switching Protocols`` and hand its connection to ``protocol``.

    ``first_bytes`` are written right after the response head, in the same
    write (the ts2021 handshake response goes there). After this call the
    HTTP channel never sees the connection again; the resource's ``render``
    must return ``NOT_DONE_YET``. ``send_head=False`` writes no 101 head at
    all (DERP fast start: the client does not read an HTTP response).
    """
    channel = request.channel
    transport = getattr(channel, "transport", None)
    if transport is None or request.clientproto != b"HTTP/1.1":
        raise UpgradeError("make the upgrade request over HTTP/1.1")

    # Detach the HTTP channel: no idle timeout, no producer registration.
    channel.setTimeout(None)
    producer = getattr(channel, "_networkProducer", None)
    buffered = b"".join(getattr(channel, "_dataBuffer", []))
    if producer is not None:
        producer.unregisterProducer()
    # Bytes that followed the request head in the same read are still being
    # parsed by the channel when we return; it appends them to _dataBuffer.
    channel._dataBuffer = _ForwardingBuffer(protocol)
    channel.transport = None

    if isinstance(transport, ProtocolWrapper):
        # TLS (TLSMemoryBIOProtocol) and our own Noise wrapper deliver to wrappedProtocol.
        transport.wrappedProtocol = protocol
    else:
        transport.protocol = protocol

    # The request ends here as far as HTTP goes: its site logs it now, as a 101.
    request.setResponseCode(101)
    factory = getattr(channel, "factory", None)
    if factory is not None and hasattr(factory, "log"):
        factory.log(request)

    if send_head:
        head = [b"HTTP/1.1 101 Switching Protocols", b"Upgrade: " + upgrade, b"Connection: upgrade"]
        head.extend(name + b": " + value for name, value in extra_headers)
        transport.write(b"\r\n".join(head) + b"\r\n\r\n" + first_bytes)
    elif first_bytes:
        transport.write(first_bytes)

    protocol.makeConnection(transport)
    # The HTTP channel pauses reading while it handles a request; nothing follows us.
    resume = getattr(transport, "resumeProducing", None)
    if resume is not None and not getattr(transport, "disconnecting", False):
        resume()
    if buffered:
        protocol.dataReceived(buffered)
