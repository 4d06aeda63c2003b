# -*- test-case-name: tests.derp.test_frames -*-
"""
Sans-IO codec for the DERP relay protocol, version 2 (no Twisted imports).

Wire format. Every frame is::

    type (1 byte) | length (4 bytes, big-endian, payload only) | payload

Frames (S = server, C = client, M = trusted mesh peer):

=====  ===============  ====  =====================================================
 type  name             dir   payload
=====  ===============  ====  =====================================================
 0x01  ServerKey        S→C   magic ``DERP🔑`` (8 B) + server public key (32 B)
 0x02  ClientInfo       C→S   client public key (32 B) + nonce (24 B) + NaCl box(JSON)
 0x03  ServerInfo       S→C   nonce (24 B) + NaCl box(JSON ``{"version":2}``)
 0x04  SendPacket       C→S   destination key (32 B) + packet
 0x05  RecvPacket       S→C   source key (32 B) + packet
 0x06  KeepAlive        S→C   empty
 0x07  NotePreferred    C→S   one byte, 1 = this is my home region
 0x08  PeerGone         S→C   key (32 B) + reason (1 B, optional on read)
 0x09  PeerPresent      S→M   key (32 B) + IPv6 or v4-mapped (16 B) + port (2 B) + flags (1 B)
 0x0a  ForwardPacket    M→S   source key (32 B) + destination key (32 B) + packet
 0x10  WatchConns       M→S   empty
 0x11  ClosePeer        M→S   key (32 B)
 0x12  Ping             both  8 opaque bytes
 0x13  Pong             both  the 8 bytes of the ping answered
 0x14  Health           S→C   UTF-8 problem text; empty = healthy again
 0x15  Restarting       S→C   reconnect-in ms (4 B) + try-for ms (4 B)
=====  ===============  ====  =====================================================

Unknown frame types are passed up; receivers skip them. Packets carry at most
:data:`MAX_PACKET_SIZE` bytes of user data. The NaCl boxes are
Curve25519/XSalsa20-Poly1305 (``crypto_box``), nonce-prefixed.
"""

from __future__ import annotations

import enum
import ipaddress
import json
import struct
from typing import Any, Iterator, Mapping, NamedTuple

from nacl.exceptions import CryptoError
from nacl.public import Box, PrivateKey, PublicKey

__all__ = [
    "PROTOCOL_VERSION",
    "MAGIC",
    "KEY_LEN",
    "NONCE_LEN",
    "FRAME_HEADER_LEN",
    "MAX_PACKET_SIZE",
    "MAX_INFO_LEN",
    "MAX_CLIENT_INFO_LEN",
    "MAX_FRAME_LEN",
    "DISCO_MAGIC",
    "FrameType",
    "PeerGoneReason",
    "PeerPresentFlags",
    "Frame",
    "FrameError",
    "FrameDecoder",
    "SERVER_FRAME_LIMITS",
    "encode_frame",
    "server_key_frame",
    "parse_server_key",
    "client_info_frame",
    "open_client_info",
    "server_info_frame",
    "open_server_info",
    "send_packet_frame",
    "recv_packet_frame",
    "parse_packet",
    "forward_packet_frame",
    "parse_forward_packet",
    "note_preferred_frame",
    "parse_note_preferred",
    "peer_gone_frame",
    "parse_peer_gone",
    "peer_present_frame",
    "parse_peer_present",
    "watch_conns_frame",
    "close_peer_frame",
    "parse_close_peer",
    "ping_frame",
    "pong_frame",
    "parse_ping",
    "keep_alive_frame",
    "health_frame",
    "restarting_frame",
    "parse_restarting",
    "looks_like_disco",
]

