# -*- test-case-name: tests.noise.test_protocol -*-
"""
The Noise transport as a Twisted ``ProtocolWrapper`` (modelled on ``TLSMemoryBIOProtocol``).

After ``/ts2021`` has answered the handshake, the connection belongs to a
:class:`NoiseProtocol`. It decrypts records into an inner HTTP/2 server
(``H2Connection``) that serves an ordinary ``twisted.web.server.Site``, and
encrypts everything that server writes. Inner requests find out who is on
the other end with :func:`noise_peer`.

Bytes on the wire after the 51-byte handshake response (see ``_codec``)::

    server -> client   [early payload: ff ff ff 'T' 'S', BE32 len, EarlyNoise JSON]
                       then HTTP/2 server preface (SETTINGS) and responses
    client -> server   HTTP/2 client preface + SETTINGS, then requests

all carried in type-4 records of at most 4096 bytes.

Lifecycle: *awaiting the first record* (handshake timeout, default 30 s:
the client sends its HTTP/2 preface immediately) -> *established* (idle
timeout, default 300 s, reset by every record in either direction; map
keep-alives keep healthy long-polls alive) -> *closed*. A bad record, a
timeout or the peer leaving closes this one connection; timers are
cancelled in ``connectionLost``.

Clients whose protocol version is below ``min_version`` still complete the
handshake, but their HTTP/2 requests are answered by a refusal site: the
register call gets a ``RegisterResponse`` whose ``Error`` the official client
shows as ``backend error: <text>`` (``tailscale up`` exits instead of
retrying silently). See docs/noise.md.
"""

from __future__ import annotations

import json
import weakref
from collections import deque

import attrs
import priority
from twisted.internet import tcp
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IAddress
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper, TimeoutMixin
from twisted.web import resource
from twisted.web._http2 import _END_STREAM_SENTINEL, H2Connection
from twisted.web.server import Site
from zope.interface import implementer

from headscale_tw.keys import ChallengePrivate, MachinePrivate, MachinePublic
from headscale_tw.noise._codec import (
    FrameError,
    NoiseResponder,
    RecordDecoder,
    RecordEncoder,
    ResponderResult,
    encode_early_payload,
)
from headscale_tw.web.access_log import AccessLoggedSite

__all__ = [
    "write_through",
    "NoisePeer",
    "NoiseAddress",
    "NoiseProtocol",
    "NoiseFactory",
    "noise_peer",
    "refusal_message",
    "stream_backlog",
    "DEFAULT_MIN_VERSION",
    "EARLY_NOISE_MIN_VERSION",
]

#: tailscale 1.78 (capver 109) and newer are served; Headscale's floor is 113.
DEFAULT_MIN_VERSION = 106
#: Clients understand the early payload from this version on.
EARLY_NOISE_MIN_VERSION = 49


@attrs.frozen
class NoisePeer:
    """The authenticated other end of a Noise connection."""

    machine_key: MachinePublic
    #: Noise protocol version = the client's capability version.
    version: int
    #: The underlying transport's peer address (TCP, or whatever TLS wraps).
    address: IAddress
    #: Early-noise challenge key sent to this client, if any.
    challenge: ChallengePrivate | None = None
    #: The client's address as resolved when ``/ts2021`` upgraded (honouring
    #: ``trusted_proxies``; see :mod:`headscale_tw.web.client_address`); empty
    #: when unknown, and then the transport's peer is the client.
    client_address: str = ""


@implementer(IAddress)
@attrs.frozen
class NoiseAddress:
    """
    What ``getPeer()`` returns inside a Noise connection.

    Inner requests see it as ``request.getClientAddress()``; ``host`` and
    ``port`` mirror the underlying address so logging code keeps working.
    """

    peer: NoisePeer

    @property
    def host(self) -> str | None:
        return getattr(self.peer.address, "host", None)

    @property
    def port(self) -> int | None:
        return getattr(self.peer.address, "port", None)


