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

Detaching the channel needs one ``twisted.web.http.HTTPChannel`` internal
(``_dataBuffer``); that part lives in
:func:`headscale_tw._twisted_private.detach_http_channel` with the other private
uses, and tests/web/test_upgrade.py covers the behaviour.
"""

from __future__ import annotations

from collections.abc import Sequence

from twisted.internet.interfaces import IProtocol
from twisted.protocols.policies import ProtocolWrapper
from twisted.web.server import NOT_DONE_YET

from headscale_tw._twisted_private import detach_http_channel

__all__ = ["switch_protocols", "UpgradeError", "NOT_DONE_YET"]


class UpgradeError(Exception):
    """The request cannot be upgraded (e.g. it arrived over HTTP/2)."""


def switch_protocols(
    request,
    protocol: IProtocol,
    upgrade: bytes,
    extra_headers: Sequence[tuple[bytes, bytes]] = (),
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

    # Detach the HTTP channel: no idle timeout, no producer registration, and
    # bytes it reads from now on (the rest of this read) go to ``protocol``.
    buffered = detach_http_channel(channel, protocol)
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
