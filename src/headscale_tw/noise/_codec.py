# -*- test-case-name: tests.noise.test_codec -*-
"""
Sans-IO codec for Tailscale's ts2021 Noise channel ("controlbase").

No Twisted and no sockets here: bytes go in, bytes (or errors) come out.
The Twisted wrapper lives in :mod:`headscale_tw.noise.protocol`.

Wire messages (all integers big-endian; see docs/noise.md)::

    Initiation (client -> server, 101 bytes, carried in X-Tailscale-Handshake)
      0   BE16  protocol version (= client capability version, e.g. 133)
      2   u8    0x01
      3   BE16  payload length = 96
      5   32    client ephemeral public key (cleartext)
      37  48    client machine public key, encrypted (32 + 16-byte tag)
      85  16    tag over the empty payload

    Response (server -> client, 51 bytes, right after the 101 head)
      0   u8    0x02
      1   BE16  payload length = 48
      3   32    server ephemeral public key
      35  16    tag over the empty payload

    Error (server -> client, instead of a response; unauthenticated)
      0   u8    0x03
      1   BE16  text length
      3   ...   UTF-8 text

    Record (both directions, after the handshake)
      0   u8    0x04
      1   BE16  ciphertext length n (= plaintext + 16), whole frame <= 4096
      3   n     ChaCha20-Poly1305(key, nonce = 00000000 || BE64(counter), ad = "", plaintext)

    Early payload (first plaintext from the server, optional)
      0   5     ff ff ff 'T' 'S'
      5   BE32  JSON length L
      9   L     {"nodeKeyChallenge":"chalpub:<64 hex>"}

The handshake is Noise_IK_25519_ChaChaPoly_BLAKE2s with the prologue
``"Tailscale Control Protocol v<version>"``. The transport nonce is
big-endian, unlike the Noise specification: stock Noise libraries agree only
on the first frame in each direction.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import struct
from typing import NamedTuple

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

__all__ = [
    "PROTOCOL_NAME",
    "INITIATION_LEN",
    "RESPONSE_LEN",
    "MAX_FRAME_LEN",
    "MAX_PLAINTEXT_LEN",
    "MSG_INITIATION",
    "MSG_RESPONSE",
    "MSG_ERROR",
    "MSG_RECORD",
    "EARLY_PAYLOAD_MAGIC",
    "NoiseError",
    "HandshakeRefused",
    "HandshakeFailed",
    "ServerError",
    "FrameError",
    "TransportCipher",
    "TransportCiphers",
    "ResponderResult",
    "NoiseResponder",
    "NoiseInitiator",
    "RecordDecoder",
    "RecordEncoder",
    "EarlyPayloadReader",
    "InitiationHeader",
    "parse_initiation_header",
    "prologue",
    "error_frame",
    "encode_early_payload",
    "x25519_public",
    "generate_private",
]

PROTOCOL_NAME = b"Noise_IK_25519_ChaChaPoly_BLAKE2s"
PROLOGUE_PREFIX = b"Tailscale Control Protocol v"

MSG_INITIATION = 1
MSG_RESPONSE = 2
MSG_ERROR = 3
MSG_RECORD = 4

HEADER_LEN = 3
KEY_LEN = 32
TAG_LEN = 16
INITIATION_PAYLOAD_LEN = KEY_LEN + (KEY_LEN + TAG_LEN) + TAG_LEN  # 96
INITIATION_LEN = 2 + HEADER_LEN + INITIATION_PAYLOAD_LEN  # 101
RESPONSE_PAYLOAD_LEN = KEY_LEN + TAG_LEN  # 48
RESPONSE_LEN = HEADER_LEN + RESPONSE_PAYLOAD_LEN  # 51
MAX_FRAME_LEN = 4096
MAX_CIPHERTEXT_LEN = MAX_FRAME_LEN - HEADER_LEN  # 4093
MAX_PLAINTEXT_LEN = MAX_CIPHERTEXT_LEN - TAG_LEN  # 4077
MAX_NONCE = 2**64 - 1  # never used: the connection is exhausted before it

EARLY_PAYLOAD_MAGIC = b"\xff\xff\xffTS"
EARLY_PAYLOAD_HEADER_LEN = len(EARLY_PAYLOAD_MAGIC) + 4
MAX_EARLY_PAYLOAD_LEN = 10 << 20  # the Go client refuses more

_ZERO_NONCE = bytes(12)


class NoiseError(Exception):
    """Base class for everything this codec rejects."""


class HandshakeRefused(NoiseError):
    """
    The initiation is malformed at the framing level (size, type, length).

    The server answers with :func:`error_frame` of ``str(self)`` and closes,
    like Tailscale's own server does.
    """


class HandshakeFailed(NoiseError):
    """The initiation is well-formed but cryptographically wrong (bad tag, bad point)."""


class ServerError(NoiseError):
    """The server answered the initiation with an error frame (initiator side)."""


class FrameError(NoiseError):
    """A transport record is oversized, of the wrong type, or fails authentication."""


def _blake2s(data: bytes) -> bytes:
    return hashlib.blake2s(data).digest()


def _hmac(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.blake2s).digest()


def _hkdf(chaining_key: bytes, ikm: bytes) -> tuple[bytes, bytes]:
    """The Noise HKDF with two outputs over HMAC-BLAKE2s."""
    temp = _hmac(chaining_key, ikm)
    out1 = _hmac(temp, b"\x01")
    out2 = _hmac(temp, out1 + b"\x02")
    return out1, out2


def _dh(private: bytes | X25519PrivateKey, public: bytes) -> bytes:
    """X25519; an all-zero result (low-order point) fails the handshake, as in Go.

    ``private`` may be a loaded key: loading one from bytes costs as much as the
    exchange itself (OpenSSL derives the public key), so the responder loads its
    static key once and each ephemeral key once.
    """
    if isinstance(private, bytes):
        private = X25519PrivateKey.from_private_bytes(private)
    try:
        return private.exchange(
            X25519PublicKey.from_public_bytes(public)
        )
    except ValueError as e:
        raise HandshakeFailed(f"bad public key in handshake: {e}") from None


def x25519_public(private: bytes) -> bytes:
    """The X25519 public key (32 raw bytes) of a 32-byte private key."""
    return (
        X25519PrivateKey.from_private_bytes(private)
        .public_key()
        .public_bytes(Encoding.Raw, PublicFormat.Raw)
    )


def generate_private() -> bytes:
    """32 random bytes, clamped like the Go client's keys (X25519 clamps anyway)."""
    raw = bytearray(os.urandom(KEY_LEN))
    raw[0] &= 248
    raw[31] = (raw[31] & 127) | 64
    return bytes(raw)