PROTOCOL_VERSION = 2
MAGIC = b"DERP\xf0\x9f\x94\x91"  # "DERP🔑"
KEY_LEN = 32
NONCE_LEN = 24
FRAME_HEADER_LEN = 5
MAX_PACKET_SIZE = 64 << 10
MAX_INFO_LEN = 1 << 20
MAX_CLIENT_INFO_LEN = 256 << 10
#: Longest frame any decoder accepts by default (the client's own limit).
MAX_FRAME_LEN = 1 << 20
#: Disco packets start with "TS💬" and are at least magic + key + nonce long.
DISCO_MAGIC = b"TS\xf0\x9f\x92\xac"
_DISCO_MIN_LEN = len(DISCO_MAGIC) + KEY_LEN + NONCE_LEN

_HEADER = struct.Struct(">BI")
_TWO_U32 = struct.Struct(">II")


class FrameType(enum.IntEnum):
    """The DERP frame type byte."""

    SERVER_KEY = 0x01
    CLIENT_INFO = 0x02
    SERVER_INFO = 0x03
    SEND_PACKET = 0x04
    RECV_PACKET = 0x05
    KEEP_ALIVE = 0x06
    NOTE_PREFERRED = 0x07
    PEER_GONE = 0x08
    PEER_PRESENT = 0x09
    FORWARD_PACKET = 0x0A
    WATCH_CONNS = 0x10
    CLOSE_PEER = 0x11
    PING = 0x12
    PONG = 0x13
    HEALTH = 0x14
    RESTARTING = 0x15


class PeerGoneReason(enum.IntEnum):
    """Why a PeerGone frame was sent."""

    DISCONNECTED = 0x00
    NOT_HERE = 0x01
    MESH_CONN_BROKE = 0xF0  # local to mesh clients, never on the wire


class PeerPresentFlags(enum.IntFlag):
    """Bits of the PeerPresent flags byte."""

    IS_REGULAR = 0x01
    IS_MESH_PEER = 0x02
    IS_PROBER = 0x04
    NOT_IDEAL = 0x08


class Frame(NamedTuple):
    """One decoded frame: its type byte (an ``int``; may be unknown) and payload."""

    type: int
    payload: bytes


class FrameError(ValueError):
    """The byte stream or a frame payload violates the DERP protocol."""


#: Per-type payload limits a server applies (checked on the header, before buffering).
SERVER_FRAME_LIMITS: Mapping[int, int] = {
    FrameType.CLIENT_INFO: MAX_CLIENT_INFO_LEN,
    FrameType.SEND_PACKET: KEY_LEN + MAX_PACKET_SIZE,
    FrameType.FORWARD_PACKET: 2 * KEY_LEN + MAX_PACKET_SIZE,
    FrameType.PING: 1000,
    FrameType.PONG: 1000,
    FrameType.NOTE_PREFERRED: 1,
    FrameType.WATCH_CONNS: 0,
    FrameType.CLOSE_PEER: KEY_LEN,
    FrameType.KEEP_ALIVE: 0,
}


class FrameDecoder:
    """Incremental frame parser: :meth:`feed` bytes, iterate :meth:`frames`.

    A length above the limit for the frame's type raises :class:`FrameError`
    as soon as the header is seen, so an oversized frame is never buffered.
    After an error the decoder stays broken (the connection must be closed).
    """

    def __init__(self, max_length: int = MAX_FRAME_LEN, limits: Mapping[int, int] | None = None):
        self._max_length = max_length
        self._limits = dict(limits or {})
        self._buf = bytearray()
        self._pos = 0
        self._broken: FrameError | None = None

    @property
    def buffered(self) -> int:
        """Number of bytes received but not yet returned as frames."""
        return len(self._buf) - self._pos

    def feed(self, data: bytes) -> None:
        """Append received bytes."""
        self._buf += data

    def next_frame(self) -> Frame | None:
        """Return the next complete frame, or ``None`` if more bytes are needed."""
        if self._broken is not None:
            raise self._broken
        buf = self._buf
        pos = self._pos
        if len(buf) - pos < FRAME_HEADER_LEN:
            return None
        ftype, length = _HEADER.unpack_from(buf, pos)
        limit = self._limits.get(ftype, self._max_length)
        if length > limit:
            self._broken = FrameError(f"frame type 0x{ftype:02x} has length {length}, limit is {limit}")
            raise self._broken
        end = pos + FRAME_HEADER_LEN + length
        if end > len(buf):
            return None
        frame = Frame(ftype, bytes(buf[pos + FRAME_HEADER_LEN : end]))
        if end == len(buf):
            buf.clear()
            self._pos = 0
        elif end > 65536:
            del buf[:end]
            self._pos = 0
        else:
            self._pos = end
        return frame

    def frames(self) -> Iterator[Frame]:
        """Yield every complete frame buffered so far."""
        while True:
            frame = self.next_frame()
            if frame is None:
                return
            yield frame


