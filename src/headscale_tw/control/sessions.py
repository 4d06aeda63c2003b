# -*- test-case-name: tests.control.test_notifier -*-
"""
One streaming map session: a long-lived ``/machine/map`` response.

The session knows nothing about HTTP: it is given ``write(bytes)`` and
``finish()`` callables (``request.write`` / ``request.finish`` in the web
layer) and an ``IReactorTime``. Lifecycle::

    new --start(first)--> streaming --close()/connection_lost()--> closed

Deltas are only accepted while streaming, i.e. after the full first message.
Messages arrive as :class:`~headscale_tw.control.framing.FramedMessage`; the
session writes them in the encoding its client asked for (``MapRequest.Compress``).
A client that stops reading (more than ``max_unsent`` bytes held for it) is
aborted rather than buffered for without bound.
While idle, a bare keep-alive is written every 50–59 s (the client aborts a
poll after 120 s of silence); any write pushes the next keep-alive back.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from twisted.logger import Logger

from headscale_tw.control.framing import KEEPALIVE_FRAMES, ZSTD, FramedMessage
from headscale_tw.counters import MapCounters

__all__ = ["MapSession", "keepalive_interval", "MAX_UNSENT_BYTES"]

#: A stream holding more than this many bytes its client has not taken (its HTTP/2
#: window is used up) is aborted: the client reconnects and gets a fresh full map,
#: and the server does not buffer without bound for a client that stopped reading.
MAX_UNSENT_BYTES = 8 << 20


def keepalive_interval(rng: random.Random = random.Random()) -> float:
    """50 s plus up to 9 s of jitter, so sessions do not all wake at once."""
    return 50.0 + rng.uniform(0.0, 9.0)


class MapSession:
    """Writes framed map messages to one client response."""

    log = Logger()

    NEW, STREAMING, CLOSED = "new", "streaming", "closed"

    def __init__(
        self,
        node_id: int,
        write: Callable[[bytes], None],
        finish: Callable[[], None],
        clock,
        on_closed: Callable[["MapSession"], None] = lambda session: None,
        interval: Callable[[], float] = keepalive_interval,
        unsent: Callable[[], int] | None = None,
        abort: Callable[[], None] | None = None,
        max_unsent: int = MAX_UNSENT_BYTES,
        encoding: str = ZSTD,
        counters: MapCounters | None = None,
    ) -> None:
        self.node_id = node_id
        #: Where messages sent and the end of the stream are counted (``headscale_mapresponse_*``).
        self.counters = counters if counters is not None else MapCounters()
        #: The frame encoding this session's client asked for (``ZSTD`` or ``PLAIN``).
        self.encoding = encoding
        self._keepalive_frame = KEEPALIVE_FRAMES[encoding]
        self._write = write
        self._finish = finish
        self._clock = clock
        self._on_closed = on_closed
        self._interval = interval
        self._unsent = unsent
        self._abort = abort
        self._max_unsent = max_unsent
        self._timer = None
        self._gap = 0.0
        self._last_sent = 0.0
        self.state = self.NEW
        self.messages_sent = 0

    def start(self, first: FramedMessage) -> None:
        """Send the full map; from now on deltas and keep-alives flow."""
        if self.state != self.NEW:
            raise RuntimeError(f"session for node {self.node_id} already {self.state}")
        self.state = self.STREAMING
        self._send(first.framed(self.encoding), "full")

    def send(self, message: FramedMessage) -> None:
        """Send one delta in this session's encoding (ignored unless streaming)."""
        if self.state == self.STREAMING:
            self._send(message.framed(self.encoding), "change")

    def _send(self, framed: bytes, kind: str) -> None:
        try:
            self._write(framed)
        except Exception:
            self.counters.count_sent("error", kind)
            self.log.failure("writing to map session of node {node_id} failed", node_id=self.node_id)
            self.connection_lost()
            return
        self.counters.count_sent("ok", kind)
        self.messages_sent += 1
        if self._unsent is not None:
            unsent = self._unsent()
            if unsent > self._max_unsent:
                self._too_slow(unsent)
                return
        self._schedule()

    def _too_slow(self, unsent: int) -> None:
        self.log.warn(
            "map stream of node {node_id} holds {unsent} bytes its client has not read (limit {limit}): "
            "aborting it; the client reconnects and gets a full map",
            node_id=self.node_id, unsent=unsent, limit=self._max_unsent,
        )
        # aborting drops what is queued for the stream; finishing would wait to send it
        self._end(self._abort or self._finish, "aborting", "slow_client")

    def _schedule(self) -> None:
        # A write only records its time; the pending timer checks it when it fires. Resetting
        # the timer on every write (DelayedCall.reset to a sooner time is a linear search of
        # the reactor's timer heap) made each write O(sessions): 15 % of the server at 5,000.
        self._last_sent = self._clock.seconds()
        if self._timer is None:
            self._gap = self._interval()
            self._timer = self._clock.callLater(self._gap, self._keepalive)

    def _keepalive(self) -> None:
        self._timer = None
        if self.state != self.STREAMING:
            return
        wait = self._last_sent + self._gap - self._clock.seconds()
        if wait > 0:  # written to since: the keep-alive is due ``gap`` after that write
            self._timer = self._clock.callLater(wait, self._keepalive)
            return
        self._send(self._keepalive_frame, "keepalive")

    def close(self) -> None:
        """End the response (e.g. replaced by a newer stream, node deleted, shutdown)."""
        if self.state == self.CLOSED:
            return
        self._end(self._finish, "finishing", "cancelled")

    def _end(self, how: Callable[[], None], doing: str, reason: str) -> None:
        self._closed(reason)
        try:
            how()
        except Exception:
            self.log.failure("{doing} map session of node {node_id} failed", doing=doing, node_id=self.node_id)

    def connection_lost(self) -> None:
        """The client went away (``request.notifyFinish`` fired); stop without writing."""
        if self.state != self.CLOSED:
            self._closed("done")

    def _closed(self, reason: str) -> None:
        self.counters.count_ended(reason)
        self.state = self.CLOSED
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self._on_closed(self)