def prologue(version: int) -> bytes:
    """The Noise prologue for a client protocol (= capability) version."""
    return PROLOGUE_PREFIX + str(version).encode("ascii")


def error_frame(text: str) -> bytes:
    """An unauthenticated error frame (type 3) carrying ``text``, cut to 65535 bytes."""
    data = text.encode("utf-8")[:0xFFFF]
    return struct.pack(">BH", MSG_ERROR, len(data)) + data


class _SymmetricState:
    """Noise SymmetricState for a 33-byte protocol name (longer than HASHLEN)."""

    def __init__(self, version: int) -> None:
        self.h = _blake2s(PROTOCOL_NAME)
        self.ck = self.h
        self.mix_hash(prologue(version))

    def mix_hash(self, data: bytes) -> None:
        self.h = _blake2s(self.h + data)

    def mix_dh(self, private: bytes | X25519PrivateKey, public: bytes) -> bytes:
        """MixKey(DH(private, public)); returns the new cipher key."""
        self.ck, key = _hkdf(self.ck, _dh(private, public))
        return key

    def encrypt_and_hash(self, key: bytes, plaintext: bytes) -> bytes:
        ciphertext = ChaCha20Poly1305(key).encrypt(_ZERO_NONCE, plaintext, self.h)
        self.mix_hash(ciphertext)
        return ciphertext

    def decrypt_and_hash(self, key: bytes, ciphertext: bytes) -> bytes:
        try:
            plaintext = ChaCha20Poly1305(key).decrypt(_ZERO_NONCE, ciphertext, self.h)
        except InvalidTag:
            raise HandshakeFailed("handshake message failed authentication") from None
        self.mix_hash(ciphertext)
        return plaintext

    def split(self) -> tuple[bytes, bytes]:
        """(initiator->responder key, responder->initiator key)."""
        return _hkdf(self.ck, b"")