def encode_frame(ftype: int, payload: bytes = b"") -> bytes:
    """Return the wire bytes of one frame."""
    return _HEADER.pack(ftype, len(payload)) + payload


def _key(key: bytes, what: str = "key") -> bytes:
    if len(key) != KEY_LEN:
        raise FrameError(f"{what} must be {KEY_LEN} bytes, got {len(key)}")
    return bytes(key)


# -- handshake ---------------------------------------------------------------


def server_key_frame(server_public: bytes) -> bytes:
    """ServerKey: magic followed by the server's public key."""
    return encode_frame(FrameType.SERVER_KEY, MAGIC + _key(server_public, "server key"))


def parse_server_key(payload: bytes) -> bytes:
    """Return the server public key from a ServerKey payload (extra bytes ignored)."""
    if len(payload) < len(MAGIC) + KEY_LEN or payload[: len(MAGIC)] != MAGIC:
        raise FrameError("ServerKey frame lacks the DERP magic and a 32-byte key")
    return payload[len(MAGIC) : len(MAGIC) + KEY_LEN]


def _seal(private: PrivateKey, peer_public: bytes, info: Mapping[str, Any], nonce: bytes | None) -> bytes:
    body = json.dumps(dict(info), separators=(",", ":")).encode()
    box = Box(private, PublicKey(peer_public))
    return bytes(box.encrypt(body, nonce) if nonce is not None else box.encrypt(body))


def _open(private: PrivateKey, peer_public: bytes, sealed: bytes, what: str) -> dict:
    if len(sealed) < NONCE_LEN + 16:
        raise FrameError(f"{what} is too short to hold a nonce and a sealed box")
    try:
        body = Box(private, PublicKey(peer_public)).decrypt(sealed)
    except CryptoError:
        raise FrameError(f"{what} does not decrypt with the expected keys") from None
    try:
        info = json.loads(body)
    except ValueError:
        raise FrameError(f"{what} does not hold JSON") from None
    if not isinstance(info, dict):
        raise FrameError(f"{what} JSON is not an object")
    return info


def client_info_frame(
    client_private: PrivateKey,
    server_public: bytes,
    info: Mapping[str, Any],
    nonce: bytes | None = None,
) -> bytes:
    """ClientInfo: our public key + ``nonce || box(info)`` sealed to the server."""
    sealed = _seal(client_private, server_public, info, nonce)
    return encode_frame(FrameType.CLIENT_INFO, bytes(client_private.public_key) + sealed)


def open_client_info(server_private: PrivateKey, payload: bytes) -> tuple[bytes, dict]:
    """Return ``(client public key, info dict)`` from a ClientInfo payload."""
    if len(payload) < KEY_LEN + NONCE_LEN:
        raise FrameError(f"ClientInfo frame is {len(payload)} bytes, at least {KEY_LEN + NONCE_LEN} needed")
    client_public = payload[:KEY_LEN]
    return client_public, _open(server_private, client_public, payload[KEY_LEN:], "ClientInfo")


def server_info_frame(
    server_private: PrivateKey,
    client_public: bytes,
    info: Mapping[str, Any] | None = None,
    nonce: bytes | None = None,
) -> bytes:
    """ServerInfo: ``nonce || box(info)`` sealed to the client (default ``{"version": 2}``)."""
    if info is None:
        info = {"version": PROTOCOL_VERSION}
    return encode_frame(FrameType.SERVER_INFO, _seal(server_private, client_public, info, nonce))


