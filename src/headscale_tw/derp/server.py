# -*- test-case-name: tests.derp.test_server -*-
"""
The DERP relay's domain object: which node key is connected where, and how a
packet gets from one client to another.

:class:`DERPServer` holds no sockets. Each connection is a
:class:`~headscale_tw.derp.protocol.DERPServerProtocol` that registers itself
here once its handshake is accepted; the server routes packets between them,
tells mesh watchers about arrivals and departures, and forwards packets to
keys that live on a mesh peer (:mod:`headscale_tw.derp.mesh`).

Counters are plain integer attributes so a metrics exporter can read them.
"""

from __future__ import annotations

import hmac
import random as _random
from typing import TYPE_CHECKING, Any, Awaitable, Callable
from typing import Protocol as TypingProtocol

from nacl.public import PrivateKey
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Factory
from twisted.logger import Logger

from headscale_tw.keyfile import read_key_file

from . import _frames as f

if TYPE_CHECKING:  # pragma: no cover
    from .protocol import DERPServerProtocol

__all__ = [
    "DERPServer",
    "MeshRoute",
    "VerifyClient",
    "node_key_text",
    "load_or_generate_private_key",
]

#: ``verify_client("nodekey:<hex>") -> bool`` (or a Deferred / awaitable of one).
VerifyClient = Callable[[str], "bool | Awaitable[bool]"]


class MeshRoute(TypingProtocol):
    """Something that can forward a packet to a key reachable through a mesh peer."""

    def forward(self, source: bytes, destination: bytes, data: bytes) -> None:
        """Send ``data`` from ``source`` to ``destination`` over the mesh."""


def node_key_text(key: bytes) -> str:
    """The ``nodekey:<hex>`` text form of a raw 32-byte node public key."""
    return "nodekey:" + key.hex()


def load_or_generate_private_key(path: str) -> PrivateKey:
    """Load the DERP server key from ``path`` (``privkey:<64 hex>``), creating it (mode 0600) if absent.

    Raises ``ValueError`` naming the file if it exists but does not hold a key.
    """
    text = read_key_file(path, "DERP private key file",
                         create=lambda: "privkey:" + bytes(PrivateKey.generate()).hex() + "\n")
    prefix = "privkey:"
    if not text.startswith(prefix):
        raise ValueError(f"DERP private key file {path!r} must contain 'privkey:<64 hex digits>'")
    try:
        raw = bytes.fromhex(text[len(prefix) :])
    except ValueError:
        raise ValueError(f"DERP private key file {path!r} holds non-hex key material") from None
    if len(raw) != 32:
        raise ValueError(f"DERP private key file {path!r} holds {len(raw)} bytes, expected 32")
    return PrivateKey(raw)


