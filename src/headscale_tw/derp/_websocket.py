# -*- test-case-name: tests.derp.test_websocket -*-
"""
Sans-IO WebSocket codec (RFC 6455), enough for DERP over WebSocket. No Twisted.

Handshake (section 4.2): :func:`validate_handshake` checks a client's
opening request (``GET``, ``Upgrade: websocket``, ``Connection: upgrade``,
``Sec-WebSocket-Version: 13``, a ``Sec-WebSocket-Key`` that is 16 bytes in
base64) and picks a subprotocol; :func:`accept_key` computes
``Sec-WebSocket-Accept`` = base64(SHA-1(key + GUID)). No extensions are ever
negotiated (DERP carries WireGuard packets, which do not compress).

Frame (section 5.2)::

    byte 0: FIN(1) RSV1-3(3, must be 0) opcode(4)
    byte 1: MASK(1) length(7)      126 -> 16-bit length follows,
                                   127 -> 64-bit length follows (top bit 0);
                                   the shortest form must be used
    [4-byte masking key if MASK]   payload[i] ^= key[i % 4]
    payload

Opcodes: 0 continuation, 1 text, 2 binary, 8 close, 9 ping, 10 pong.
Control frames (close/ping/pong) have FIN set and at most 125 payload bytes
and may arrive between the fragments of a message. A client's frames must be
masked, a server's must not. A close payload is empty or a 2-byte code plus
a UTF-8 reason.

:class:`WebSocketConnection` is one side of a connection: feed bytes to
:meth:`~WebSocketConnection.receive_data` and get events back; the ``send_*``
methods return bytes to write. A protocol violation raises
:class:`WebSocketProtocolError` carrying the close code to fail the
connection with (1002 protocol error, 1007 bad UTF-8, 1009 too big).
Data events are produced per frame, not per message, so a consumer that
treats messages as a byte stream (DERP does) never waits for a whole message.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import enum
import hashlib
import os
from typing import Callable, Mapping, NamedTuple, Sequence, Union

__all__ = [
    "GUID",
    "Opcode",
    "CloseCode",
    "WebSocketProtocolError",
    "HandshakeError",
    "Handshake",
    "accept_key",
    "validate_handshake",
    "encode_frame",
    "mask_payload",
    "WebSocketConnection",
    "BinaryData",
    "TextData",
    "Ping",
    "Pong",
    "CloseReceived",
    "Event",
]

#: The fixed GUID of RFC 6455 section 1.3, appended to the client's key.
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

_MAX_CONTROL_PAYLOAD = 125


class Opcode(enum.IntEnum):
    """Frame opcodes (RFC 6455 section 5.2)."""

    CONTINUATION = 0x0
    TEXT = 0x1
    BINARY = 0x2
    CLOSE = 0x8
    PING = 0x9
    PONG = 0xA


class CloseCode(enum.IntEnum):
    """Close status codes (RFC 6455 section 7.4.1) used here."""

    NORMAL = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    UNSUPPORTED_DATA = 1003
    NO_STATUS = 1005
    ABNORMAL = 1006
    INVALID_DATA = 1007
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011


class WebSocketProtocolError(Exception):
    """The peer broke RFC 6455; fail the connection with close ``code``."""

    def __init__(self, code: int, reason: str):
        super().__init__(f"{reason} (close code {code})")
        self.code = int(code)
        self.reason = reason


class HandshakeError(Exception):
    """The opening request is not a valid WebSocket handshake.

    :ivar status: the HTTP status to answer with (400, or 426 for a version we
        do not speak).
    :ivar headers: extra response headers (``Sec-WebSocket-Version: 13`` with 426).
    """

    def __init__(self, reason: str, status: int = 400, headers: Sequence[tuple[bytes, bytes]] = ()):
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.headers = list(headers)


class Handshake(NamedTuple):
    """A valid opening request: the ``Sec-WebSocket-Accept`` value and the chosen subprotocol."""

    accept: bytes
    subprotocol: bytes | None
    offered: list[bytes]


def accept_key(key: bytes) -> bytes:
    """``Sec-WebSocket-Accept`` for the client's ``Sec-WebSocket-Key`` (as sent, base64 text)."""
    return base64.b64encode(hashlib.sha1(key.strip() + GUID).digest())