def open_server_info(client_private: PrivateKey, server_public: bytes, payload: bytes) -> dict:
    """Return the info dict from a ServerInfo payload."""
    return _open(client_private, server_public, payload, "ServerInfo")


# -- packets -----------------------------------------------------------------


def _packet(ftype: int, key: bytes, data: bytes) -> bytes:
    if len(data) > MAX_PACKET_SIZE:
        raise FrameError(f"packet of {len(data)} bytes exceeds {MAX_PACKET_SIZE}")
    return _HEADER.pack(ftype, KEY_LEN + len(data)) + _key(key) + data


def send_packet_frame(destination: bytes, data: bytes) -> bytes:
    """SendPacket to ``destination``."""
    return _packet(FrameType.SEND_PACKET, destination, data)


def recv_packet_frame(source: bytes, data: bytes) -> bytes:
    """RecvPacket from ``source``."""
    return _packet(FrameType.RECV_PACKET, source, data)


def parse_packet(payload: bytes) -> tuple[bytes, bytes]:
    """Split a SendPacket/RecvPacket payload into ``(key, data)``."""
    if len(payload) < KEY_LEN:
        raise FrameError(f"packet frame of {len(payload)} bytes has no 32-byte key")
    if len(payload) > KEY_LEN + MAX_PACKET_SIZE:
        raise FrameError("packet frame exceeds the 64 KiB packet limit")
    return payload[:KEY_LEN], payload[KEY_LEN:]


def forward_packet_frame(source: bytes, destination: bytes, data: bytes) -> bytes:
    """ForwardPacket (mesh): source key, destination key, packet."""
    if len(data) > MAX_PACKET_SIZE:
        raise FrameError(f"packet of {len(data)} bytes exceeds {MAX_PACKET_SIZE}")
    return (
        _HEADER.pack(FrameType.FORWARD_PACKET, 2 * KEY_LEN + len(data))
        + _key(source, "source key")
        + _key(destination, "destination key")
        + data
    )


def parse_forward_packet(payload: bytes) -> tuple[bytes, bytes, bytes]:
    """Return ``(source, destination, data)`` from a ForwardPacket payload."""
    if len(payload) < 2 * KEY_LEN:
        raise FrameError(f"ForwardPacket frame of {len(payload)} bytes lacks two keys")
    if len(payload) > 2 * KEY_LEN + MAX_PACKET_SIZE:
        raise FrameError("ForwardPacket frame exceeds the 64 KiB packet limit")
    return payload[:KEY_LEN], payload[KEY_LEN : 2 * KEY_LEN], payload[2 * KEY_LEN :]


def looks_like_disco(data: bytes) -> bool:
    """True if ``data`` looks like a Tailscale disco packet."""
    return len(data) >= _DISCO_MIN_LEN and data[: len(DISCO_MAGIC)] == DISCO_MAGIC


# -- control -----------------------------------------------------------------


def note_preferred_frame(preferred: bool) -> bytes:
    """NotePreferred: whether this server is the client's home."""
    return encode_frame(FrameType.NOTE_PREFERRED, b"\x01" if preferred else b"\x00")


def parse_note_preferred(payload: bytes) -> bool:
    """Return the NotePreferred flag; the payload must be exactly one byte."""
    if len(payload) != 1:
        raise FrameError(f"NotePreferred frame must be 1 byte, got {len(payload)}")
    return payload != b"\x00"


def peer_gone_frame(key: bytes, reason: int = PeerGoneReason.DISCONNECTED) -> bytes:
    """PeerGone: ``key`` left (or is not here), with a reason byte."""
    return encode_frame(FrameType.PEER_GONE, _key(key) + bytes([int(reason)]))


def parse_peer_gone(payload: bytes) -> tuple[bytes, int]:
    """Return ``(key, reason)``; a missing reason byte means Disconnected."""
    if len(payload) < KEY_LEN:
        raise FrameError(f"PeerGone frame of {len(payload)} bytes has no 32-byte key")
    reason = payload[KEY_LEN] if len(payload) > KEY_LEN else PeerGoneReason.DISCONNECTED
    return payload[:KEY_LEN], int(reason)


