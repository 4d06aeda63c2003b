# -*- test-case-name: tests.control.test_netmap -*-
"""
Map response framing (sans-IO).

Wire format of a streaming ``/machine/map`` response body, repeated::

    LE32 n        little-endian length of what follows
    n bytes       one independent zstd frame holding one JSON MapResponse

Every message is compressed on its own (no shared context) so one framed
message can be written to many sessions. The bare keep-alive is built once.
Compression is zstd level 1, the fastest (Tailscale's and Headscale's servers
use their encoder's fastest setting too): a full map is built once per login
and a delta once per change, so speed counts more than the last bytes.
"""

from __future__ import annotations

import json
import struct

import zstandard

__all__ = ["frame", "frame_json", "encode_json", "KEEPALIVE_FRAME", "FrameDecoder", "FramingError"]

_LE32 = struct.Struct("<I")
_compressor = zstandard.ZstdCompressor(level=1, write_content_size=True)

MAX_MESSAGE = 64 * 1024 * 1024


class FramingError(Exception):
    """The byte stream is not a valid sequence of framed map messages."""


def encode_json(value: object) -> bytes:
    """Compact JSON bytes, the encoding used for every control message."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def frame(message_json: bytes) -> bytes:
    """Compress one JSON MapResponse and prefix the LE32 length."""
    body = _compressor.compress(message_json)
    return _LE32.pack(len(body)) + body


def frame_json(value: object) -> bytes:
    """``frame(encode_json(value))``."""
    return frame(encode_json(value))


KEEPALIVE_FRAME = frame(b'{"KeepAlive":true}')


class FrameDecoder:
    """Incremental decoder (the client's side): feed bytes, get decoded JSON objects back."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._decompressor = zstandard.ZstdDecompressor()

    def feed(self, data: bytes) -> list[dict]:
        """Add bytes; return every complete message decoded since the last call."""
        self._buffer += data
        messages = []
        while len(self._buffer) >= 4:
            (size,) = _LE32.unpack_from(self._buffer)
            if size == 0:
                raise FramingError("zero-length map message")
            if size > MAX_MESSAGE:
                raise FramingError(f"map message of {size} bytes is too large")
            if len(self._buffer) < 4 + size:
                break
            body = bytes(self._buffer[4 : 4 + size])
            del self._buffer[: 4 + size]
            try:
                raw = self._decompressor.decompress(body, max_output_size=MAX_MESSAGE)
            except zstandard.ZstdError as e:
                raise FramingError(f"map message is not a zstd frame: {e}") from None
            try:
                messages.append(json.loads(raw))
            except ValueError as e:
                raise FramingError(f"map message is not JSON: {e}") from None
        return messages

    @property
    def pending(self) -> int:
        """Bytes buffered that do not yet make a whole message."""
        return len(self._buffer)
