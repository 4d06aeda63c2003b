# -*- test-case-name: tests.control.test_notifier -*-
"""
One streaming map session: a long-lived ``/machine/map`` response.

The session knows nothing about HTTP: it is given ``write(bytes)`` and
``finish()`` callables (``request.write`` / ``request.finish`` in the web
layer) and an ``IReactorTime``. Lifecycle (an Automat ``TypeMachineBuilder``
machine)::

    new --start(full map)--> streaming --close / stalled / connection lost--> closed
     |                                                                          ^
     +------------------------- close / connection lost ------------------------+

* ``new``: nothing written yet; deltas are dropped (the full map, built
  later, holds them).
* ``streaming``: the full map went out; deltas are written in the encoding
  the client asked for (``MapRequest.Compress``), as
  :class:`~headscale_tw.control.framing.FramedMessage` frames shared with
  other sessions. While idle, a bare keep-alive is written every 50–59 s (the
  client aborts a poll after 120 s of silence); any write pushes the next
  keep-alive back. A client that stops reading (more than ``max_unsent``
  bytes held for it) is *stalled*: aborted rather than buffered for without
  bound. A write that raises counts as the connection lost.
* ``closed``: the keep-alive timer is cancelled, the end is counted (why:
  ``cancelled``, ``slow_client`` or ``done``) and the notifier is told;
  every input is ignored. ``close`` finishes the response, ``stalled``
  aborts it, a lost connection writes nothing.

A delta is the hot path (one change can reach every stream), so :meth:`MapSession.send`
is no machine input: it reads a flag the machine sets on entering ``streaming`` and
clears on entering ``closed`` (an Automat input costs ~2 µs, a flag read ~0.05 µs).
What a delta's write can cause (a failed write, a stalled client) is still an input.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Protocol as TypingProtocol

from automat import TypeMachineBuilder
from twisted.internet.interfaces import IDelayedCall, IReactorTime
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


class _Lifecycle(TypingProtocol):
    def start(self, first: FramedMessage) -> None:
        "Write the full map; deltas and keep-alives flow from now on."

    def keepalive_due(self) -> None:
        "The keep-alive timer fired."

    def stalled(self, unsent: int) -> None:
        "The client left more than the limit unread."

    def close(self) -> None:
        "The server ends the stream (replaced, node deleted, shutdown)."

    def connection_lost(self) -> None:
        "The client went away, or a write failed."

    def state_name(self) -> str:
        "The current state's name."


class MapSession:
    """Writes framed map messages to one client response."""

    log = Logger()

    NEW, STREAMING, CLOSED = "new", "streaming", "closed"

    def __init__(
        self,
        node_id: int,
        write: Callable[[bytes], None],
        finish: Callable[[], None],
        clock: IReactorTime,
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
        self._timer: IDelayedCall | None = None
        self._gap = 0.0
        self._last_sent = 0.0
        self.messages_sent = 0
        #: Set by the machine: true from ``start`` until ``closed``; the only thing a delta reads.
        self._streaming = False
        self._machine = _machine_factory(self)

    def start(self, first: FramedMessage) -> None:
        """Send the full map; from now on deltas and keep-alives flow (``RuntimeError`` if started before)."""
        self._machine.start(first)

    def send(self, message: FramedMessage) -> None:
        """Send one delta in this session's encoding (dropped unless streaming)."""
        if self._streaming:
            self._send(message.framed(self.encoding), "change")

    def close(self) -> None:
        """End the response (e.g. replaced by a newer stream, node deleted, shutdown)."""
        self._machine.close()

    def connection_lost(self) -> None:
        """The client went away (``request.notifyFinish`` fired); stop without writing."""
        self._machine.connection_lost()

    @property
    def state(self) -> str:
        """``"new"``, ``"streaming"`` or ``"closed"``."""
        return self._machine.state_name()

    # -- outputs (run by the machine) ----------------------------------------

    def _send(self, framed: bytes, kind: str) -> None:
        try:
            self._write(framed)
        except Exception:
            self.counters.count_sent("error", kind)
            self.log.failure("writing to map session of node {node_id} failed", node_id=self.node_id)
            self._machine.connection_lost()  # inside a transition (the full map): runs once it is done
            return
        self.counters.count_sent("ok", kind)
        self.messages_sent += 1
        if self._unsent is not None:
            unsent = self._unsent()
            if unsent > self._max_unsent:
                self._machine.stalled(unsent)  # inside a transition (the full map): runs once it is done
                return
        self._schedule()

    def _schedule(self) -> None:
        # A write only records its time; the pending timer checks it when it fires. Resetting
        # the timer on every write (DelayedCall.reset to a sooner time is a linear search of
        # the reactor's timer heap) made each write O(sessions): 15 % of the server at 5,000.
        self._last_sent = self._clock.seconds()
        if self._timer is None:
            self._gap = self._interval()
            self._timer = self._clock.callLater(self._gap, self._machine.keepalive_due)

    def _keepalive(self) -> None:
        self._timer = None
        wait = self._last_sent + self._gap - self._clock.seconds()
        if wait > 0:  # written to since: the keep-alive is due ``gap`` after that write
            self._timer = self._clock.callLater(wait, self._machine.keepalive_due)
            return
        self._send(self._keepalive_frame, "keepalive")

    def _too_slow(self, unsent: int) -> None:
        self.log.warn(
            "map stream of node {node_id} holds {unsent} bytes its client has not read (limit {limit}): "
            "aborting it; the client reconnects and gets a full map",
            node_id=self.node_id, unsent=unsent, limit=self._max_unsent,
        )
        # aborting drops what is queued for the stream; finishing would wait to send it
        self._end(self._abort or self._finish, "aborting", "slow_client")

    def _end(self, how: Callable[[], None], doing: str, reason: str) -> None:
        self._closed(reason)
        try:
            how()
        except Exception:
            self.log.failure("{doing} map session of node {node_id} failed", doing=doing, node_id=self.node_id)

    def _open_stream(self, first: FramedMessage) -> None:
        self._streaming = True
        self._send(first.framed(self.encoding), "full")

    def _closed(self, reason: str) -> None:
        self._streaming = False  # before anything below can call send() again
        self.counters.count_ended(reason)
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self._on_closed(self)


