# -*- test-case-name: tests.derp.test_protocol -*-
"""
Server side of one DERP connection, after the HTTP upgrade (or on a raw stream).

Lifecycle (an Automat ``TypeMachineBuilder`` machine)::

    awaiting_client_info --ClientInfo--> verifying --admitted--> connected
            |                               |                       |
            +------- close / refused -------+------- close ---------+--> closing
    any state --connection lost--> closed

* ``awaiting_client_info``: ServerKey was sent on connect; the first frame
  must be ClientInfo. A handshake timer (10 s) covers this and ``verifying``.
* ``verifying``: the admission check (``verify_client``) is running; bytes
  received meanwhile are buffered, not parsed (the client sends NotePreferred
  without waiting).
* ``connected``: registered with :class:`~headscale_tw.derp.server.DERPServer`;
  ServerInfo sent; keep-alives every 60 s + jitter.
* ``closing``: the transport is being closed; input is ignored.

Writes of relayed packets are bounded: the protocol is a streaming producer
for its transport. While the transport is backed up, packets wait in two
queues (disco and other) of ``queue_size`` each; the oldest is dropped when a
queue is full. If the transport stays backed up longer than the write timeout
the connection is closed, so a slow reader never holds memory for long.
"""

from __future__ import annotations

import collections
from typing import Any
from typing import Protocol as TypingProtocol

from automat import TypeMachineBuilder
from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IPushProducer
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from zope.interface import implementer

from headscale_tw.transport import IProducerTransport

from . import _frames as f
from .server import DERPServer, node_key_text

__all__ = ["DERPServerProtocol"]

_T = f.FrameType
_RECV_HEADER = bytes([_T.RECV_PACKET])


class _Lifecycle(TypingProtocol):
    def data_received(self, data: bytes) -> None:
        "Bytes arrived from the client."

    def client_info_received(self, key: bytes, info: dict) -> None:
        "A valid ClientInfo arrived."

    def client_verified(self) -> None:
        "The admission check accepted the client."

    def client_refused(self, reason: str) -> None:
        "The admission check refused the client."

    def close(self, reason: str) -> None:
        "Close the connection (protocol error, timeout, mesh request)."

    def connection_lost(self) -> None:
        "The transport is gone."