def _tokens(values: Sequence[bytes]) -> list[bytes]:
    """Comma-separated header tokens, stripped, in order (case kept)."""
    return [t.strip() for v in values for t in v.split(b",") if t.strip()]


def validate_handshake(
    method: bytes,
    headers: Mapping[bytes, Sequence[bytes]],
    subprotocols: Sequence[bytes] = (),
) -> Handshake:
    """Check a client's opening handshake (RFC 6455 section 4.2.1).

    :param headers: request headers, names in lower case, each a list of raw values.
    :param subprotocols: what the server speaks, best first; the first one the
        client offered is chosen (``None`` if none was).
    :raises HandshakeError: naming what is wrong.
    """

    def get(name: bytes) -> list[bytes]:
        return list(headers.get(name, ()))

    if method != b"GET":
        raise HandshakeError(f"a WebSocket handshake must use GET, not {method.decode('latin-1')}")
    if b"websocket" not in [t.lower() for t in _tokens(get(b"upgrade"))]:
        raise HandshakeError("missing 'Upgrade: websocket'")
    if b"upgrade" not in [t.lower() for t in _tokens(get(b"connection"))]:
        raise HandshakeError("missing 'Connection: Upgrade'")
    versions = get(b"sec-websocket-version")
    if [v.strip() for v in versions] != [b"13"]:
        raise HandshakeError(
            "unsupported Sec-WebSocket-Version (only 13 is spoken)",
            status=426,
            headers=[(b"Sec-WebSocket-Version", b"13")],
        )
    keys = get(b"sec-websocket-key")
    if len(keys) != 1:
        raise HandshakeError("exactly one Sec-WebSocket-Key header is required")
    key = keys[0].strip()
    try:
        raw = base64.b64decode(key, validate=True)
    except (binascii.Error, ValueError):
        raise HandshakeError("Sec-WebSocket-Key is not base64") from None
    if len(raw) != 16:
        raise HandshakeError(f"Sec-WebSocket-Key must encode 16 bytes, not {len(raw)}")
    offered = _tokens(get(b"sec-websocket-protocol"))
    chosen = next((p for p in subprotocols if p in offered), None)
    return Handshake(accept_key(key), chosen, offered)


# -- frames ------------------------------------------------------------------


def mask_payload(payload: bytes, key: bytes) -> bytes:
    """XOR ``payload`` with the 4-byte masking ``key`` (masking and unmasking are the same)."""
    n = len(payload)
    if n == 0:
        return b""
    stream = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(stream, "little")).to_bytes(n, "little")


