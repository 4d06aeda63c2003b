# -*- test-case-name: tests.derp.test_client -*-
"""
Sans-IO DERP client connection (no Twisted imports).

Used by the mesh forwarder (:mod:`headscale_tw.derp.mesh`) and, through
:mod:`headscale_tw.testing.derp_client`, by tests and benchmarks. Feed received
bytes to :meth:`DERPClientConnection.receive_data`, which returns events;
collect bytes to write with :meth:`DERPClientConnection.data_to_send`.

The client answers the server's ServerKey with ClientInfo automatically and
answers server Pings with Pongs.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from nacl.public import PrivateKey

from . import _frames as f

__all__ = [
    "DERPClientConnection",
    "ServerKeyReceived",
    "ServerInfoReceived",
    "PacketReceived",
    "PeerGone",
    "PeerPresent",
    "KeepAliveReceived",
    "PingReceived",
    "PongReceived",
    "HealthReceived",
    "RestartingReceived",
    "UnknownFrame",
]


class ServerKeyReceived(NamedTuple):
    """The server announced its public key (ClientInfo has been queued)."""

    server_public: bytes


class ServerInfoReceived(NamedTuple):
    """The handshake completed; ``info`` is the decrypted JSON."""

    info: dict


class PacketReceived(NamedTuple):
    """A relayed packet from ``source``."""

    source: bytes
    data: bytes


class PeerGone(NamedTuple):
    """``key`` is gone, for ``reason`` (see :class:`~headscale_tw.derp._frames.PeerGoneReason`)."""

    key: bytes
    reason: int


class PeerPresent(NamedTuple):
    """(Mesh watchers) ``key`` connected from ``ip``:``port``."""

    key: bytes
    ip: str | None
    port: int
    flags: int


class KeepAliveReceived(NamedTuple):
    """The server sent a KeepAlive."""


class PingReceived(NamedTuple):
    """The server pinged us (a Pong has been queued)."""

    data: bytes


class PongReceived(NamedTuple):
    """The server answered one of our pings."""

    data: bytes


class HealthReceived(NamedTuple):
    """Server health text ("" = healthy)."""

    problem: str


class RestartingReceived(NamedTuple):
    """The server is restarting."""

    reconnect_in_ms: int
    try_for_ms: int


class UnknownFrame(NamedTuple):
    """A frame type this client does not know (skipped)."""

    type: int
    payload: bytes


class DERPClientConnection:
    """One client side of a DERP connection (after any HTTP upgrade)."""

    def __init__(
        self,
        private_key: PrivateKey,
        mesh_key: bytes | None = None,
        can_ack_pings: bool = True,
        is_prober: bool = False,
    ):
        self.private_key = private_key
        self.public_key = bytes(private_key.public_key)
        self.server_public: bytes | None = None
        self.server_info: dict | None = None
        self._mesh_key = mesh_key
        self._can_ack_pings = can_ack_pings
        self._is_prober = is_prober
        self._decoder = f.FrameDecoder(max_length=f.MAX_INFO_LEN)
        self._out: list[bytes] = []

    def client_info(self) -> dict[str, Any]:
        """The JSON sent in ClientInfo."""
        info: dict[str, Any] = {"version": f.PROTOCOL_VERSION}
        if self._mesh_key:
            info["meshKey"] = self._mesh_key.hex()
        info["CanAckPings"] = self._can_ack_pings
        if self._is_prober:
            info["IsProber"] = True
        return info

    def data_to_send(self) -> bytes:
        """Return and clear the bytes queued for the server."""
        out = b"".join(self._out)
        self._out.clear()
        return out

    def receive_data(self, data: bytes) -> list[Any]:
        """Process bytes from the server; return the events they produced.

        Raises :class:`~headscale_tw.derp._frames.FrameError` on a protocol violation.
        """
        self._decoder.feed(data)
        events: list[Any] = []
        for frame in self._decoder.frames():
            events.append(self._handle(frame))
        return events

    def _handle(self, frame: f.Frame) -> Any:
        t, p = frame
        if t == f.FrameType.RECV_PACKET:
            return PacketReceived(*f.parse_packet(p))
        if t == f.FrameType.SERVER_KEY:
            if self.server_public is None:
                self.server_public = f.parse_server_key(p)
                self._out.append(f.client_info_frame(self.private_key, self.server_public, self.client_info()))
            return ServerKeyReceived(f.parse_server_key(p))
        if t == f.FrameType.SERVER_INFO:
            if self.server_public is None:
                raise f.FrameError("ServerInfo before ServerKey")
            self.server_info = f.open_server_info(self.private_key, self.server_public, p)
            return ServerInfoReceived(self.server_info)
        if t == f.FrameType.KEEP_ALIVE:
            return KeepAliveReceived()
        if t == f.FrameType.PEER_GONE:
            return PeerGone(*f.parse_peer_gone(p))
        if t == f.FrameType.PEER_PRESENT:
            return PeerPresent(*f.parse_peer_present(p))
        if t == f.FrameType.PING:
            data = f.parse_ping(p)
            self._out.append(f.pong_frame(data))
            return PingReceived(data)
        if t == f.FrameType.PONG:
            return PongReceived(f.parse_ping(p))
        if t == f.FrameType.HEALTH:
            return HealthReceived(p.decode("utf-8", "replace"))
        if t == f.FrameType.RESTARTING:
            return RestartingReceived(*f.parse_restarting(p))
        return UnknownFrame(t, p)

    # -- things the client can say -------------------------------------------

    def send_packet(self, destination: bytes, data: bytes) -> None:
        """Queue a SendPacket."""
        self._out.append(f.send_packet_frame(destination, data))

    def forward_packet(self, source: bytes, destination: bytes, data: bytes) -> None:
        """Queue a ForwardPacket (mesh peers only)."""
        self._out.append(f.forward_packet_frame(source, destination, data))

    def note_preferred(self, preferred: bool = True) -> None:
        """Queue a NotePreferred."""
        self._out.append(f.note_preferred_frame(preferred))

    def watch_conns(self) -> None:
        """Queue a WatchConns (mesh peers only)."""
        self._out.append(f.watch_conns_frame())

    def close_peer(self, key: bytes) -> None:
        """Queue a ClosePeer (mesh peers only)."""
        self._out.append(f.close_peer_frame(key))

    def ping(self, data: bytes) -> None:
        """Queue a Ping with 8 bytes of data."""
        self._out.append(f.ping_frame(data))

    def send_raw(self, data: bytes) -> None:
        """Queue arbitrary bytes (tests of bad input)."""
        self._out.append(data)