class TransportCipher:
    """
    ChaCha20-Poly1305 for one direction, nonce ``00000000 || BE64(counter)``.

    The counter starts at 0 and goes up by one per record; 2**64-1 is never
    used (:class:`FrameError` instead).
    """

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_LEN:
            raise ValueError("transport key must be 32 bytes")
        self._aead = ChaCha20Poly1305(key)
        self.counter = 0

    def _next_nonce(self) -> bytes:
        if self.counter >= MAX_NONCE:
            raise FrameError("cipher exhausted: no nonces left")
        nonce = b"\x00\x00\x00\x00" + self.counter.to_bytes(8, "big")
        self.counter += 1
        return nonce

    def encrypt(self, plaintext: bytes) -> bytes:
        """Ciphertext (plaintext + 16-byte tag) under the next nonce."""
        return self._aead.encrypt(self._next_nonce(), plaintext, None)

    def decrypt(self, ciphertext: bytes) -> bytes:
        """Plaintext of ``ciphertext`` under the next nonce, or :class:`FrameError`."""
        nonce = self._next_nonce()
        try:
            return self._aead.decrypt(nonce, ciphertext, None)
        except InvalidTag:
            raise FrameError("record failed authentication") from None


class TransportCiphers(NamedTuple):
    """The two directions of one side of a finished handshake."""

    send: TransportCipher
    receive: TransportCipher
    handshake_hash: bytes


class ResponderResult(NamedTuple):
    """What :meth:`NoiseResponder.respond` returns (unpacks as a 4-tuple)."""

    response: bytes
    ciphers: TransportCiphers
    machine_key: bytes
    version: int


class InitiationHeader(NamedTuple):
    """The cleartext 5-byte prefix of an initiation message."""

    version: int
    type: int
    length: int


def parse_initiation_header(message: bytes) -> InitiationHeader:
    """Read version, type and length from the first 5 bytes of ``message``."""
    if len(message) < 5:
        raise HandshakeRefused("wrong handshake initiation size")
    return InitiationHeader(*struct.unpack(">HBH", message[:5]))


class NoiseResponder:
    """The server side of the IK handshake; one instance can answer many clients."""

    def __init__(self, static_private: bytes) -> None:
        if len(static_private) != KEY_LEN:
            raise ValueError("server static private key must be 32 bytes")
        self._private = X25519PrivateKey.from_private_bytes(static_private)
        self.public = self._private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    def respond(self, initiation: bytes, ephemeral_private: bytes | None = None) -> ResponderResult:
        """
        Answer a 101-byte initiation.

        Raises :class:`HandshakeRefused` (send an error frame) for a wrong
        size, type or length, :class:`HandshakeFailed` (just close) when the
        cryptography does not check out. ``ephemeral_private`` is for tests.
        """
        if len(initiation) != INITIATION_LEN:
            raise HandshakeRefused("wrong handshake initiation size")
        header = parse_initiation_header(initiation)
        if header.type != MSG_INITIATION:
            raise HandshakeRefused("unexpected handshake message type")
        if header.length != INITIATION_PAYLOAD_LEN:
            raise HandshakeRefused("wrong handshake initiation length")

        s = _SymmetricState(header.version)
        s.mix_hash(self.public)  # <- s
        client_ephemeral = initiation[5:37]
        s.mix_hash(client_ephemeral)  # -> e
        key = s.mix_dh(self._private, client_ephemeral)  # es
        machine_key = s.decrypt_and_hash(key, initiation[37:85])  # s
        key = s.mix_dh(self._private, machine_key)  # ss
        s.decrypt_and_hash(key, initiation[85:101])

        eph_private = X25519PrivateKey.from_private_bytes(
            ephemeral_private if ephemeral_private is not None else generate_private()
        )
        eph_public = eph_private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        s.mix_hash(eph_public)  # <- e
        s.mix_dh(eph_private, client_ephemeral)  # ee (cipher key unused)
        key = s.mix_dh(eph_private, machine_key)  # se
        tag = s.encrypt_and_hash(key, b"")
        response = struct.pack(">BH", MSG_RESPONSE, RESPONSE_PAYLOAD_LEN) + eph_public + tag

        c2s, s2c = s.split()
        ciphers = TransportCiphers(TransportCipher(s2c), TransportCipher(c2s), s.h)
        return ResponderResult(response, ciphers, machine_key, header.version)