def encode_frame(opcode: int, payload: bytes = b"", *, fin: bool = True, mask: bytes | None = None) -> bytes:
    """One frame. ``mask`` (4 bytes) masks it, as a client must; a server passes ``None``."""
    n = len(payload)
    first = (0x80 if fin else 0) | (int(opcode) & 0x0F)
    mask_bit = 0x80 if mask is not None else 0
    if n < 126:
        head = bytes((first, mask_bit | n))
    elif n < 1 << 16:
        head = bytes((first, mask_bit | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((first, mask_bit | 127)) + n.to_bytes(8, "big")
    if mask is None:
        return head + payload
    if len(mask) != 4:
        raise ValueError("a masking key is 4 bytes")
    return head + mask + mask_payload(payload, mask)


def _close_payload(code: int | None, reason: str) -> bytes:
    if code is None:
        return b""
    text = reason.encode("utf-8")
    while len(text) > _MAX_CONTROL_PAYLOAD - 2:
        reason = reason[:-1]
        text = reason.encode("utf-8")
    return int(code).to_bytes(2, "big") + text


def _close_code_valid(code: int) -> bool:
    return 1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999


# -- events ------------------------------------------------------------------


class BinaryData(NamedTuple):
    """Bytes of a binary message (one frame's worth); ``final`` ends the message."""

    data: bytes
    final: bool


class TextData(NamedTuple):
    """Text of a text message (one frame's worth, UTF-8 checked); ``final`` ends the message."""

    text: str
    final: bool


class Ping(NamedTuple):
    """A ping; answer with :meth:`WebSocketConnection.send_pong` and the same payload."""

    payload: bytes


class Pong(NamedTuple):
    """A pong (solicited or not)."""

    payload: bytes


class CloseReceived(NamedTuple):
    """The peer started (or answered) the closing handshake. ``code`` is 1005 if none was given."""

    code: int
    reason: str


Event = Union[BinaryData, TextData, Ping, Pong, CloseReceived]


class WebSocketConnection:
    """One side of a WebSocket connection after the handshake (server side by default).

    :param client: ``True`` for the client role: frames sent are masked and
        frames received must not be.
    :param max_frame_size: largest payload accepted in one frame (close 1009 above it).
    :param mask_source: ``mask_source(4)`` gives masking keys (client role).
    """

    def __init__(
        self,
        *,
        client: bool = False,
        max_frame_size: int = 1 << 20,
        mask_source: Callable[[int], bytes] = os.urandom,
    ):
        self.client = client
        self.max_frame_size = max_frame_size
        self._mask_source = mask_source
        self._buffer = bytearray()
        self._message: Opcode | None = None
        self._utf8 = codecs.getincrementaldecoder("utf-8")("strict")
        self.close_sent = False
        self.close_received = False
        self.failed: WebSocketProtocolError | None = None

    # -- receiving -------------------------------------------------------

    def receive_data(self, data: bytes) -> list[Event]:
        """Parse ``data``; return the events of every complete frame.

        :raises WebSocketProtocolError: on a violation; the connection is then
            failed and later input is ignored.
        """
        if self.failed is not None or self.close_received:
            return []
        self._buffer += data
        events: list[Event] = []
        try:
            while not self.close_received:
                event = self._next_event()
                if event is None:
                    break
                if event is not False:
                    events.append(event)
        except WebSocketProtocolError as e:
            self.failed = e
            self._buffer.clear()
            raise
        return events

    def _fail(self, code: int, reason: str):
        raise WebSocketProtocolError(code, reason)

    def _next_event(self):
        """The next frame's event, ``False`` for a frame with no event, ``None`` if incomplete."""
        buf = self._buffer
        if len(buf) < 2:
            return None
        b0, b1 = buf[0], buf[1]
        fin = bool(b0 & 0x80)
        if b0 & 0x70:
            self._fail(CloseCode.PROTOCOL_ERROR, "reserved bits set but no extension was negotiated")
        try:
            opcode = Opcode(b0 & 0x0F)
        except ValueError:
            self._fail(CloseCode.PROTOCOL_ERROR, f"unknown opcode 0x{b0 & 0x0F:x}")
        masked = bool(b1 & 0x80)
        if masked == self.client:
            if self.client:
                self._fail(CloseCode.PROTOCOL_ERROR, "server frames must not be masked")
            self._fail(CloseCode.PROTOCOL_ERROR, "client frames must be masked")
        length = b1 & 0x7F
        offset = 2
        is_control = opcode >= Opcode.CLOSE
        if is_control:
            if length > _MAX_CONTROL_PAYLOAD:
                self._fail(CloseCode.PROTOCOL_ERROR, f"{opcode.name} frame longer than 125 bytes")
            if not fin:
                self._fail(CloseCode.PROTOCOL_ERROR, f"fragmented {opcode.name} frame")
        if length == 126:
            if len(buf) < 4:
                return None
            length = int.from_bytes(buf[2:4], "big")
            offset = 4
            if length < 126:
                self._fail(CloseCode.PROTOCOL_ERROR, "16-bit length used for a payload under 126 bytes")
        elif length == 127:
            if len(buf) < 10:
                return None
            length = int.from_bytes(buf[2:10], "big")
            offset = 10
            if length >> 63:
                self._fail(CloseCode.PROTOCOL_ERROR, "64-bit length has its most significant bit set")
            if length < 1 << 16:
                self._fail(CloseCode.PROTOCOL_ERROR, "64-bit length used for a payload under 65536 bytes")
        if length > self.max_frame_size:
            self._fail(CloseCode.MESSAGE_TOO_BIG, f"frame of {length} bytes exceeds the limit of {self.max_frame_size}")
        if not is_control:
            if opcode == Opcode.CONTINUATION and self._message is None:
                self._fail(CloseCode.PROTOCOL_ERROR, "continuation frame without a message to continue")
            if opcode != Opcode.CONTINUATION and self._message is not None:
                self._fail(CloseCode.PROTOCOL_ERROR, "new data message before the previous one finished")
        mask_key = b""
        if masked:
            if len(buf) < offset + 4:
                return None
            mask_key = bytes(buf[offset : offset + 4])
            offset += 4
        end = offset + length
        if len(buf) < end:
            return None
        payload = bytes(buf[offset:end])
        del buf[:end]
        if masked:
            payload = mask_payload(payload, mask_key)
        return self._frame_event(opcode, fin, payload)

    def _frame_event(self, opcode: Opcode, fin: bool, payload: bytes):
        if opcode == Opcode.PING:
            return Ping(payload)
        if opcode == Opcode.PONG:
            return Pong(payload)
        if opcode == Opcode.CLOSE:
            return self._close_event(payload)
        kind = self._message if opcode == Opcode.CONTINUATION else opcode
        self._message = None if fin else kind
        if kind == Opcode.TEXT:
            try:
                text = self._utf8.decode(payload, final=fin)
            except UnicodeDecodeError:
                self._fail(CloseCode.INVALID_DATA, "text message is not valid UTF-8")
            if fin:
                self._utf8.reset()
            return TextData(text, fin)
        return BinaryData(payload, fin)

    def _close_event(self, payload: bytes) -> CloseReceived:
        if len(payload) == 1:
            self._fail(CloseCode.PROTOCOL_ERROR, "close frame with a 1-byte payload")
        code = int(CloseCode.NO_STATUS)
        reason = ""
        if payload:
            code = int.from_bytes(payload[:2], "big")
            if not _close_code_valid(code):
                self._fail(CloseCode.PROTOCOL_ERROR, f"invalid close code {code}")
            try:
                reason = payload[2:].decode("utf-8")
            except UnicodeDecodeError:
                self._fail(CloseCode.INVALID_DATA, "close reason is not valid UTF-8")
        self.close_received = True
        self._buffer.clear()
        return CloseReceived(code, reason)

    # -- sending ---------------------------------------------------------

    def _frame(self, opcode: Opcode, payload: bytes, fin: bool = True) -> bytes:
        mask = self._mask_source(4) if self.client else None
        return encode_frame(opcode, payload, fin=fin, mask=mask)

    def send_binary(self, data: bytes, *, fin: bool = True) -> bytes:
        """A binary message (or, with ``fin=False``, its first fragment)."""
        return self._frame(Opcode.BINARY, data, fin)

    def send_continuation(self, data: bytes, *, fin: bool = True) -> bytes:
        """A further fragment of the current message."""
        return self._frame(Opcode.CONTINUATION, data, fin)

    def send_text(self, text: str) -> bytes:
        """A text message."""
        return self._frame(Opcode.TEXT, text.encode("utf-8"))

    def send_ping(self, payload: bytes = b"") -> bytes:
        """A ping (payload at most 125 bytes)."""
        if len(payload) > _MAX_CONTROL_PAYLOAD:
            raise ValueError("a ping payload is at most 125 bytes")
        return self._frame(Opcode.PING, payload)

    def send_pong(self, payload: bytes = b"") -> bytes:
        """A pong echoing a ping's ``payload``."""
        return self._frame(Opcode.PONG, payload[:_MAX_CONTROL_PAYLOAD])

    def send_close(self, code: int | None = CloseCode.NORMAL, reason: str = "") -> bytes:
        """A close frame (``code=None``: empty payload); the reason is cut to fit 125 bytes."""
        if code in (CloseCode.NO_STATUS, CloseCode.ABNORMAL):
            code = None
        self.close_sent = True
        return self._frame(Opcode.CLOSE, _close_payload(code, reason))
