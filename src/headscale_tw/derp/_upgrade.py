"""
The HTTP/1.1 response to an upgrade request (``Upgrade: DERP`` or WebSocket),
read by a client before the upgraded protocol starts. Sans-IO: no Twisted.
"""

from __future__ import annotations

__all__ = ["ResponseHead", "HeadTooLong"]


class HeadTooLong(ValueError):
    """The response head did not end within the size limit."""


class ResponseHead:
    """
    Collects a response head from the bytes a client receives.

    :meth:`feed` returns None until the blank line that ends the head has
    arrived, then ``(status line, headers, rest)``: header names lower-cased,
    ``rest`` the bytes that followed the head (the upgraded protocol's start).
    """

    def __init__(self, max_size: int = 8192) -> None:
        self._buffer = bytearray()
        self._max_size = max_size

    def feed(self, data: bytes) -> tuple[bytes, dict[bytes, bytes], bytes] | None:
        """Add ``data``; the parsed head once complete.

        :raises HeadTooLong: when more than ``max_size`` bytes came without the end of the head.
        """
        self._buffer += data
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buffer) > self._max_size:
                raise HeadTooLong("HTTP response head too long")
            return None
        lines = bytes(self._buffer[:end]).split(b"\r\n")
        rest = bytes(self._buffer[end + 4 :])
        headers: dict[bytes, bytes] = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        return lines[0], headers, rest

    @staticmethod
    def is_switching(status_line: bytes) -> bool:
        """Whether the status line says ``101`` (Switching Protocols)."""
        return status_line.split(b" ")[1:2] == [b"101"]
