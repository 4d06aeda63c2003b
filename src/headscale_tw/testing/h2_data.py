"""
A sans-IO shortcut for the HTTP/2 DATA frames a test client receives.

A simulated node spends most of its client CPU on the streaming map's DATA
frames going through the ``h2`` state machine (frame objects, events, a
``repr`` of every frame for its logger, window bookkeeping). :class:`DataFrameSplitter`
cuts the received bytes into whole frames; plain DATA frames (no
``END_STREAM``, no padding, at most the default 16 KiB) on streams the caller
names are handed straight back, and everything else is passed on, in order
and as whole frames, for ``h2`` to handle. The bytes of the shortcut frames
are acknowledged here with WINDOW_UPDATE frames, once half a window has been
used (as ``h2`` does), so every received byte is acknowledged exactly once:
by ``h2`` if it saw the frame, by the splitter otherwise.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["DataFrameSplitter", "window_update"]

_DATA = 0x0
_WINDOW_UPDATE = 0x8
_END_STREAM_OR_PADDED = 0x1 | 0x8
_DEFAULT_MAX_FRAME = 16384
_HEADER = 9


def window_update(stream_id: int, increment: int) -> bytes:
    """One WINDOW_UPDATE frame (``stream_id`` 0 is the connection)."""
    return b"\x00\x00\x04\x08\x00" + stream_id.to_bytes(4, "big") + increment.to_bytes(4, "big")


class DataFrameSplitter:
    """Whole frames out of a byte stream; plain DATA frames of chosen streams skip ``h2``.

    :param stream_window: the receive window the client advertised for each stream.
    :param connection_window: the connection's receive window.
    """

    def __init__(self, stream_window: int, connection_window: int) -> None:
        self._buffer = b""
        self._stream_threshold = stream_window // 2
        self._connection_threshold = connection_window // 2
        self._connection_unacked = 0
        self._stream_unacked: dict[int, int] = {}
        self._updates: list[bytes] = []

    def feed(self, data: bytes, shortcut: Callable[[int], bool]) -> list[tuple[int, bytes]]:
        """Split ``data`` (plus what was left over) into ``(stream_id, payload)`` for shortcut DATA
        frames and ``(0, frames)`` for runs of whole frames meant for ``h2``; a partial frame is kept."""
        buffer = self._buffer + data if self._buffer else data
        end_of_data = len(buffer)
        out: list[tuple[int, bytes]] = []
        position = 0
        slow_from = -1
        while end_of_data - position >= _HEADER:
            length = int.from_bytes(buffer[position:position + 3], "big")
            end = position + _HEADER + length
            if end > end_of_data:
                break
            stream_id = int.from_bytes(buffer[position + 5:position + 9], "big") & 0x7FFFFFFF
            if (buffer[position + 3] == _DATA and not buffer[position + 4] & _END_STREAM_OR_PADDED
                    and length <= _DEFAULT_MAX_FRAME and stream_id and shortcut(stream_id)):
                if slow_from >= 0:
                    out.append((0, buffer[slow_from:position]))
                    slow_from = -1
                out.append((stream_id, buffer[position + _HEADER:end]))
                if length:
                    self._consumed(stream_id, length)
            elif slow_from < 0:
                slow_from = position
            position = end
        if slow_from >= 0:
            out.append((0, buffer[slow_from:position]))
        self._buffer = buffer[position:]
        return out

    def _consumed(self, stream_id: int, length: int) -> None:
        unacked = self._stream_unacked.get(stream_id, 0) + length
        if unacked >= self._stream_threshold:
            self._updates.append(window_update(stream_id, unacked))
            unacked = 0
        self._stream_unacked[stream_id] = unacked
        self._connection_unacked += length
        if self._connection_unacked >= self._connection_threshold:
            self._updates.append(window_update(0, self._connection_unacked))
            self._connection_unacked = 0

    def forget(self, stream_id: int) -> None:
        """A stream ended: its unacknowledged bytes no longer need a stream-level update."""
        self._stream_unacked.pop(stream_id, None)

    def take_window_updates(self) -> bytes:
        """The WINDOW_UPDATE frames owed since the last call."""
        if not self._updates:
            return b""
        updates, self._updates = b"".join(self._updates), []
        return updates
