# -*- test-case-name: tests.derp.test_resource -*-
"""
``twisted.web`` resources of the embedded DERP server.

* ``/derp``: ``Upgrade: DERP`` (or ``websocket`` without the ``derp``
  subprotocol, as very old clients sent) hands the connection to a
  :class:`~headscale_tw.derp.protocol.DERPServerProtocol` through
  :func:`headscale_tw.web.upgrade.switch_protocols`. With
  ``Derp-Fast-Start: 1`` no 101 head is written. ``Upgrade: websocket`` with
  ``Sec-WebSocket-Protocol: derp`` is a WebSocket handshake (RFC 6455): 101
  with ``Sec-WebSocket-Accept`` and subprotocol ``derp``, then the same
  protocol inside binary messages (:mod:`headscale_tw.derp.websocket`); a bad
  handshake gets 400 (426 for a version other than 13). Anything else: 426.
* ``/derp/probe``, ``/derp/latency-check``: GET/HEAD → 200, empty,
  ``Access-Control-Allow-Origin: *``; other methods 405.
* ``/generate_204``: captive-portal check, 204 with the challenge echoed.
* ``/bootstrap-dns``: JSON ``{hostname: [ip, ...]}`` for the DERP map's hosts.

Mount with :func:`mount_derp_resources`.
"""

from __future__ import annotations

import json
import re
from typing import Any, Awaitable, Callable, Iterable

from twisted.internet import defer
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from headscale_tw.web.upgrade import UpgradeError, switch_protocols

from . import _frames as f
from . import _websocket as ws
from .server import DERPServer
from .websocket import DERP_SUBPROTOCOL, WebSocketStream

__all__ = [
    "DERPResource",
    "ProbeResource",
    "NoContentResource",
    "BootstrapDNSResource",
    "mount_derp_resources",
    "derp_map_hostnames",
]

_CHALLENGE = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


class ProbeResource(Resource):
    """``/derp/probe`` and ``/derp/latency-check``."""

    isLeaf = True

    def render_GET(self, request) -> bytes:
        request.setHeader(b"Access-Control-Allow-Origin", b"*")
        return b""

    render_HEAD = render_GET


class DERPResource(Resource):
    """``/derp``: the upgrade into the DERP protocol, plus the probe children."""

    log = Logger()

    def __init__(self, server: DERPServer):
        super().__init__()
        self.derp_server = server
        probe = ProbeResource()
        self.putChild(b"probe", probe)
        self.putChild(b"latency-check", probe)

    def getChild(self, path: bytes, request):
        if path == b"":
            return self
        return super().getChild(path, request)

    def render_GET(self, request):
        upgrade = (request.getHeader(b"upgrade") or b"").strip().lower()
        if upgrade == b"websocket":
            protocols = b",".join(request.requestHeaders.getRawHeaders(b"sec-websocket-protocol", []))
            if DERP_SUBPROTOCOL in [p.strip().lower() for p in protocols.split(b",")]:
                return self._upgrade_websocket(request)
            # Very old clients sent "Upgrade: WebSocket" but spoke plain DERP (derper's rule).
        elif upgrade != b"derp":
            request.setResponseCode(426)
            request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
            return b"DERP requires connection upgrade\n"
        fast_start = request.getHeader(b"derp-fast-start") == b"1"
        ideal = bool(request.getHeader(b"ideal-node"))
        protocol = self.derp_server.build_protocol(ideal_node=ideal)
        headers = [
            (b"Derp-Version", str(f.PROTOCOL_VERSION).encode()),
            (b"Derp-Public-Key", self.derp_server.public_key.hex().encode()),
        ]
        try:
            switch_protocols(request, protocol, b"DERP", headers, send_head=not fast_start)
        except UpgradeError as e:
            return _plain(request, 400, f"cannot upgrade to DERP: {e}")
        return NOT_DONE_YET

    def _upgrade_websocket(self, request):
        """``Upgrade: websocket`` offering the ``derp`` subprotocol: DERP inside binary messages."""
        headers = {name.lower(): values for name, values in request.requestHeaders.getAllRawHeaders()}
        try:
            handshake = ws.validate_handshake(request.method, headers, [DERP_SUBPROTOCOL])
        except ws.HandshakeError as e:
            for name, value in e.headers:
                request.setHeader(name, value)
            return _plain(request, e.status, f"bad WebSocket handshake: {e.reason}")
        server = self.derp_server
        protocol = server.build_protocol(ideal_node=bool(request.getHeader(b"ideal-node")))

        def failed(reason: str) -> None:
            server.websocket_protocol_errors += 1

        stream = WebSocketStream(protocol, server.clock, on_failure=failed)
        headers_out = [
            (b"Sec-WebSocket-Accept", handshake.accept),
            (b"Sec-WebSocket-Protocol", DERP_SUBPROTOCOL),
        ]
        try:
            switch_protocols(request, stream, b"websocket", extra_headers=headers_out)
        except UpgradeError as e:
            return _plain(request, 400, f"cannot upgrade to WebSocket: {e}")
        server.websocket_accepts += 1
        return NOT_DONE_YET


