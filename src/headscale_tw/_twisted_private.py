# -*- test-case-name: tests.test_twisted_private -*-
"""
Every use of Twisted's private API in headscale-tw, in one place.

Nothing else under ``src/`` imports a ``twisted.*._x`` module or touches an
underscore attribute of a Twisted object. What is used, and why no public API
does the job, is listed in :data:`PRIVATE_USES`; ``tests/test_twisted_private.py``
checks every entry against the installed Twisted (one test per entry, named after
it) and fails by name when Twisted renames, removes or re-signs one. The behaviour
behind them (flow control, batching, the upgrade handoff) is covered by
``tests/noise/test_send_loop.py``, ``tests/noise/test_write_through.py``,
``tests/bench/test_h2_window.py`` and ``tests/web/test_upgrade.py``. setup.cfg pins
Twisted to the range those tests were run against.

Three areas:

* :class:`BatchingH2Connection`: Twisted's HTTP/2 server connection with an O(1)
  per-stream backlog count, a batching send loop and flow-control wake-ups that
  Twisted's own loop lacks (see docs/noise.md). Its helpers :func:`stream_backlog`
  and :func:`stream_connection` read a stream's connection and queue.
* :func:`write_through`: one ``send()`` for a Noise record when a TCP transport
  holds nothing.
* :func:`detach_http_channel`: the HTTP/1.1 ``Upgrade`` handoff takes an
  ``HTTPChannel``'s connection away (used by :mod:`headscale_tw.web.upgrade`).
* :func:`claim_daemon_status_pipe` and :func:`report_daemon_status`: a
  daemonising ``twistd`` tells its waiting parent how the start went only once
  the server really serves (used by :mod:`headscale_tw.tap`).

Rule for new code: a private use goes here, with an entry in :data:`PRIVATE_USES`.
The guard test also parses this module and fails when it reads an underscore
attribute that is not listed; the module's own helpers therefore have names
without a leading underscore.
"""

from __future__ import annotations

import weakref
from collections import deque
from typing import Callable, cast

import attrs
import priority
from twisted.internet import tcp
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IConsumer, IDelayedCall, IPushProducer, ITransport
from twisted.web._http2 import _END_STREAM_SENTINEL, H2Connection
from twisted.web.server import Request, Site

__all__ = [
    "PrivateUse",
    "PRIVATE_USES",
    "BatchingH2Connection",
    "SettingValues",
    "compact_settings",
    "CountingQueue",
    "SEND_BATCH_FRAMES",
    "SEND_BATCH_BYTES",
    "stream_backlog",
    "stream_connection",
    "write_through",
    "detach_http_channel",
    "END_STREAM",
    "TwistedH2Connection",
    "use_twisted_send_loop",
    "outbound_queue",
    "add_outbound_queue",
    "tcp_buffered",
    "claim_daemon_status_pipe",
    "report_daemon_status",
]


@attrs.frozen
class PrivateUse:
    """One private (or undocumented) name of Twisted that this module relies on."""

    #: Where it lives: a module (``twisted.web._http2``) or a class (``twisted.web._http2.H2Connection``).
    owner: str
    #: The attribute, method or module-level name.
    name: str
    #: Why no public API does it, with the measured need where there is one.
    reason: str
    #: For methods we override or call: the parameters we rely on (as ``inspect.signature``
    #: prints them, annotations left out).
    signature: str | None = None
    #: For a key of a dict Twisted keeps (not an attribute): text the owner's source must contain.
    source_mentions: str | None = None


_H2 = "twisted.web._http2.H2Connection"
_H2_STREAM = "twisted.web._http2.H2Stream"
_TCP = "twisted.internet.tcp.Connection"
_CHANNEL = "twisted.web.http.HTTPChannel"
_RUNNER = "twisted.scripts._twistd_unix.UnixApplicationRunner"

_SEND_LOOP = (
    "the batching send loop (1,000 connections x 20 queued updates: 1,185 -> 445 ms"
    " in bench/h2_send.py) replaces Twisted's one-frame-per-turn loop"
)
_COUNTING = (
    "O(1) remainingOutboundWindow: Twisted sums every queued chunk per write,"
    " 62 % of server CPU with 300 connecting nodes"
)