def _build_machine():
    builder = TypeMachineBuilder(_Lifecycle, MapSession)
    new = builder.state(MapSession.NEW)
    streaming = builder.state(MapSession.STREAMING)
    closed = builder.state(MapSession.CLOSED)

    @new.upon(_Lifecycle.start).to(streaming)
    def _(m: _Lifecycle, core: MapSession, first: FramedMessage) -> None:
        core._open_stream(first)

    @streaming.upon(_Lifecycle.keepalive_due).loop()
    def _(m: _Lifecycle, core: MapSession) -> None:
        core._keepalive()

    @streaming.upon(_Lifecycle.stalled).to(closed)
    def _(m: _Lifecycle, core: MapSession, unsent: int) -> None:
        core._too_slow(unsent)

    for state in (new, streaming):

        @state.upon(_Lifecycle.close).to(closed)
        def _(m: _Lifecycle, core: MapSession) -> None:
            core._end(core._finish, "finishing", "cancelled")

        @state.upon(_Lifecycle.connection_lost).to(closed)
        def _(m: _Lifecycle, core: MapSession) -> None:
            core._closed("done")

    for state in (streaming, closed):

        @state.upon(_Lifecycle.start).loop()
        def _(m: _Lifecycle, core: MapSession, first: FramedMessage) -> None:
            raise RuntimeError(f"session for node {core.node_id} already started")

    for state in (new, streaming, closed):
        state.upon(_Lifecycle.state_name).loop().returns(state.name)

    # Inputs that mean nothing in a state are ignored there. (A delta is no input: send()
    # reads core._streaming, which _open_stream sets and _closed clears.)
    ignored = {
        new: (_Lifecycle.keepalive_due, _Lifecycle.stalled),
        closed: (_Lifecycle.keepalive_due, _Lifecycle.stalled, _Lifecycle.close, _Lifecycle.connection_lost),
    }
    for state, inputs in ignored.items():
        for inp in inputs:
            state.upon(inp).loop().returns(None)
    return builder.build()


_machine_factory = _build_machine()