def noise_peer(request) -> NoisePeer | None:
    """The Noise peer of an inner (HTTP/2-over-Noise) request, or None for a plain request."""
    address = request.getClientAddress()
    if isinstance(address, NoiseAddress):
        return address.peer
    return None


def stream_backlog(request):
    """
    For a request on the Noise layer's HTTP/2 connection: a callable giving the
    bytes written to its response and not sent yet (held because the client's
    flow-control window is used up, i.e. it does not read); None otherwise.
    """
    stream = getattr(request, "channel", None)
    conn = getattr(stream, "_conn", None)
    if not isinstance(conn, _CountingH2Connection):
        return None
    queues, stream_id = conn._outboundStreamQueues, stream.streamID

    def backlog() -> int:
        queue = queues.get(stream_id)
        return 0 if queue is None else queue.nbytes

    return backlog


def refusal_message(version: int, min_version: int) -> str:
    """The text a too-old client is shown."""
    return (
        f"unsupported client: capability version {version} is older than this server's"
        f" minimum {min_version}; please upgrade Tailscale"
    )


class _RefusalResource(resource.Resource):
    """Answers every inner request of a refused client with the refusal text."""

    isLeaf = True

    def __init__(self, message: str) -> None:
        super().__init__()
        self._message = message

    def render(self, request):
        if request.postpath == [b"machine", b"register"]:
            # RegisterResponse.Error reaches `tailscale up` as "backend error: ...".
            request.setHeader(b"content-type", b"application/json")
            return json.dumps({"Error": self._message}).encode("utf-8")
        request.setResponseCode(403)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return self._message.encode("utf-8") + b"\n"


class NoiseFactory:
    """
    Settings and bookkeeping shared by all Noise connections of one server.

    ``inner_site`` serves the HTTP/2 requests that arrive inside Noise. The
    ``reactor`` drives the timeouts and the inner ``H2Connection``.
    """

    _log = Logger()

    def __init__(
        self,
        server_key: MachinePrivate,
        inner_site: Site,
        reactor,
        *,
        min_version: int = DEFAULT_MIN_VERSION,
        handshake_timeout: float | None = 30.0,
        idle_timeout: float | None = 300.0,
        early_payload: bool = True,
    ) -> None:
        self.server_key = server_key
        self.public_key = server_key.public()
        self.responder = NoiseResponder(server_key.raw)
        self.inner_site = inner_site
        self.reactor = reactor
        self.min_version = min_version
        self.handshake_timeout = handshake_timeout
        self.idle_timeout = idle_timeout
        self.early_payload = early_payload
        self.connections: set[NoiseProtocol] = set()
        self._refusal_sites: dict[int, Site] = {}

    def accept(self, initiation: bytes, client_address: str = "") -> tuple[bytes, NoiseProtocol]:
        """
        Answer a 101-byte initiation: the 51-byte response and the protocol to switch to.

        ``client_address`` is recorded on the peer (:attr:`NoisePeer.client_address`).

        Raises :class:`~headscale_tw.noise._codec.HandshakeRefused` or
        :class:`~headscale_tw.noise._codec.HandshakeFailed`.
        """
        result = self.responder.respond(initiation)
        return result.response, NoiseProtocol(self, result, client_address)

    def site_for(self, version: int) -> Site:
        """The inner site for a client of ``version``: the real one, or a refusal."""
        if version >= self.min_version:
            return self.inner_site
        site = self._refusal_sites.get(version)
        if site is None:
            refusal = _RefusalResource(refusal_message(version, self.min_version))
            # counted and logged with the inner site's requests when that site keeps an access log
            access_log = getattr(self.inner_site, "access_log", None)
            if access_log is None:
                site = Site(refusal, reactor=self.reactor)
            else:
                site = AccessLoggedSite(refusal, access_log, reactor=self.reactor)
            self._refusal_sites[version] = site
        return site

    def build_inner(self, site: Site) -> H2Connection:
        """
        An HTTP/2 server connection for ``site`` driven by our reactor.

        Twisted's own path (``_GenericHTTPChannelProtocol`` seeing
        ``negotiatedProtocol == b"h2"``) builds ``H2Connection()`` on the
        global reactor, whose send loop would then escape our clock; so we
        build it here with the same attributes ``Site.buildProtocol`` sets.
        """
        h2 = _CountingH2Connection(self.reactor)
        h2.site = site
        h2.factory = site
        h2.requestFactory = site.requestFactory
        # The Noise layer owns the idle timeout: Site's default (60 s) would cut
        # healthy map long-polls whose keep-alives come every ~55 s.
        h2.timeOut = None
        h2.callLater = self.reactor.callLater
        return h2

    # The ProtocolWrapper contract.
    def registerProtocol(self, protocol: NoiseProtocol) -> None:
        self.connections.add(protocol)

    def unregisterProtocol(self, protocol: NoiseProtocol) -> None:
        self.connections.discard(protocol)


