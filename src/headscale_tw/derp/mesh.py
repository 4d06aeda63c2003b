# -*- test-case-name: tests.derp.test_mesh -*-
"""
DERP client protocol and mesh forwarding between relay instances.

Two (or more) instances sharing a 32-byte mesh key relay for each other's
clients. Each instance connects to every peer as a DERP client whose key is
its own server key and whose ClientInfo carries the mesh key, then sends
WatchConns. The peer answers with PeerPresent for each of its clients (and
later arrivals) and PeerGone for departures; we record "key K is reachable
through this connection" in :class:`~headscale_tw.derp.server.DERPServer`.
A local client's packet for K then goes out as ForwardPacket(src, K, data)
and the peer delivers it as RecvPacket(src, data). Forwarding is one hop.

When the mesh connection breaks, every route learnt from it is forgotten and
:func:`mesh_peer_service` reconnects every 5 seconds.

Configuration (``derp.server.mesh_key_path`` / ``mesh_peers``) goes through
:func:`load_mesh_key` and :func:`mesh_peer_endpoint`.
"""

from __future__ import annotations

from typing import Any, Callable
from urllib.parse import urlsplit

from nacl.public import PrivateKey
from twisted.application.internet import ClientService
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IProtocol, IReactorTime, IStreamClientEndpoint, ITCPTransport
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.ssl import optionsForClientTLS
from twisted.logger import Logger

from headscale_tw.keyfile import read_key_file

from . import _client as c
from . import _frames as f
from ._upgrade import HeadTooLong, ResponseHead
from .server import DERPServer

__all__ = [
    "DERPClientProtocol",
    "MeshPeerProtocol",
    "load_mesh_key",
    "mesh_peer_endpoint",
    "mesh_peer_factory",
    "mesh_peer_service",
]


def load_mesh_key(path: str) -> bytes:
    """Read the mesh pre-shared key: 64 hex digits (surrounding white space ignored), as derper's.

    Raises ``ValueError`` naming the file when it is missing or malformed.
    """
    text = read_key_file(path, "DERP mesh key file", missing_hint="create it with `openssl rand -hex 32`")
    try:
        key = bytes.fromhex(text)
    except ValueError:
        raise ValueError(f"DERP mesh key file {path!r} must hold 64 hex digits") from None
    if len(key) != 32:
        raise ValueError(f"DERP mesh key file {path!r} holds {len(key)} bytes, expected 32 (64 hex digits)")
    return key