#: Every private or undocumented Twisted name used by headscale-tw.
PRIVATE_USES: tuple[PrivateUse, ...] = (
    PrivateUse("twisted.web._http2", "H2Connection",
               "the only HTTP/2 server in Twisted; Site only builds it on the global reactor"
               " through TLS ALPN, so the Noise layer builds it itself with the injected reactor"),
    PrivateUse("twisted.web._http2", "_END_STREAM_SENTINEL",
               "end-of-stream marker in the outbound queues the send loop and the byte count read"),
    PrivateUse(_H2, "_sendPrioritisedData", _SEND_LOOP, "(self, *args)"),
    PrivateUse(_H2, "_handleWindowUpdate",
               "Twisted unblocks a stream on WINDOW_UPDATE but never wakes a waiting send loop",
               "(self, event)"),
    PrivateUse(_H2, "writeDataToStream",
               "an idle loop's frame is sent at once: fan-out to N streams costs one callLater, not N",
               "(self, streamID, data)"),
    PrivateUse(_H2, "endRequest", "ends a stream whose last frame was sent directly with the next batch",
               "(self, streamID)"),
    PrivateUse(_H2, "remainingOutboundWindow", _COUNTING, "(self, streamID)"),
    PrivateUse(_H2, "dataReceived",
               "a SETTINGS frame raising INITIAL_WINDOW_SIZE must wake window-blocked streams",
               "(self, data)"),
    PrivateUse(_H2, "_requestDone", "the send loop cleans up a stream at its end marker, as Twisted's does",
               "(self, streamID)"),
    PrivateUse(_H2, "_outboundStreamQueues", _COUNTING + "; also the per-stream backlog (stream_backlog)"),
    PrivateUse(_H2, "_sendingDeferred", "the send loop's wait for data: woken by writes and window updates"),
    PrivateUse(_H2, "_consumerBlocked", "transport back-pressure: the send loop waits behind it"),
    PrivateUse(_H2, "_stillProducing", "the send loop stops when the connection is gone"),
    PrivateUse(_H2, "conn", "the h2 state machine (windows, frame size, frames to send)"),
    PrivateUse(_H2, "priority", "the priority tree the send loop picks streams from"),
    PrivateUse(_H2, "streams", "the send loop tells a stream's producer its window is used up"),
    PrivateUse(_H2_STREAM, "_conn",
               "a request's channel is an H2Stream; its connection holds the stream's queue"
               " (backlog for the slow-reader abort) and the Noise transport (peer identity)"),
    PrivateUse("h2.settings.Settings", "_settings",
               "h2 keeps each HTTP/2 setting in its own collections.deque (one 64-slot block, ~760 bytes"
               " even for one value): ~11 per server connection, ~8 KiB of the ~30 KiB of Python objects"
               " each streaming connection held (tracemalloc, 200 Noise+h2 streams); compact_settings"
               " swaps them for one-element lists", source_mentions="self._settings[key][0]"),
    PrivateUse(_H2_STREAM, "streamID", "the stream's key in its connection's queues"),
    PrivateUse(_H2_STREAM, "flowControlBlocked", "pauses the stream's producer when its window is used up",
               "(self)"),
    PrivateUse(_TCP, "_tempDataLen",
               "write_through: bytes written this iteration and not yet in dataBuffer; must be 0 to send now"
               " (skipping buffer + 2 epoll_ctl per write was 13 % of server CPU with 200 map streams)"),
    PrivateUse(_TCP, "dataBuffer", "write_through: nothing buffered means dataBuffer is fully sent"),
    PrivateUse(_TCP, "offset", "write_through: how much of dataBuffer is sent"),
    PrivateUse(_TCP, "_writeDisconnected", "write_through: no send after the write side is shut"),
    PrivateUse(_TCP, "TLS", "write_through: a TLS transport must take its normal path"),
    PrivateUse(_TCP, "writeSomeData", "write_through: one send() without write interest",
               "(self, data)"),
    PrivateUse(_CHANNEL, "_dataBuffer",
               "upgrade: bytes the channel read after the Upgrade request must go to the new protocol;"
               " the channel is still parsing them when the resource returns"),
    PrivateUse(_RUNNER, "statusPipe",
               "a daemonising twistd's parent exits 0 as soon as startService returns; the server's"
               " start (migrations, the first ACME certificate) finishes later, so the service takes the"
               " pipe from twistd's options and writes b'0' or b'1 <reason>' itself when it knows",
               source_mentions='self.config.get("statusPipe", None)'),
)