class NoiseInitiator:
    """The client side of the IK handshake (fake clients and tests)."""

    def __init__(
        self,
        machine_private: bytes,
        server_public: bytes,
        version: int,
        ephemeral_private: bytes | None = None,
    ) -> None:
        if len(machine_private) != KEY_LEN or len(server_public) != KEY_LEN:
            raise ValueError("keys must be 32 bytes")
        if not 0 <= version <= 0xFFFF:
            raise ValueError("protocol version must fit in 16 bits")
        self._machine_private = machine_private
        self._server_public = server_public
        self._ephemeral = ephemeral_private if ephemeral_private is not None else generate_private()
        self.version = version
        self._state: _SymmetricState | None = None

    def initiation(self) -> bytes:
        """The 101-byte initiation message (call once)."""
        s = _SymmetricState(self.version)
        s.mix_hash(self._server_public)
        eph_public = x25519_public(self._ephemeral)
        s.mix_hash(eph_public)
        key = s.mix_dh(self._ephemeral, self._server_public)
        sealed_machine = s.encrypt_and_hash(key, x25519_public(self._machine_private))
        key = s.mix_dh(self._machine_private, self._server_public)
        tag = s.encrypt_and_hash(key, b"")
        self._state = s
        header = struct.pack(">HBH", self.version, MSG_INITIATION, INITIATION_PAYLOAD_LEN)
        return header + eph_public + sealed_machine + tag

    @staticmethod
    def reply_length(prefix: bytes) -> int | None:
        """Total length of the server's reply given its first bytes, or None if < 3 bytes."""
        if len(prefix) < HEADER_LEN:
            return None
        return HEADER_LEN + struct.unpack(">H", prefix[1:3])[0]

    def finish(self, reply: bytes) -> TransportCiphers:
        """Check the server's reply (response or error frame) and derive the ciphers."""
        if self._state is None:
            raise NoiseError("initiation() must be called first")
        kind = reply[0] if reply else None
        if kind == MSG_ERROR:
            raise ServerError(reply[HEADER_LEN:].decode("utf-8", "replace"))
        if kind != MSG_RESPONSE:
            raise HandshakeFailed(f"unexpected handshake response type {kind}")
        if len(reply) != RESPONSE_LEN or reply[1:3] != struct.pack(">H", RESPONSE_PAYLOAD_LEN):
            raise HandshakeFailed("wrong handshake response length")
        s = self._state
        server_ephemeral = reply[3:35]
        s.mix_hash(server_ephemeral)
        s.mix_dh(self._ephemeral, server_ephemeral)  # ee
        key = s.mix_dh(self._machine_private, server_ephemeral)  # se
        s.decrypt_and_hash(key, reply[35:51])
        c2s, s2c = s.split()
        self._state = None
        return TransportCiphers(TransportCipher(c2s), TransportCipher(s2c), s.h)