class _CountingQueue(deque):
    """A stream's outbound queue that knows how many bytes it holds (O(1) instead of a sum)."""

    def __init__(self, items=()) -> None:
        super().__init__()
        self.nbytes = 0
        for item in items:
            self.append(item)

    def append(self, item) -> None:
        if item is not _END_STREAM_SENTINEL:
            self.nbytes += len(item)
        super().append(item)

    def appendleft(self, item) -> None:
        if item is not _END_STREAM_SENTINEL:
            self.nbytes += len(item)
        super().appendleft(item)

    def popleft(self):
        item = super().popleft()
        if item is not _END_STREAM_SENTINEL:
            self.nbytes -= len(item)
        return item


class _Queues(dict):
    """``H2Connection._outboundStreamQueues`` whose queues are :class:`_CountingQueue`."""

    def __setitem__(self, stream_id, queue) -> None:
        super().__setitem__(stream_id, queue if isinstance(queue, _CountingQueue) else _CountingQueue(queue))


def write_through(transport, data: bytes) -> None:
    """``transport.write(data)``, but sent with one ``send()`` now when a plain TCP transport holds nothing.

    Twisted's TCP ``write`` always buffers, registers the socket for writing
    (an ``epoll_ctl``), sends on the next reactor iteration and unregisters
    it (another ``epoll_ctl``). A map delta fanned out to N streams paid
    those two extra system calls per stream: 13 % of server CPU in the
    profile of 200 streams receiving endpoint updates. When nothing is
    buffered (so order is kept) the data goes out at once; whatever the
    socket does not take, and every other case (TLS, a buffer already
    filling, a closing or broken connection), takes Twisted's normal path.
    """
    if (
        isinstance(transport, tcp.Connection)
        and transport.TLS is False
        and transport.connected
        and not transport.disconnecting
        and not transport._writeDisconnected
        and not transport._tempDataLen
        and len(transport.dataBuffer) == transport.offset
    ):
        sent = transport.writeSomeData(data)
        if isinstance(sent, int) and sent > 0:
            if sent == len(data):
                return
            data = data[sent:]
    transport.write(data)


class _TurnMarker:
    """Which connections sent a frame directly in this reactor turn (one ``callLater(0)`` per turn, shared)."""

    def __init__(self, reactor) -> None:
        self._reactor = reactor
        self._marked: list[_CountingH2Connection] = []
        self.turns = 0

    def mark(self, connection: _CountingH2Connection) -> None:
        connection._sent_directly = True
        self._marked.append(connection)
        if len(self._marked) == 1:
            self.turns += 1
            self._reactor.callLater(0, self._clear)

    def _clear(self) -> None:
        marked, self._marked = self._marked, []
        for connection in marked:
            connection._sent_directly = False


_MARKERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _turn_marker(reactor) -> _TurnMarker:
    marker = _MARKERS.get(reactor)
    if marker is None:
        marker = _MARKERS[reactor] = _TurnMarker(reactor)
    return marker


