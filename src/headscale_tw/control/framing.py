# -*- test-case-name: tests.control.test_netmap -*-
"""
Map response framing (sans-IO).

Wire format of a streaming ``/machine/map`` response body, repeated::

    LE32 n        little-endian length of what follows
    n bytes       one JSON MapResponse: an independent zstd frame holding it
                  when the client's MapRequest asked for ``"Compress": "zstd"``,
                  else the JSON itself

The encoding is the client's choice (``MapRequest.Compress``); the official
client always asks for zstd, other Tailscale-compatible clients may not.
Every message is compressed on its own (no shared context) so one framed
message can be written to many sessions: a :class:`FramedMessage` builds each
encoding at most once, and only when some session needs it. The bare
keep-alive is built once per encoding. Compression is zstd level 1, the
fastest (Tailscale's and Headscale's servers use their encoder's fastest
setting too): a full map is built once per login and a delta once per change,
so speed counts more than the last bytes.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable

import zstandard

__all__ = [
    "ZSTD", "PLAIN", "ENCODINGS", "frame", "frame_json", "encode_json", "FramedMessage",
    "KEEPALIVE_FRAME", "KEEPALIVE_FRAMES", "FrameDecoder", "FramingError",
]

#: ``MapRequest.Compress`` value asking for zstd-compressed frames.
ZSTD = "zstd"
#: No compression: the frame body is the JSON itself (``Compress`` absent or empty).
PLAIN = ""
ENCODINGS = (ZSTD, PLAIN)

_LE32 = struct.Struct("<I")
_compressor = zstandard.ZstdCompressor(level=1, write_content_size=True)

MAX_MESSAGE = 64 * 1024 * 1024


class FramingError(Exception):
    """The byte stream is not a valid sequence of framed map messages."""


def encode_json(value: object) -> bytes:
    """Compact JSON bytes, the encoding used for every control message."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def frame(message_json: bytes, encoding: str = ZSTD) -> bytes:
    """Encode one JSON MapResponse as ``encoding`` asks and prefix the LE32 length."""
    if encoding == ZSTD:
        body = _compressor.compress(message_json)
    elif encoding == PLAIN:
        body = message_json
    else:
        raise ValueError(f"unknown map encoding {encoding!r}")
    return _LE32.pack(len(body)) + body


def frame_json(value: object, encoding: str = ZSTD) -> bytes:
    """``frame(encode_json(value), encoding)``."""
    return frame(encode_json(value), encoding)


class FramedMessage:
    """
    One JSON MapResponse to be written to any number of sessions.

    :meth:`framed` builds the frame of an encoding the first time a session
    asks for it and hands the same bytes to every later one, so a change is
    compressed at most once however many streams receive it, and not at all
    when none wants it compressed. ``on_build`` is called once per frame built
    (the notifier counts them).
    """

    __slots__ = ("message", "_frames", "_on_build")

    def __init__(self, message: bytes, on_build: Callable[[str], None] = lambda encoding: None) -> None:
        self.message = message
        self._frames: dict[str, bytes] = {}
        self._on_build = on_build

    def framed(self, encoding: str) -> bytes:
        """The LE32-framed message in ``encoding`` (built on first use)."""
        out = self._frames.get(encoding)
        if out is None:
            out = self._frames[encoding] = frame(self.message, encoding)
            self._on_build(encoding)
        return out


#: The bare keep-alive, framed once per encoding.
KEEPALIVE_FRAMES = {encoding: frame(b'{"KeepAlive":true}', encoding) for encoding in ENCODINGS}
KEEPALIVE_FRAME = KEEPALIVE_FRAMES[ZSTD]


class FrameDecoder:
    """
    Incremental decoder (the client's side): feed bytes, get decoded JSON objects back.

    ``encoding`` is what the client asked for; a frame in another encoding is
    a :class:`FramingError` (a zstd frame is not JSON, JSON is not a zstd frame).
    """

    def __init__(self, encoding: str = ZSTD) -> None:
        if encoding not in ENCODINGS:
            raise ValueError(f"unknown map encoding {encoding!r}")
        self.encoding = encoding
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
            raw = body
            if self.encoding == ZSTD:
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