class RecordDecoder:
    """
    Bytes from the network in, plaintext chunks out.

    Headers may straddle reads. The first bad frame raises :class:`FrameError`
    and poisons the decoder: every later :meth:`feed` raises again.
    """

    def __init__(self, cipher: TransportCipher) -> None:
        self._cipher = cipher
        self._buffer = bytearray()
        self._error: FrameError | None = None

    def feed(self, data: bytes) -> list[bytes]:
        """Add ``data``; return the plaintext of every complete record (empty ones skipped)."""
        if self._error is not None:
            raise FrameError(f"connection already failed: {self._error}")
        self._buffer += data
        out = []
        try:
            while len(self._buffer) >= HEADER_LEN:
                kind, length = struct.unpack_from(">BH", self._buffer)
                if kind != MSG_RECORD:
                    raise FrameError(f"unexpected frame type {kind} (want {MSG_RECORD})")
                if HEADER_LEN + length > MAX_FRAME_LEN:
                    raise FrameError(
                        f"frame of {HEADER_LEN + length} bytes exceeds {MAX_FRAME_LEN}"
                    )
                if len(self._buffer) < HEADER_LEN + length:
                    break
                ciphertext = bytes(self._buffer[HEADER_LEN : HEADER_LEN + length])
                del self._buffer[: HEADER_LEN + length]
                if length < TAG_LEN:
                    raise FrameError(f"frame of {length} bytes is shorter than its tag")
                plaintext = self._cipher.decrypt(ciphertext)
                if plaintext:
                    out.append(plaintext)
        except FrameError as e:
            self._error = e
            self._buffer.clear()
            raise
        return out


class RecordEncoder:
    """Plaintext in, transport records (each at most 4096 bytes) out."""

    def __init__(self, cipher: TransportCipher) -> None:
        self._cipher = cipher

    def encode(self, plaintext: bytes) -> bytes:
        """Split ``plaintext`` into records of at most 4077 plaintext bytes each."""
        frames = []
        for start in range(0, len(plaintext), MAX_PLAINTEXT_LEN):
            ciphertext = self._cipher.encrypt(plaintext[start : start + MAX_PLAINTEXT_LEN])
            frames.append(struct.pack(">BH", MSG_RECORD, len(ciphertext)) + ciphertext)
        return b"".join(frames)


def encode_early_payload(challenge_public: bytes) -> bytes:
    """The early-payload plaintext (magic, BE32 length, EarlyNoise JSON); 104 bytes."""
    body = json.dumps(
        {"nodeKeyChallenge": "chalpub:" + challenge_public.hex()}, separators=(",", ":")
    ).encode("ascii")
    return EARLY_PAYLOAD_MAGIC + struct.pack(">I", len(body)) + body


class EarlyPayloadReader:
    """
    Client side: strip the optional early payload from the server's first plaintext.

    :meth:`feed` returns the plaintext that follows (HTTP/2 bytes) once the
    decision is made; until then it returns ``b""``. ``early`` is the decoded
    JSON object, or None when the server sent none.
    """

    def __init__(self) -> None:
        self._buffer = b""
        self.done = False
        self.early: dict | None = None

    def feed(self, data: bytes) -> bytes:
        if self.done:
            return data
        self._buffer += data
        if len(self._buffer) < EARLY_PAYLOAD_HEADER_LEN:
            return b""
        if not self._buffer.startswith(EARLY_PAYLOAD_MAGIC):
            self.done = True
            rest, self._buffer = self._buffer, b""
            return rest
        (length,) = struct.unpack_from(">I", self._buffer, len(EARLY_PAYLOAD_MAGIC))
        if length > MAX_EARLY_PAYLOAD_LEN:
            raise NoiseError(f"early payload of {length} bytes is too large")
        end = EARLY_PAYLOAD_HEADER_LEN + length
        if len(self._buffer) < end:
            return b""
        try:
            self.early = json.loads(self._buffer[EARLY_PAYLOAD_HEADER_LEN:end])
        except ValueError as e:
            raise NoiseError(f"early payload is not JSON: {e}") from None
        self.done = True
        rest, self._buffer = self._buffer[end:], b""
        return rest