#: At most this many frames (or stream picks) per turn of the send loop ...
SEND_BATCH_FRAMES = 16
#: ... and at most about this many bytes, before one transport write and a yield to the reactor.
SEND_BATCH_BYTES = 64 * 1024
_FRAME_HEADER = 9


class _CountingH2Connection(H2Connection):
    """
    ``H2Connection`` with an O(1) ``remainingOutboundWindow`` and a batching send loop.

    Twisted sums the lengths of every chunk queued on the stream at each
    ``write``; a map stream that receives deltas faster than the send loop
    (one DATA frame per reactor turn) drains them makes that quadratic. The
    profile of 300 connecting nodes showed 62 % of server CPU there.

    Twisted's send loop sends one DATA frame per reactor turn, each its own
    ``transport.write`` (so its own Noise record and socket write); see
    :meth:`_sendPrioritisedData` for the batching version.
    """

    def __init__(self, reactor=None) -> None:
        super().__init__(reactor)
        self._outboundStreamQueues = _Queues()
        self._turn = _turn_marker(self._reactor)
        self._sent_directly = False
        #: Frames that skipped the send loop (see writeDataToStream).
        self.direct_frames = 0

    def writeDataToStream(self, streamID, data):
        """
        Queue ``data`` for the send loop, or, when the loop is idle, send it at once.

        An idle loop (waiting for data) would do just that when woken: send
        this one frame now and come back next turn for whatever else was
        written meanwhile. Doing it here skips waking it (priority tree,
        Deferred) and, above all, its extra turn: one delta written to many
        map streams costs one ``callLater`` in all, shared by every connection
        (:class:`_TurnMarker`), instead of one per connection. Later writes to
        a connection in the same turn go through the loop, batched next turn,
        exactly as before.
        """
        conn = self.conn
        if self._sendingDeferred is not None:
            queue = self._outboundStreamQueues.get(streamID)
            if (
                not self._sent_directly
                and queue is not None
                and not queue
                and self._consumerBlocked is None
                and 0 < len(data) <= min(conn.max_outbound_frame_size, conn.local_flow_control_window(streamID))
            ):
                self.resetTimeout()
                conn.send_data(streamID, data)
                self.transport.write(conn.data_to_send())
                self.direct_frames += 1
                self._turn.mark(self)
                if self.remainingOutboundWindow(streamID) <= 0:
                    self.streams[streamID].flowControlBlocked()
                return
            if self._sent_directly:
                # Sent directly this turn already: batch the rest next turn, as the loop would.
                self._sendingDeferred = None
                self._reactor.callLater(0, self._sendPrioritisedData)
        super().writeDataToStream(streamID, data)

    def endRequest(self, streamID):
        if self._sendingDeferred is not None and self._sent_directly:
            # The stream's last frame went out directly this turn: end it next turn, with the batch.
            self._sendingDeferred = None
            self._reactor.callLater(0, self._sendPrioritisedData)
        super().endRequest(streamID)

    def remainingOutboundWindow(self, streamID):
        return self.conn.local_flow_control_window(streamID) - self._outboundStreamQueues[streamID].nbytes

    def dataReceived(self, data):
        # Streams whose window is exhausted are blocked in the priority tree (see
        # _sendPrioritisedData) and Twisted only unblocks them on WINDOW_UPDATE.
        # A SETTINGS frame raising INITIAL_WINDOW_SIZE also opens their windows.
        before = self.conn.remote_settings.initial_window_size
        super().dataReceived(data)
        if self._stillProducing and self.conn.remote_settings.initial_window_size > before:
            self._unblockOpenedStreams()

    def _unblockOpenedStreams(self) -> None:
        woke = False
        for streamID, queue in self._outboundStreamQueues.items():
            if queue and self.conn.local_flow_control_window(streamID) > 0:
                self.priority.unblock(streamID)
                woke = True
        if woke:
            self._wakeSendLoop()

    def _handleWindowUpdate(self, event):
        # Twisted unblocks the stream(s) but never wakes a waiting send loop: it
        # relies on its loop still spinning over the window-blocked stream.
        super()._handleWindowUpdate(event)
        queues = self._outboundStreamQueues
        if queues.get(event.stream_id) if event.stream_id else any(queues.values()):
            self._wakeSendLoop()

    def _wakeSendLoop(self) -> None:
        if self._sendingDeferred is not None:
            d, self._sendingDeferred = self._sendingDeferred, None
            d.callback(None)

    def _sendWoken(self, _):
        # Woken by data for an idle connection, from inside the write: send one
        # frame now as Twisted does, and leave the rest to the next turn, when
        # whatever else is written in this turn can join the batch.
        self._sendPrioritisedData(_limit=1)

    def _sendPrioritisedData(self, *args, _limit=SEND_BATCH_FRAMES):
        """
        Twisted's send loop, but up to ``SEND_BATCH_FRAMES`` frames (or about
        ``SEND_BATCH_BYTES``) per reactor turn in one ``transport.write``.

        Per frame it does what Twisted does: take the next stream from the
        priority tree (so streams stay interleaved by priority, one frame per
        pick), respect the flow-control window and the maximum frame size,
        end the stream and clean it up at the sentinel, block the stream in
        the tree when its queue empties, and tell the stream's producer when
        its window is exhausted. Frames stay in h2's output buffer until the
        end of the batch, so anything written meanwhile (control frames from a
        callback) still goes out in h2's order.

        One difference: a stream whose window is exhausted while data is still
        queued is blocked in the tree (``WINDOW_UPDATE``, or SETTINGS raising
        the initial window, unblocks it). Twisted keeps picking it and sends
        nothing, rescheduling itself every turn until the window opens.
        """
        if not self._stillProducing:
            return
        # Wait behind the transport.
        if self._consumerBlocked is not None:
            self._consumerBlocked.addCallback(self._sendPrioritisedData)
            return

        self.resetTimeout()
        conn = self.conn
        queues = self._outboundStreamQueues
        picks = 0
        size = 0
        deadlocked = False
        while picks < _limit and size < SEND_BATCH_BYTES:
            if not self._stillProducing:
                break
            try:
                stream = next(self.priority)
            except priority.DeadlockError:
                # Like Twisted, only wait for a wake-up after a turn that found
                # nothing to send: after sending, come back next turn, so that
                # writes made in the meantime queue up and share a batch.
                deadlocked = picks == 0
                break
            picks += 1
            queue = queues[stream]
            frameData = queue.popleft()

            if frameData is _END_STREAM_SENTINEL:
                conn.end_stream(stream)
                size += _FRAME_HEADER
                self._requestDone(stream)
                continue

            remainingWindow = conn.local_flow_control_window(stream)
            maxFrameSize = min(conn.max_outbound_frame_size, remainingWindow)
            if len(frameData) > maxFrameSize:
                queue.appendleft(frameData[maxFrameSize:])
                frameData = frameData[:maxFrameSize]
            if frameData:
                conn.send_data(stream, frameData)
                size += len(frameData) + _FRAME_HEADER

            if not queue:
                self.priority.block(stream)
            elif queue[0] is not _END_STREAM_SENTINEL and conn.local_flow_control_window(stream) <= 0:
                # Nothing more can go until the peer opens the window.
                self.priority.block(stream)

            if self.remainingOutboundWindow(stream) <= 0:
                self.streams[stream].flowControlBlocked()

        data = conn.data_to_send()
        if data:
            self.transport.write(data)

        if not self._stillProducing:
            return
        if deadlocked:
            # All streams are blocked or idle: wait until one is unblocked.
            assert self._sendingDeferred is None
            self._sendingDeferred = Deferred()
            self._sendingDeferred.addCallback(self._sendWoken)
            return
        self._reactor.callLater(0, self._sendPrioritisedData)