class CountingQueue(deque):
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


class SettingValues(list):
    """One HTTP/2 setting's current value followed by values sent but not yet acknowledged.

    Stands in for h2's ``collections.deque`` (the only operations h2 uses are
    ``[0]``, ``len``, ``append`` and ``popleft``); a short list is ~70 bytes
    instead of ~760, and a setting rarely has more than one value.
    """

    __slots__ = ()

    def popleft(self):
        return self.pop(0)


def compact_settings(settings) -> None:
    """Store each value list of an ``h2.settings.Settings`` as :class:`SettingValues` (same contents)."""
    values = settings._settings
    for code in list(values):
        values[code] = SettingValues(values[code])


class CountingQueues(dict):
    """``H2Connection._outboundStreamQueues`` whose queues are :class:`CountingQueue`."""

    def __setitem__(self, stream_id, queue) -> None:
        super().__setitem__(stream_id, queue if isinstance(queue, CountingQueue) else CountingQueue(queue))


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


class TurnMarker:
    """Which connections sent a frame directly in this reactor turn (one ``callLater(0)`` per turn, shared)."""

    def __init__(self, reactor) -> None:
        self.send_reactor = reactor
        self.marked: list[BatchingH2Connection] = []
        self.turns = 0

    def mark(self, connection: BatchingH2Connection) -> None:
        connection.sent_directly = True
        self.marked.append(connection)
        if len(self.marked) == 1:
            self.turns += 1
            self.send_reactor.callLater(0, self.clear)

    def clear(self) -> None:
        marked, self.marked = self.marked, []
        for connection in marked:
            connection.sent_directly = False


_MARKERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def turn_marker(reactor) -> TurnMarker:
    """The :class:`TurnMarker` shared by every connection on ``reactor``."""
    marker = _MARKERS.get(reactor)
    if marker is None:
        marker = _MARKERS[reactor] = TurnMarker(reactor)
    return marker


#: At most this many frames (or stream picks) per turn of the send loop ...
SEND_BATCH_FRAMES = 16
#: ... and at most about this many bytes, before one transport write and a yield to the reactor.
SEND_BATCH_BYTES = 64 * 1024
_FRAME_HEADER = 9