def _plain(request, code: int, text: str) -> bytes:
    request.setResponseCode(code)
    request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
    return (text + "\n").encode("utf-8")


class NoContentResource(Resource):
    """``/generate_204``: Tailscale's captive-portal check."""

    isLeaf = True

    def render_GET(self, request) -> bytes:
        challenge = request.getHeader(b"x-tailscale-challenge")
        if challenge:
            text = challenge.decode("latin-1")
            if _CHALLENGE.match(text):
                request.setHeader(b"X-Tailscale-Response", b"response " + challenge)
        request.setHeader(b"Cache-Control", b"no-cache, no-store, must-revalidate, no-transform, max-age=0")
        request.setResponseCode(204)
        return b""

    render_HEAD = render_GET


def derp_map_hostnames(derp_map: dict[str, Any]) -> list[str]:
    """Every node HostName in a DERP map, in region order, without duplicates."""
    seen: list[str] = []
    for _rid, region in sorted(derp_map.get("Regions", {}).items()):
        for node in region.get("Nodes", []):
            host = node.get("HostName")
            if host and host not in seen:
                seen.append(host)
    return seen


class BootstrapDNSResource(Resource):
    """``/bootstrap-dns``: resolve the DERP map's host names for clients whose DNS is broken.

    :param hostnames: returns the names to resolve (e.g. ``lambda: derp_map_hostnames(provider.derp_map)``).
    :param resolve: ``resolve(name)`` returning (a Deferred/awaitable of) a list of IP strings.
    """

    isLeaf = True
    log = Logger()

    def __init__(
        self,
        hostnames: Callable[[], Iterable[str]],
        resolve: Callable[[str], "Awaitable[list[str]] | defer.Deferred"],
    ):
        super().__init__()
        self.hostnames = hostnames
        self.resolve = resolve

    async def _answer(self, request) -> None:
        result: dict[str, list[str]] = {}
        for name in self.hostnames():
            try:
                result[name] = list(await self.resolve(name))
            except Exception as e:
                self.log.debug("bootstrap-dns could not resolve {name}: {error}", name=name, error=str(e))
        request.setHeader(b"Content-Type", b"application/json")
        request.write(json.dumps(result).encode())
        request.finish()

    def render_GET(self, request):
        d = defer.Deferred.fromCoroutine(self._answer(request))
        d.addErrback(lambda failure: self.log.failure("bootstrap-dns failed", failure))
        return NOT_DONE_YET


def mount_derp_resources(
    root: Resource,
    server: DERPServer,
    bootstrap_dns: BootstrapDNSResource | None = None,
) -> None:
    """Put ``/derp`` (with ``probe`` and ``latency-check``), ``/generate_204`` and,
    if given, ``/bootstrap-dns`` under ``root``."""
    root.putChild(b"derp", DERPResource(server))
    root.putChild(b"generate_204", NoContentResource())
    if bootstrap_dns is not None:
        root.putChild(b"bootstrap-dns", bootstrap_dns)