class NoiseProtocol(ProtocolWrapper, TimeoutMixin):
    """
    One established ts2021 connection: records in and out, HTTP/2 inside.

    ``peer`` is set once the connection is made. ``negotiatedProtocol`` tells
    HTTP code looking at this transport that it carries HTTP/2.
    """

    negotiatedProtocol = b"h2"
    _log = Logger()

    def __init__(self, factory: NoiseFactory, result: ResponderResult, client_address: str = "") -> None:
        ProtocolWrapper.__init__(self, factory, None)
        self._client_address = client_address
        self.callLater = factory.reactor.callLater
        self._result = result
        self._decoder = RecordDecoder(result.ciphers.receive)
        self._encoder = RecordEncoder(result.ciphers.send)
        self._established = False
        self._failed = False
        self.peer: NoisePeer | None = None
        self.refused = result.version < factory.min_version

    def makeConnection(self, transport) -> None:
        factory = self.factory
        challenge = None
        if factory.early_payload and self._result.version >= EARLY_NOISE_MIN_VERSION:
            challenge = ChallengePrivate.generate()
        self.peer = NoisePeer(
            MachinePublic(self._result.machine_key),
            self._result.version,
            transport.getPeer(),
            challenge,
            self._client_address,
        )
        self.wrappedProtocol = factory.build_inner(factory.site_for(self._result.version))
        # connectionMade (early payload) runs before the inner protocol starts.
        ProtocolWrapper.makeConnection(self, transport)
        transport.registerProducer(self.wrappedProtocol, True)

    def connectionMade(self) -> None:
        self._log.debug(
            "noise: {machine_key} (version {version}) connected{refused}",
            machine_key=self.peer.machine_key,
            version=self.peer.version,
            refused=" and refused" if self.refused else "",
        )
        if self.refused:
            self._log.debug(
                "noise: refusing client {machine_key}: version {version} < {minimum}",
                machine_key=self.peer.machine_key,
                version=self.peer.version,
                minimum=self.factory.min_version,
            )
        self.setTimeout(self.factory.handshake_timeout)
        if self.peer.challenge is not None:
            self.write(encode_early_payload(self.peer.challenge.public().raw))

    # Transport side (called by the inner HTTP/2 server).
    def getPeer(self) -> NoiseAddress:
        return NoiseAddress(self.peer)

    def write(self, data: bytes) -> None:
        if not data or self._failed:
            return
        if self._established:
            # Our own writes must not extend the wait for the client's first record.
            self.resetTimeout()
        write_through(self.transport, self._encoder.encode(data))

    def writeSequence(self, data) -> None:
        self.write(b"".join(data))

    # Protocol side (called by the network).
    def dataReceived(self, data: bytes) -> None:
        if self._failed:
            return
        try:
            chunks = self._decoder.feed(data)
        except FrameError as e:
            self._fail(str(e))
            return
        if not chunks:
            return
        if not self._established:
            self._established = True
            self.setTimeout(self.factory.idle_timeout)
        else:
            self.resetTimeout()
        for chunk in chunks:
            if self.wrappedProtocol is None or self._failed:
                return
            self.wrappedProtocol.dataReceived(chunk)

    def _fail(self, why: str) -> None:
        """Drop this one connection after a protocol error."""
        self._log.debug(
            "noise: closing connection from {machine_key}: {why}",
            machine_key=self.peer.machine_key if self.peer else None,
            why=why,
        )
        self._failed = True
        self.setTimeout(None)
        abort = getattr(self.transport, "abortConnection", None)
        if abort is not None:
            abort()
        else:
            self.transport.loseConnection()

    def timeoutConnection(self) -> None:
        phase = "first record" if not self._established else "traffic"
        self._fail(f"timed out waiting for {phase}")

    def connectionLost(self, reason) -> None:
        self.setTimeout(None)
        if self.wrappedProtocol is not None:
            ProtocolWrapper.connectionLost(self, reason)
        else:
            self.factory.unregisterProtocol(self)