class BatchingH2Connection(H2Connection):
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

    transport: ITransport  # makeConnection sets it before any other callback
    # What Site.buildProtocol sets (noise.protocol.NoiseFactory.build_inner sets the same).
    # Twisted declares site and factory as None at class level and assigns a Site later.
    site: Site | None  # type: ignore[assignment]  # see the line above
    factory: Site | None  # type: ignore[assignment]  # see the line above
    requestFactory: Callable[..., Request]
    callLater: Callable[..., IDelayedCall]

    def __init__(self, reactor=None) -> None:
        if reactor is None:
            from twisted.internet import reactor
        super().__init__(reactor)
        self.send_reactor = reactor
        self._outboundStreamQueues = CountingQueues()
        compact_settings(self.conn.local_settings)
        compact_settings(self.conn.remote_settings)
        self.turn_marker = turn_marker(self.send_reactor)
        self.sent_directly = False
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
        (:class:`TurnMarker`), instead of one per connection. Later writes to
        a connection in the same turn go through the loop, batched next turn,
        exactly as before.
        """
        conn = self.conn
        if self._sendingDeferred is not None:
            queue = self._outboundStreamQueues.get(streamID)
            if (
                not self.sent_directly
                and queue is not None
                and not queue
                and self._consumerBlocked is None
                and 0 < len(data) <= min(conn.max_outbound_frame_size, conn.local_flow_control_window(streamID))
            ):
                self.resetTimeout()
                conn.send_data(streamID, data)
                self.transport.write(conn.data_to_send())
                self.direct_frames += 1
                self.turn_marker.mark(self)
                if self.remainingOutboundWindow(streamID) <= 0:
                    self.streams[streamID].flowControlBlocked()
                return
            if self.sent_directly:
                # Sent directly this turn already: batch the rest next turn, as the loop would.
                self._sendingDeferred = None
                self.send_reactor.callLater(0, self._sendPrioritisedData)
        super().writeDataToStream(streamID, data)

    def endRequest(self, streamID):
        if self._sendingDeferred is not None and self.sent_directly:
            # The stream's last frame went out directly this turn: end it next turn, with the batch.
            self._sendingDeferred = None
            self.send_reactor.callLater(0, self._sendPrioritisedData)
        super().endRequest(streamID)

    def remainingOutboundWindow(self, streamID):
        return self.conn.local_flow_control_window(streamID) - self._outboundStreamQueues[streamID].nbytes

    def backlog(self, stream_id: int) -> int:
        """Bytes written to stream ``stream_id`` and not sent yet (0 once it is gone); O(1)."""
        queue = self._outboundStreamQueues.get(stream_id)
        return 0 if queue is None else queue.nbytes

    def dataReceived(self, data):
        # Streams whose window is exhausted are blocked in the priority tree (see
        # _sendPrioritisedData) and Twisted only unblocks them on WINDOW_UPDATE.
        # A SETTINGS frame raising INITIAL_WINDOW_SIZE also opens their windows.
        before = self.conn.remote_settings.initial_window_size
        super().dataReceived(data)
        if self._stillProducing and self.conn.remote_settings.initial_window_size > before:
            self.unblock_opened_streams()

    def unblock_opened_streams(self) -> None:
        woke = False
        for streamID, queue in self._outboundStreamQueues.items():
            if queue and self.conn.local_flow_control_window(streamID) > 0:
                self.priority.unblock(streamID)
                woke = True
        if woke:
            self.wake_send_loop()

    def _handleWindowUpdate(self, event):
        # Twisted unblocks the stream(s) but never wakes a waiting send loop: it
        # relies on its loop still spinning over the window-blocked stream.
        super()._handleWindowUpdate(event)
        queues = self._outboundStreamQueues
        if queues.get(event.stream_id) if event.stream_id else any(queues.values()):
            self.wake_send_loop()

    def wake_send_loop(self) -> None:
        if self._sendingDeferred is not None:
            d, self._sendingDeferred = self._sendingDeferred, None
            d.callback(None)

    def send_woken(self, _):
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
            self._sendingDeferred.addCallback(self.send_woken)
            return
        self.send_reactor.callLater(0, self._sendPrioritisedData)


def stream_backlog(request):
    """
    For a request on the Noise layer's HTTP/2 connection: a callable giving the
    bytes written to its response and not sent yet (held because the client's
    flow-control window is used up, i.e. it does not read); None otherwise.
    """
    stream = getattr(request, "channel", None)
    conn = stream_connection(stream)
    if stream is None or not isinstance(conn, BatchingH2Connection):
        return None
    stream_id = stream.streamID
    return lambda: conn.backlog(stream_id)


def stream_connection(stream):
    """The HTTP/2 connection (``H2Connection``) a request's channel belongs to; None when it is no HTTP/2 stream."""
    return getattr(stream, "_conn", None)


# For the tests that compare with Twisted's own behaviour or look at the state it
# keeps: they reach it through these names, so that every private use stays here.

#: Twisted's end-of-stream marker in a stream's outbound queue.
END_STREAM = _END_STREAM_SENTINEL
#: Twisted's own HTTP/2 connection, which :class:`BatchingH2Connection` extends.
TwistedH2Connection = H2Connection


