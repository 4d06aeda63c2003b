# -*- test-case-name: tests.noise.test_protocol -*-
"""
``/ts2021``: the HTTP/1.1 upgrade into the Noise control channel.

Request (from tailscaled)::

    POST /ts2021 HTTP/1.1
    Upgrade: tailscale-control-protocol
    Connection: upgrade
    X-Tailscale-Handshake: <base64 of the 101-byte initiation>

Answers:

* header problems -> ``400`` with a one-line text naming the problem;
* a well-formed initiation -> ``101 Switching Protocols`` (``Upgrade`` and
  ``Connection`` headers) immediately followed by the 51-byte handshake
  response, then the connection belongs to :class:`NoiseProtocol`;
* an initiation the codec refuses (type, length) or cannot authenticate ->
  ``101`` followed by an error frame (``03 || BE16 len || text``), then close;
  the Go client reports it as ``server error: "<text>"``.

The same resource tree may be served inside Noise (the inner site); an
upgrade attempted over HTTP/2 gets ``400``.

Brute force: a malformed handshake header or a handshake the codec refuses is
a failure counted against the client's address (``throttle``, see
:mod:`headscale_tw.throttle`); a throttled address gets ``429`` with
``Retry-After`` before its handshake is looked at. The client's address,
resolved through ``proxies`` (``trusted_proxies``), is recorded on the Noise
peer for the inner handlers.
"""

from __future__ import annotations

import binascii
from base64 import b64decode

from twisted.internet.interfaces import IDelayedCall, ITransport
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import resource
from twisted.web.server import Site

from headscale_tw.keys import MachinePrivate
from headscale_tw.noise._codec import INITIATION_LEN, NoiseError, error_frame
from headscale_tw.noise.protocol import DEFAULT_MIN_VERSION, NoiseFactory
from headscale_tw.throttle import FailureThrottle, Throttled
from headscale_tw.web.client_address import NO_PROXIES, TrustedProxies, client_address
from headscale_tw.web.upgrade import NOT_DONE_YET, UpgradeError, switch_protocols

__all__ = ["Ts2021Resource", "UPGRADE_TOKEN", "HANDSHAKE_HEADER"]

UPGRADE_TOKEN = b"tailscale-control-protocol"
HANDSHAKE_HEADER = b"X-Tailscale-Handshake"


class _SendAndClose(Protocol):
    """
    Takes the connection after an error frame was written, and closes it.

    The close waits one reactor turn: ``switch_protocols`` resumes the
    transport right after ``makeConnection``, which must not follow a close.
    """

    transport: ITransport  # makeConnection sets it before any other callback

    def __init__(self, reactor) -> None:
        self._reactor = reactor
        self._call: IDelayedCall | None = None

    def connectionMade(self) -> None:
        self._call = self._reactor.callLater(0, self._close)

    def _close(self) -> None:
        self._call = None
        self.transport.loseConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._call is not None:
            self._call.cancel()
            self._call = None


class Ts2021Resource(resource.Resource):
    """
    The ``/ts2021`` leaf.

    ``inner_site`` serves the HTTP/2 API inside Noise; it may be the very
    site this resource is mounted in (build the ``Site`` first, then
    ``putChild`` this resource). ``throttle`` counts failed handshakes per
    client address (``None``: not throttled); ``proxies`` are the trusted
    proxies. Other keyword options go to :class:`NoiseFactory`.
    """

    isLeaf = True
    _log = Logger()

    def __init__(
        self,
        server_key: MachinePrivate,
        inner_site: Site,
        reactor,
        *,
        min_version: int = DEFAULT_MIN_VERSION,
        throttle: FailureThrottle | None = None,
        proxies: TrustedProxies = NO_PROXIES,
        **options,
    ) -> None:
        super().__init__()
        self.throttle = throttle
        self.proxies = proxies
        self.factory = NoiseFactory(
            server_key, inner_site, reactor, min_version=min_version, **options
        )

    def render_POST(self, request):
        return self._upgrade(request)

    def render_GET(self, request):
        return self._upgrade(request)

    def _bad_request(self, request, text: str) -> bytes:
        # Per attempt, so debug only: failures are summarized per source by the throttle.
        self._log.debug(
            "ts2021: refusing upgrade from {peer}: {text}", peer=request.getClientAddress(), text=text
        )
        request.setResponseCode(400)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return text.encode("utf-8") + b"\n"

    def _handshake_failed(self, request, source: str, text: str) -> bytes:
        if self.throttle is not None:
            self.throttle.record_failure(source)
        return self._bad_request(request, text)

    def _throttled(self, request, refusal: Throttled) -> bytes:
        request.setResponseCode(429)
        request.setHeader(b"retry-after", b"%d" % refusal.retry_after)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return str(refusal).encode("utf-8") + b"\n"

    def _upgrade(self, request):
        source = client_address(request, self.proxies)
        if self.throttle is not None:
            try:
                self.throttle.check(source)
            except Throttled as refusal:
                return self._throttled(request, refusal)
        upgrade = (request.getHeader(b"upgrade") or b"").strip().lower()
        if not upgrade:
            return self._bad_request(request, "missing next protocol (Upgrade header)")
        if upgrade == b"websocket":
            return self._bad_request(request, "WebSocket ts2021 is not supported")
        if upgrade != UPGRADE_TOKEN:
            return self._bad_request(request, "unknown next protocol in Upgrade header")
        encoded = request.getHeader(HANDSHAKE_HEADER)
        if not encoded:
            return self._handshake_failed(request, source, "missing Tailscale handshake header")
        try:
            initiation = b64decode(encoded.strip(), validate=True)
        except (binascii.Error, ValueError):
            return self._handshake_failed(request, source, "invalid Tailscale handshake header: not base64")
        if len(initiation) != INITIATION_LEN:
            return self._handshake_failed(
                request,
                source,
                f"invalid Tailscale handshake header: {len(initiation)} bytes, want {INITIATION_LEN}",
            )

        try:
            response, protocol = self.factory.accept(initiation, client_address=source)
        except NoiseError as e:
            self._log.debug(
                "ts2021: handshake from {peer} failed: {error}",
                peer=source,
                error=str(e),
            )
            if self.throttle is not None:
                self.throttle.record_failure(source)
            return self._switch(request, _SendAndClose(self.factory.reactor), error_frame(str(e)))
        return self._switch(request, protocol, response)

    def _switch(self, request, protocol, first_bytes: bytes):
        try:
            switch_protocols(request, protocol, UPGRADE_TOKEN, first_bytes=first_bytes)
        except UpgradeError as e:
            return self._bad_request(request, str(e))
        return NOT_DONE_YET