class DERPServer:
    """Registry and forwarder for one DERP relay instance.

    :param private_key: the server's own Curve25519 key (never the Noise key).
    :param clock: timers for keep-alives, handshake and write timeouts.
    :param verify_client: admission check called with ``"nodekey:<hex>"``;
        ``None`` admits every key. Mesh peers are never checked.
    :param mesh_key: 32-byte shared secret of a mesh; ``None`` disables mesh.
    :param queue_size: packets queued per client (and again for disco) while
        its connection is backed up; the oldest is dropped when full.
    """

    log = Logger()

    def __init__(
        self,
        private_key: PrivateKey,
        clock: IReactorTime,
        *,
        verify_client: VerifyClient | None = None,
        mesh_key: bytes | None = None,
        random: _random.Random | None = None,
        queue_size: int = 32,
        keepalive_interval: float = 60.0,
        keepalive_jitter: float = 5.0,
        handshake_timeout: float = 10.0,
        write_timeout: float | None = 2.0,
        mesh_write_timeout: float | None = 30.0,
    ):
        if mesh_key is not None and len(mesh_key) != 32:
            raise ValueError("mesh key must be 32 bytes")
        self.private_key = private_key
        self.public_key = bytes(private_key.public_key)
        self.clock = clock
        self.verify_client = verify_client
        self.mesh_key = mesh_key
        self.random = random or _random.Random()
        self.queue_size = queue_size
        self.keepalive_interval = keepalive_interval
        self.keepalive_jitter = keepalive_jitter
        self.handshake_timeout = handshake_timeout
        self.write_timeout = write_timeout
        self.mesh_write_timeout = mesh_write_timeout

        self._clients: dict[bytes, list[DERPServerProtocol]] = {}
        self._watchers: set[DERPServerProtocol] = set()
        self._sent_to: dict[bytes, set[bytes]] = {}
        self._mesh_routes: dict[bytes, MeshRoute] = {}

        # Counters (plain attributes, read by metrics).
        self.accepts = 0
        self.websocket_accepts = 0
        self.websocket_protocol_errors = 0
        self.clients_refused = 0
        self.protocol_errors = 0
        self.packets_received = 0
        self.bytes_received = 0
        self.packets_sent = 0
        self.bytes_sent = 0
        self.packets_dropped_queue_full = 0
        self.packets_dropped_unknown_dest = 0
        self.packets_forwarded_out = 0
        self.packets_forwarded_in = 0
        self.peer_gone_not_here_sent = 0
        self.keepalives_sent = 0

    # -- connections --------------------------------------------------------

    def build_protocol(self, ideal_node: bool = False) -> "DERPServerProtocol":
        """A new server-side protocol for one DERP connection (after any HTTP upgrade)."""
        from .protocol import DERPServerProtocol

        return DERPServerProtocol(self, not_ideal=ideal_node)

    def factory(self) -> Factory:
        """A factory for raw DERP over a stream (no HTTP upgrade): tests and benchmarks."""
        server = self

        class _RawDERPFactory(Factory):
            def buildProtocol(self, addr):
                return server.build_protocol()

        return _RawDERPFactory()

    def is_mesh_key(self, info: dict[str, Any]) -> bool:
        """True if ClientInfo ``info`` carries our mesh key."""
        if self.mesh_key is None:
            return False
        text = info.get("meshKey")
        if not isinstance(text, str):
            return False
        try:
            offered = bytes.fromhex(text)
        except ValueError:
            return False
        return hmac.compare_digest(offered, self.mesh_key)

    @property
    def client_count(self) -> int:
        """Number of distinct node keys connected."""
        return len(self._clients)

    @property
    def connection_count(self) -> int:
        """Number of registered connections (duplicates included)."""
        return sum(len(conns) for conns in self._clients.values())

    @property
    def home_clients(self) -> int:
        """Connections whose client said this is its home region."""
        return sum(1 for conns in self._clients.values() for c in conns if c.preferred)

    def is_connected(self, key: bytes) -> bool:
        """True if ``key`` has a local connection."""
        return key in self._clients

    def register(self, conn: "DERPServerProtocol") -> None:
        """Add an admitted connection; the newest connection for a key receives its traffic."""
        key = conn.key
        assert key is not None
        self._clients.setdefault(key, []).append(conn)
        self.accepts += 1
        frame = f.peer_present_frame(key, conn.remote_ip, conn.remote_port, conn.present_flags())
        for watcher in list(self._watchers):
            if watcher is not conn:
                watcher.write_control(frame)

    def unregister(self, conn: "DERPServerProtocol") -> None:
        """Remove a connection; when it was the key's last, tell those who heard from it."""
        self._watchers.discard(conn)
        key = conn.key
        conns = self._clients.get(key) if key is not None else None
        if not conns or conn not in conns:
            return
        conns.remove(conn)
        if conns:
            return
        assert key is not None  # it had connections
        del self._clients[key]
        gone = f.peer_gone_frame(key, f.PeerGoneReason.DISCONNECTED)
        for dst in self._sent_to.pop(key, ()):
            dst_conns = self._clients.get(dst)
            if dst_conns:
                dst_conns[-1].write_control(gone)
        for watcher in list(self._watchers):
            watcher.write_control(gone)

    def add_watcher(self, conn: "DERPServerProtocol") -> None:
        """A mesh peer asked for WatchConns: tell it every current client, then every change."""
        self._watchers.add(conn)
        for key, conns in list(self._clients.items()):
            if conn in conns:
                continue
            active = conns[-1]
            conn.write_control(
                f.peer_present_frame(key, active.remote_ip, active.remote_port, active.present_flags())
            )

    def close_peer(self, key: bytes) -> None:
        """Disconnect every local connection of ``key`` (mesh ClosePeer)."""
        for conn in list(self._clients.get(key, ())):
            conn.close("closed by mesh peer request")

    # -- packets ------------------------------------------------------------

    def send_packet(self, src: "DERPServerProtocol", dst: bytes, data: bytes) -> None:
        """Route a SendPacket from ``src`` to node key ``dst``."""
        src_key = src.key
        assert src_key is not None  # only admitted clients send
        conns = self._clients.get(dst)
        if conns:
            sent = self._sent_to.get(src_key)
            if sent is None:
                sent = self._sent_to[src_key] = set()
            sent.add(dst)
            conns[-1].enqueue_packet(src_key, data)
            return
        route = self._mesh_routes.get(dst)
        if route is not None:
            self.packets_forwarded_out += 1
            route.forward(src_key, dst, data)
            return
        self.packets_dropped_unknown_dest += 1
        if f.looks_like_disco(data):
            src.note_not_here(dst)

    def mark_active(self, conn: "DERPServerProtocol") -> None:
        """A duplicate connection spoke: make it the one that receives (last writer is active)."""
        conns = self._clients.get(conn.key) if conn.key is not None else None
        if conns and len(conns) > 1 and conns[-1] is not conn and conn in conns:
            conns.remove(conn)
            conns.append(conn)

    def deliver_forwarded(self, src: bytes, dst: bytes, data: bytes) -> bool:
        """Deliver a packet a mesh peer forwarded to us; False if ``dst`` is not here."""
        conns = self._clients.get(dst)
        if not conns:
            self.packets_dropped_unknown_dest += 1
            return False
        self.packets_forwarded_in += 1
        conns[-1].enqueue_packet(src, data)
        return True

    # -- mesh routes (filled by mesh.py) --------------------------------------

    def add_mesh_route(self, key: bytes, route: MeshRoute) -> None:
        """``key`` is connected to the mesh peer behind ``route``."""
        if key != self.public_key:
            self._mesh_routes[key] = route

    def remove_mesh_route(self, key: bytes, route: MeshRoute) -> None:
        """``key`` left the mesh peer behind ``route``."""
        if self._mesh_routes.get(key) is route:
            del self._mesh_routes[key]

    def forget_mesh_routes(self, route: MeshRoute) -> None:
        """The connection behind ``route`` broke: forget everything learnt from it."""
        for key in [k for k, r in self._mesh_routes.items() if r is route]:
            del self._mesh_routes[key]

    def mesh_route(self, key: bytes) -> MeshRoute | None:
        """The mesh route for ``key``, if any."""
        return self._mesh_routes.get(key)