def peer_present_frame(
    key: bytes,
    ip: str | None = None,
    port: int = 0,
    flags: int = PeerPresentFlags.IS_REGULAR,
) -> bytes:
    """PeerPresent (to mesh watchers): key, 16-byte address, port, flags."""
    if ip:
        addr = ipaddress.ip_address(ip)
        if isinstance(addr, ipaddress.IPv4Address):
            addr = ipaddress.IPv6Address(b"\x00" * 10 + b"\xff\xff" + addr.packed)
        raw = addr.packed
    else:
        raw = b"\x00" * 16
    return encode_frame(FrameType.PEER_PRESENT, _key(key) + raw + struct.pack(">HB", port, int(flags)))


def parse_peer_present(payload: bytes) -> tuple[bytes, str | None, int, int]:
    """Return ``(key, ip or None, port, flags)``; the optional tail may be absent."""
    if len(payload) < KEY_LEN:
        raise FrameError(f"PeerPresent frame of {len(payload)} bytes has no 32-byte key")
    ip: str | None = None
    port = 0
    flags = 0
    if len(payload) >= KEY_LEN + 18:
        addr = ipaddress.IPv6Address(payload[KEY_LEN : KEY_LEN + 16])
        mapped = addr.ipv4_mapped
        if not addr.is_unspecified:
            ip = str(mapped if mapped is not None else addr)
        (port,) = struct.unpack_from(">H", payload, KEY_LEN + 16)
        if len(payload) >= KEY_LEN + 19:
            flags = payload[KEY_LEN + 18]
    return payload[:KEY_LEN], ip, port, flags


def watch_conns_frame() -> bytes:
    """WatchConns (mesh): ask to be told of every connection."""
    return encode_frame(FrameType.WATCH_CONNS)


def close_peer_frame(key: bytes) -> bytes:
    """ClosePeer (mesh): disconnect the client with ``key``."""
    return encode_frame(FrameType.CLOSE_PEER, _key(key))


def parse_close_peer(payload: bytes) -> bytes:
    """Return the key from a ClosePeer payload (exactly 32 bytes)."""
    if len(payload) != KEY_LEN:
        raise FrameError(f"ClosePeer frame must be {KEY_LEN} bytes, got {len(payload)}")
    return payload


def ping_frame(data: bytes) -> bytes:
    """Ping with 8 opaque bytes."""
    if len(data) != 8:
        raise FrameError("ping data must be 8 bytes")
    return encode_frame(FrameType.PING, data)


def pong_frame(data: bytes) -> bytes:
    """Pong echoing the 8 bytes of a ping."""
    if len(data) != 8:
        raise FrameError("pong data must be 8 bytes")
    return encode_frame(FrameType.PONG, data)


def parse_ping(payload: bytes) -> bytes:
    """Return the 8 bytes of a Ping/Pong payload (longer payloads use the first 8)."""
    if len(payload) < 8:
        raise FrameError(f"Ping/Pong frame must carry 8 bytes, got {len(payload)}")
    return payload[:8]


def keep_alive_frame() -> bytes:
    """KeepAlive: empty."""
    return encode_frame(FrameType.KEEP_ALIVE)


def health_frame(problem: str = "") -> bytes:
    """Health: a problem description, or empty for healthy."""
    return encode_frame(FrameType.HEALTH, problem.encode("utf-8"))


def restarting_frame(reconnect_in_ms: int, try_for_ms: int) -> bytes:
    """Restarting: reconnect after ``reconnect_in_ms`` and keep trying for ``try_for_ms``."""
    return encode_frame(FrameType.RESTARTING, _TWO_U32.pack(reconnect_in_ms, try_for_ms))


def parse_restarting(payload: bytes) -> tuple[int, int]:
    """Return ``(reconnect_in_ms, try_for_ms)``."""
    if len(payload) < _TWO_U32.size:
        raise FrameError(f"Restarting frame must be 8 bytes, got {len(payload)}")
    return _TWO_U32.unpack_from(payload)