@implementer(IPushProducer)
class DERPServerProtocol(Protocol):
    """One client connection to a :class:`DERPServer`."""

    log = Logger()
    transport: IProducerTransport  # makeConnection sets it before any other callback

    def __init__(self, server: DERPServer, not_ideal: bool = False):
        self.server = server
        self.key: bytes | None = None
        self.info: dict[str, Any] = {}
        self.is_mesh_peer = False
        self.preferred = False
        self.not_ideal = not_ideal
        self.remote_ip: str | None = None
        self.remote_port = 0
        self.close_reason: str | None = None
        # Per-connection counters.
        self.packets_dropped = 0
        self.packets_delivered = 0
        self._decoder = f.FrameDecoder(limits=f.SERVER_FRAME_LIMITS)
        self._queue: collections.deque[bytes] = collections.deque()
        self._disco_queue: collections.deque[bytes] = collections.deque()
        self._paused = False
        self._handshake_timer: IDelayedCall | None = None
        self._keepalive_timer: IDelayedCall | None = None
        self._write_timer: IDelayedCall | None = None
        self._abort_timer: IDelayedCall | None = None
        self._verifying: defer.Deferred | None = None
        self._not_here_tokens = 3.0
        self._not_here_stamp = 0.0
        self._machine = _machine_factory(self)

    def __repr__(self) -> str:
        key = self.key.hex()[:16] if self.key else "?"
        return f"<DERPServerProtocol {key} {self.remote_ip}:{self.remote_port}>"

    # -- Twisted protocol -------------------------------------------------------

    def connectionMade(self) -> None:
        peer = None
        try:
            peer = self.transport.getPeer()
        except Exception:  # pragma: no cover - exotic transports
            pass
        self.remote_ip = getattr(peer, "host", None)
        self.remote_port = getattr(peer, "port", 0) or 0
        self.transport.registerProducer(self, True)
        self.transport.write(f.server_key_frame(self.server.public_key))
        timeout = self.server.handshake_timeout
        self._handshake_timer = self.server.clock.callLater(
            timeout, self._machine.close, f"no handshake within {timeout:g} s"
        )

    def dataReceived(self, data: bytes) -> None:
        self._machine.data_received(data)

    def connectionLost(self, reason=None) -> None:
        self._machine.connection_lost()

    # -- IPushProducer (our transport is backed up / drained) -----------------

    def pauseProducing(self) -> None:
        if self._paused:
            return
        self._paused = True
        timeout = self.server.mesh_write_timeout if self.is_mesh_peer else self.server.write_timeout
        if timeout is not None and self._write_timer is None and self.key is not None:
            self._write_timer = self.server.clock.callLater(
                timeout, self._machine.close, f"client did not read for {timeout:g} s"
            )

    def resumeProducing(self) -> None:
        self._paused = False
        self._cancel("_write_timer")
        self._flush()

    def stopProducing(self) -> None:
        self._paused = True

    # -- called by DERPServer ---------------------------------------------------

    def present_flags(self) -> int:
        """The PeerPresent flags describing this connection."""
        flags = 0
        if self.is_mesh_peer:
            flags |= f.PeerPresentFlags.IS_MESH_PEER
        if self.info.get("IsProber") is True:
            flags |= f.PeerPresentFlags.IS_PROBER
        if self.not_ideal:
            flags |= f.PeerPresentFlags.NOT_IDEAL
        return flags or f.PeerPresentFlags.IS_REGULAR

    def enqueue_packet(self, source: bytes, data: bytes) -> None:
        """Send RecvPacket(source, data) now, or queue it (bounded) while backed up."""
        frame = b"".join((_RECV_HEADER, (f.KEY_LEN + len(data)).to_bytes(4, "big"), source, data))
        if not self._paused and not self._queue and not self._disco_queue and self.transport is not None:
            self.packets_delivered += 1
            self.server.packets_sent += 1
            self.server.bytes_sent += len(data)
            self.transport.write(frame)
            return
        queue = self._disco_queue if f.looks_like_disco(data) else self._queue
        if len(queue) >= self.server.queue_size:
            queue.popleft()
            self.packets_dropped += 1
            self.server.packets_dropped_queue_full += 1
        queue.append(frame)

    def write_control(self, frame: bytes) -> None:
        """Write a small control frame (PeerGone, PeerPresent, ...) directly."""
        if self.transport is not None and self.key is not None and self.close_reason is None:
            self.transport.write(frame)

    def note_not_here(self, dst: bytes) -> None:
        """Tell the client ``dst`` is not here (disco only), at most 1/s with a burst of 3."""
        now = self.server.clock.seconds()
        self._not_here_tokens = min(3.0, self._not_here_tokens + (now - self._not_here_stamp))
        self._not_here_stamp = now
        if self._not_here_tokens < 1.0:
            return
        self._not_here_tokens -= 1.0
        self.server.peer_gone_not_here_sent += 1
        self.write_control(f.peer_gone_frame(dst, f.PeerGoneReason.NOT_HERE))

    def close(self, reason: str) -> None:
        """Close this connection, logging ``reason``."""
        self._machine.close(reason)

    @property
    def queued(self) -> int:
        """Packets waiting for the transport to drain."""
        return len(self._queue) + len(self._disco_queue)

    # -- internals used by the machine -------------------------------------

    def _cancel(self, name: str) -> None:
        timer = getattr(self, name)
        if timer is not None:
            setattr(self, name, None)
            if timer.active():
                timer.cancel()

    def _flush(self) -> None:
        transport = self.transport
        while not self._paused and transport is not None:
            if self._disco_queue:
                frame = self._disco_queue.popleft()
            elif self._queue:
                frame = self._queue.popleft()
            else:
                return
            self.packets_delivered += 1
            self.server.packets_sent += 1
            self.server.bytes_sent += len(frame) - f.FRAME_HEADER_LEN - f.KEY_LEN
            transport.write(frame)

    def _read_client_info(self) -> None:
        """In ``awaiting_client_info``: parse the first frame, which must be ClientInfo."""
        try:
            frame = self._decoder.next_frame()
            if frame is None:
                return
            if frame.type != _T.CLIENT_INFO:
                raise f.FrameError(f"expected ClientInfo first, got frame type 0x{frame.type:02x}")
            key, info = f.open_client_info(self.server.private_key, frame.payload)
            self._machine.client_info_received(key, info)
        except f.FrameError as e:
            self._machine.close(f"bad handshake: {e}")

    def _start_verify(self, key: bytes, info: dict) -> None:
        self.key = key
        self.info = info
        if self.server.is_mesh_key(info):
            self.is_mesh_peer = True
            self._machine.client_verified()
            return
        if "meshKey" in info:
            self.log.debug("DERP client {key} offered a wrong mesh key", key=node_key_text(key))
        check = self.server.verify_client
        if check is None:
            self._machine.client_verified()
            return
        d = defer.maybeDeferred(check, node_key_text(key))
        if not isinstance(d, defer.Deferred):  # pragma: no cover
            d = defer.succeed(d)
        self._verifying = d

        def done(allowed):
            self._verifying = None
            if allowed is True or (allowed and not isinstance(allowed, str)):
                self._machine.client_verified()
            else:
                self._machine.client_refused(f"node key {node_key_text(key)} is not known to this control server")

        def failed(failure):
            self._verifying = None
            if failure.check(defer.CancelledError):
                return None
            self.log.failure("DERP verify_client failed for {key}", failure, key=node_key_text(key))
            self._machine.client_refused("could not verify the node key (internal error)")

        d.addCallbacks(done, failed)

    def _admit(self) -> None:
        self._cancel("_handshake_timer")
        self.server.register(self)
        assert self.key is not None  # the client info frame set it before admission
        self.transport.write(f.server_info_frame(self.server.private_key, self.key))
        self._schedule_keepalive()
        self._handle_frames()

    def _refuse(self, reason: str) -> None:
        self.server.clients_refused += 1
        self.log.debug("DERP refused {key}: {reason}", key=node_key_text(self.key or b""), reason=reason)
        self.close_reason = reason
        self.transport.write(f.health_frame(f"refused: {reason}"))
        self._lose()

    def _schedule_keepalive(self) -> None:
        delay = self.server.keepalive_interval + self.server.random.uniform(0, self.server.keepalive_jitter)
        self._keepalive_timer = self.server.clock.callLater(delay, self._send_keepalive)

    def _send_keepalive(self) -> None:
        self._keepalive_timer = None
        if self.transport is not None:
            self.server.keepalives_sent += 1
            self.transport.write(f.keep_alive_frame())
        self._schedule_keepalive()

    def _handle_frames(self) -> None:
        """In ``connected``: handle every complete frame buffered."""
        server = self.server
        try:
            for ftype, payload in self._decoder.frames():
                if ftype == _T.SEND_PACKET:
                    dst, data = f.parse_packet(payload)
                    server.packets_received += 1
                    server.bytes_received += len(data)
                    server.mark_active(self)
                    server.send_packet(self, dst, data)
                elif ftype == _T.NOTE_PREFERRED:
                    self.preferred = f.parse_note_preferred(payload)
                elif ftype == _T.PING:
                    self.transport.write(f.pong_frame(f.parse_ping(payload)))
                elif ftype in (_T.PONG, _T.KEEP_ALIVE):
                    pass
                elif ftype == _T.FORWARD_PACKET:
                    self._require_mesh("ForwardPacket")
                    server.deliver_forwarded(*f.parse_forward_packet(payload))
                elif ftype == _T.WATCH_CONNS:
                    self._require_mesh("WatchConns")
                    server.add_watcher(self)
                elif ftype == _T.CLOSE_PEER:
                    self._require_mesh("ClosePeer")
                    server.close_peer(f.parse_close_peer(payload))
                elif ftype == _T.CLIENT_INFO:
                    raise f.FrameError("second ClientInfo frame")
                # Unknown and server-to-client types are skipped.
        except f.FrameError as e:
            server.protocol_errors += 1
            self._machine.close(str(e))

    def _require_mesh(self, what: str) -> None:
        if not self.is_mesh_peer:
            raise f.FrameError(f"insufficient permissions for {what} (not a mesh peer)")

    def _buffer(self, data: bytes) -> None:
        self._decoder.feed(data)
        if self._decoder.buffered > f.MAX_CLIENT_INFO_LEN and self.transport is not None:
            self.transport.pauseProducing()

    def _log_close(self, reason: str) -> None:
        self.close_reason = reason
        self.log.debug("DERP closing {conn}: {reason}", conn=self, reason=reason)

    def _lose(self) -> None:
        self._cancel("_handshake_timer")
        self._cancel("_keepalive_timer")
        self._cancel("_write_timer")
        if self._verifying is not None:
            d, self._verifying = self._verifying, None
            d.cancel()
        if self.key is not None:
            self.server.unregister(self)
        self._queue.clear()
        self._disco_queue.clear()
        if self.transport is not None:
            # TLS (TLSMemoryBIOProtocol) starts its shutdown only once no
            # producer is registered; without this a server-side close over
            # TLS waited for the abort timer below.
            self.transport.unregisterProducer()
            self.transport.loseConnection()
            abort = getattr(self.transport, "abortConnection", None)
            if abort is not None:
                self._abort_timer = self.server.clock.callLater(5.0, abort)

    def _cleanup(self) -> None:
        self._cancel("_handshake_timer")
        self._cancel("_keepalive_timer")
        self._cancel("_write_timer")
        self._cancel("_abort_timer")
        if self._verifying is not None:
            d, self._verifying = self._verifying, None
            d.cancel()
        self._queue.clear()
        self._disco_queue.clear()
        if self.key is not None:
            self.server.unregister(self)