def use_twisted_send_loop(connection: BatchingH2Connection):
    """Make ``connection`` send with Twisted's own one-frame-per-turn loop (to compare the batching
    one with it); return that loop, bound."""
    loop = H2Connection._sendPrioritisedData.__get__(connection)
    # Replacing the method on this one instance is the point: a comparison run of Twisted's loop.
    connection._sendPrioritisedData = loop  # type: ignore[method-assign]
    return loop


def outbound_queue(connection: BatchingH2Connection, stream_id: int):
    """The outbound queue of ``stream_id`` on ``connection``; None once the stream is cleaned up."""
    return connection._outboundStreamQueues.get(stream_id)


def add_outbound_queue(connection: BatchingH2Connection, stream_id: int, queue) -> None:
    """Give ``stream_id`` an outbound queue the way Twisted does when a stream opens."""
    connection._outboundStreamQueues[stream_id] = queue


def tcp_buffered(transport) -> tuple[int, bytes]:
    """What Twisted's TCP transport holds unsent: (bytes in its temporary list, its data buffer)."""
    return transport._tempDataLen, transport.dataBuffer


class ForwardingBuffer(list):
    """Stands in for a detached channel's ``_dataBuffer``: appended bytes go to the new protocol."""

    def __init__(self, protocol) -> None:
        super().__init__()
        self.protocol = protocol

    def append(self, data: bytes) -> None:
        if data:
            self.protocol.dataReceived(data)


def detach_http_channel(channel, protocol) -> bytes:
    """
    Take an ``HTTPChannel``'s connection away for ``protocol`` (an HTTP/1.1 upgrade).

    Stops the channel's timeout, undoes its producer registration on the
    transport (public API), and sends
    whatever the channel reads from now on (bytes that followed the request
    head in the same read, still being parsed when the resource returns) to
    ``protocol``. Returns the bytes the channel had buffered already, for the
    caller to replay once ``protocol`` is connected. The caller then clears
    ``channel.transport`` and points the transport at ``protocol``.
    """
    channel.setTimeout(None)
    # HTTPChannel registers itself as the producer of its transport when that
    # adapts to IPushProducer (and of nothing otherwise): undo it the same way.
    producer = IPushProducer(channel.transport, None)
    if producer is not None:
        # A transport that is a push producer is also the consumer the channel registered with.
        cast(IConsumer, producer).unregisterProducer()
    buffered = b"".join(getattr(channel, "_dataBuffer", []))
    channel._dataBuffer = ForwardingBuffer(protocol)
    return buffered


#: The key under which a daemonising twistd keeps the write end of its status pipe in its options.
DAEMON_STATUS_KEY = "statusPipe"
#: twistd's parent reads at most this many bytes of status.
DAEMON_STATUS_LIMIT = 100


def claim_daemon_status_pipe(twistd_options) -> int | None:
    """
    Take the status pipe from a daemonising twistd's options; ``None`` when twistd is not daemonising.

    twistd writes ``b"0"`` to it (its parent then exits 0) as soon as the
    application's ``startService`` returns, and the exception's name and message
    if it raised. Once claimed here, twistd writes nothing; the caller must call
    :func:`report_daemon_status` exactly once, or the parent exits 1 with an
    empty reason when this process ends.
    """
    if twistd_options is None:
        return None
    return twistd_options.pop(DAEMON_STATUS_KEY, None)


def report_daemon_status(pipe: int, failure: str | None) -> None:
    """Tell twistd's waiting parent: started (``failure`` is ``None``), or failed with ``failure``.

    The parent prints ``An error has occurred: b'<failure>'`` and exits 1 for a
    failure; it reads at most 100 bytes, so a long reason is cut.
    """
    import os

    message = b"0" if failure is None else ("1 " + failure).encode("ascii", "backslashreplace")
    try:
        os.write(pipe, message[:DAEMON_STATUS_LIMIT])  # at most 100 bytes: one atomic pipe write
    except OSError:
        pass  # the parent is gone: nobody to tell
    finally:
        os.close(pipe)