def mesh_peer_endpoint(reactor: Any, url: str) -> tuple[IStreamClientEndpoint, str, str]:
    """``(endpoint, host header, path)`` for a mesh peer's DERP URL.

    ``https://`` verifies the peer's certificate against the platform's trust
    store (OpenSSL's default paths: ``SSL_CERT_FILE`` / ``SSL_CERT_DIR`` apply).
    The path defaults to ``/derp``.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"mesh peer {url!r} must be an http(s) URL with a host")
    host = parts.hostname
    port = parts.port or (443 if parts.scheme == "https" else 80)
    endpoint: IStreamClientEndpoint = HostnameEndpoint(reactor, host, port)
    if parts.scheme == "https":
        endpoint = wrapClientTLS(optionsForClientTLS(host), endpoint)
    return endpoint, parts.netloc.rpartition("@")[2], parts.path or "/derp"


class DERPClientProtocol(Protocol):
    """Twisted driver for :class:`~headscale_tw.derp._client.DERPClientConnection`.

    With ``upgrade_host`` it first sends ``GET /derp`` with ``Upgrade: DERP``
    and waits for the 101 head (skipped when ``fast_start``). Subclasses
    override :meth:`event_received`.
    """

    transport: ITCPTransport  # makeConnection sets it before any other callback

    log = Logger()
    _MAX_HEAD = 8192

    def __init__(
        self,
        private_key: PrivateKey,
        *,
        mesh_key: bytes | None = None,
        upgrade_host: str | None = None,
        path: str = "/derp",
        fast_start: bool = False,
    ):
        self.conn = c.DERPClientConnection(private_key, mesh_key=mesh_key)
        self._upgrade_host = upgrade_host
        self._path = path
        self._fast_start = fast_start
        self._head: ResponseHead | None = None
        self.failure_reason: str | None = None

    def connectionMade(self) -> None:
        if self._upgrade_host is not None:
            lines = [
                f"GET {self._path} HTTP/1.1",
                f"Host: {self._upgrade_host}",
                "Upgrade: DERP",
                "Connection: Upgrade",
            ]
            if self._fast_start:
                lines.append("Derp-Fast-Start: 1")
            else:
                self._head = ResponseHead(self._MAX_HEAD)
            self.transport.write(("\r\n".join(lines) + "\r\n\r\n").encode("ascii"))

    def dataReceived(self, data: bytes) -> None:
        if self._head is not None:
            try:
                head = self._head.feed(data)
            except HeadTooLong as e:
                self._fail(str(e))
                return
            if head is None:
                return
            status, _, rest = head
            self._head = None
            if not ResponseHead.is_switching(status):
                self._fail(f"DERP upgrade refused: {status.decode('latin-1')}")
                return
            data = rest
            if not data:
                return
        try:
            events = self.conn.receive_data(data)
        except f.FrameError as e:
            self._fail(f"bad frame from server: {e}")
            return
        self.flush()
        for event in events:
            self.event_received(event)

    def _fail(self, reason: str) -> None:
        self.failure_reason = reason
        self.log.info("DERP client closing: {reason}", reason=reason)
        self.transport.loseConnection()

    def flush(self) -> None:
        """Write whatever the connection has queued."""
        out = self.conn.data_to_send()
        if out and self.transport is not None:
            self.transport.write(out)

    def event_received(self, event: Any) -> None:
        """Handle one event from :mod:`headscale_tw.derp._client` (override)."""

    def send_packet(self, destination: bytes, data: bytes) -> None:
        """Send ``data`` to ``destination`` through the server."""
        self.conn.send_packet(destination, data)
        self.flush()


class MeshPeerProtocol(DERPClientProtocol):
    """Our connection to a mesh peer: learns its clients and forwards packets to them."""

    def __init__(self, server: DERPServer, upgrade_host: str | None = None, path: str = "/derp"):
        if server.mesh_key is None:
            raise ValueError("mesh forwarding needs the server to have a mesh key")
        super().__init__(server.private_key, mesh_key=server.mesh_key, upgrade_host=upgrade_host, path=path)
        self.server = server
        self.routes_learnt = 0

    def event_received(self, event: Any) -> None:
        if isinstance(event, c.ServerKeyReceived):
            if event.server_public == self.server.public_key:
                self._fail("mesh peer is ourselves")
        elif isinstance(event, c.ServerInfoReceived):
            self.log.info("DERP mesh: connected to peer {peer}, watching its clients",
                          peer=self._upgrade_host or self.transport.getPeer())
            self.conn.watch_conns()
            self.flush()
        elif isinstance(event, c.PeerPresent):
            self.routes_learnt += 1
            self.server.add_mesh_route(event.key, self)
        elif isinstance(event, c.PeerGone):
            self.server.remove_mesh_route(event.key, self)
        elif isinstance(event, c.PacketReceived):
            # A mesh peer's own key received a packet: nothing to do with it.
            pass

    def forward(self, source: bytes, destination: bytes, data: bytes) -> None:
        """Send ForwardPacket(source, destination, data) to the peer."""
        self.conn.forward_packet(source, destination, data)
        self.flush()

    def connectionLost(self, reason=None) -> None:
        self.server.forget_mesh_routes(self)


def mesh_peer_factory(server: DERPServer, upgrade_host: str | None = None, path: str = "/derp") -> Factory:
    """A client factory building :class:`MeshPeerProtocol` for ``server``."""
    return Factory.forProtocol(lambda: MeshPeerProtocol(server, upgrade_host, path))


def mesh_peer_service(
    server: DERPServer,
    endpoint: IStreamClientEndpoint,
    upgrade_host: str | None,
    clock: IReactorTime,
    retry_delay: float = 5.0,
    prepare: Callable[[IProtocol], Any] | None = None,
    path: str = "/derp",
) -> ClientService:
    """A service that keeps a mesh connection to the peer at ``endpoint`` (retry every 5 s).

    ``upgrade_host`` is the peer's Host header for ``GET /derp``; ``None``
    speaks raw DERP (no HTTP upgrade).
    """
    return ClientService(
        endpoint,
        mesh_peer_factory(server, upgrade_host, path),
        retryPolicy=lambda attempts: retry_delay,
        clock=clock,
        prepareConnection=prepare,
    )