def _build_machine():
    builder = TypeMachineBuilder(_Lifecycle, DERPServerProtocol)
    awaiting = builder.state("awaiting_client_info")
    verifying = builder.state("verifying")
    connected = builder.state("connected")
    closing = builder.state("closing")
    closed = builder.state("closed")

    @awaiting.upon(_Lifecycle.data_received).loop()
    def _(m: _Lifecycle, core: DERPServerProtocol, data: bytes) -> None:
        core._decoder.feed(data)
        core._read_client_info()

    @awaiting.upon(_Lifecycle.client_info_received).to(verifying)
    def _(m: _Lifecycle, core: DERPServerProtocol, key: bytes, info: dict) -> None:
        core._start_verify(key, info)

    @verifying.upon(_Lifecycle.data_received).loop()
    def _(m: _Lifecycle, core: DERPServerProtocol, data: bytes) -> None:
        core._buffer(data)

    @verifying.upon(_Lifecycle.client_verified).to(connected)
    def _(m: _Lifecycle, core: DERPServerProtocol) -> None:
        if core.transport is not None:
            core.transport.resumeProducing()
        core._admit()

    @verifying.upon(_Lifecycle.client_refused).to(closing)
    def _(m: _Lifecycle, core: DERPServerProtocol, reason: str) -> None:
        core._refuse(reason)

    @connected.upon(_Lifecycle.data_received).loop()
    def _(m: _Lifecycle, core: DERPServerProtocol, data: bytes) -> None:
        core._decoder.feed(data)
        core._handle_frames()

    for state in (awaiting, verifying, connected):

        @state.upon(_Lifecycle.close).to(closing)
        def _(m: _Lifecycle, core: DERPServerProtocol, reason: str) -> None:
            core._log_close(reason)
            core._lose()

    for state in (awaiting, verifying, connected, closing):

        @state.upon(_Lifecycle.connection_lost).to(closed)
        def _(m: _Lifecycle, core: DERPServerProtocol) -> None:
            core._cleanup()

    # Inputs that mean nothing in a state are ignored there.
    ignored = {
        awaiting: (_Lifecycle.client_verified, _Lifecycle.client_refused),
        verifying: (_Lifecycle.client_info_received,),
        connected: (_Lifecycle.client_info_received, _Lifecycle.client_verified, _Lifecycle.client_refused),
        closing: (
            _Lifecycle.data_received,
            _Lifecycle.client_info_received,
            _Lifecycle.client_verified,
            _Lifecycle.client_refused,
            _Lifecycle.close,
        ),
        closed: (
            _Lifecycle.data_received,
            _Lifecycle.client_info_received,
            _Lifecycle.client_verified,
            _Lifecycle.client_refused,
            _Lifecycle.close,
            _Lifecycle.connection_lost,
        ),
    }
    for state, inputs in ignored.items():
        for inp in inputs:
            state.upon(inp).loop().returns(None)
    return builder.build()


_machine_factory = _build_machine()
