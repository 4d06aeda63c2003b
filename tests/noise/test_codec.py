"""Tests for headscale_tw.noise._codec (sans-IO handshake, cipher, records)."""

import base64
import json
import os
import struct

from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from hypothesis import given, settings
from hypothesis import strategies as st
from noise.connection import Keypair, NoiseConnection
from twisted.trial import unittest

from headscale_tw.noise._codec import (
    EARLY_PAYLOAD_MAGIC,
    INITIATION_LEN,
    MAX_FRAME_LEN,
    MAX_PLAINTEXT_LEN,
    EarlyPayloadReader,
    FrameError,
    HandshakeFailed,
    HandshakeRefused,
    NoiseError,
    NoiseInitiator,
    NoiseResponder,
    RecordDecoder,
    RecordEncoder,
    ServerError,
    TransportCipher,
    encode_early_payload,
    error_frame,
    parse_initiation_header,
    prologue,
    x25519_public,
)

# X-Tailscale-Handshake sent by a real tailscaled 1.96.4 (captures/request-sequence.json).
CAPTURED_HANDSHAKE = (
    "AIUBAGDC5EBPUAF1yJVg5DpKb9piloOQrat69s4Ace7px6GXGIrELBsDgw6IFVnZU2Ew+1OBaAHjQFHSnURd"
    "eYBXvHgUNEjpnU1svEKPa4rPNG1SzkUc8Ip8Q6tUkRi5o01+P0A="
)

SERVER_PRIVATE = bytes(range(1, 33))
MACHINE_PRIVATE = bytes(range(33, 65))
CLIENT_EPHEMERAL = bytes(range(65, 97))
SERVER_EPHEMERAL = bytes(range(97, 129))


def _noise_initiator(version=133, ephemeral=None):
    """A noiseprotocol initiator configured like tailscaled (independent implementation)."""
    conn = NoiseConnection.from_name(b"Noise_IK_25519_ChaChaPoly_BLAKE2s")
    conn.set_as_initiator()
    conn.set_keypair_from_private_bytes(Keypair.STATIC, MACHINE_PRIVATE)
    conn.set_keypair_from_public_bytes(Keypair.REMOTE_STATIC, x25519_public(SERVER_PRIVATE))
    if ephemeral is not None:
        conn.set_keypair_from_private_bytes(Keypair.EPHEMERAL, ephemeral)
    conn.set_prologue(prologue(version))
    conn.start_handshake()
    return conn


def _pair(version=133):
    """A finished handshake between our initiator and our responder."""
    responder = NoiseResponder(SERVER_PRIVATE)
    initiator = NoiseInitiator(MACHINE_PRIVATE, responder.public, version)
    result = responder.respond(initiator.initiation())
    client = initiator.finish(result.response)
    return client, result


class CapturedInitiationTests(unittest.TestCase):
    """The real client's handshake header has the layout we expect."""

    def test_capture_parses(self):
        """The captured header is 136 base64 characters of 101 bytes: version 133, type 1, length 96."""
        self.assertEqual(len(CAPTURED_HANDSHAKE), 136)
        message = base64.b64decode(CAPTURED_HANDSHAKE, validate=True)
        self.assertEqual(len(message), INITIATION_LEN)
        self.assertEqual(parse_initiation_header(message), (133, 1, 96))

    def test_capture_with_wrong_server_key_fails_cleanly(self):
        """Answering the captured initiation with a key that is not the server's fails authentication, not framing."""
        message = base64.b64decode(CAPTURED_HANDSHAKE)
        self.assertRaises(HandshakeFailed, NoiseResponder(SERVER_PRIVATE).respond, message)


class HandshakeTests(unittest.TestCase):
    """NoiseResponder and NoiseInitiator agree with each other and with noiseprotocol."""

    def test_roundtrip(self):
        """Both sides learn the same handshake hash; the server learns the machine key and version."""
        client, result = _pair(version=133)
        self.assertEqual(result.machine_key, x25519_public(MACHINE_PRIVATE))
        self.assertEqual(result.version, 133)
        self.assertEqual(client.handshake_hash, result.ciphers.handshake_hash)
        response, ciphers, machine_key, version = result
        self.assertEqual(response[:3], b"\x02\x00\x30")
        self.assertEqual(len(response), 51)

    def test_responder_loads_each_private_key_once(self):
        """Answering a handshake loads one private key (the fresh ephemeral); the static key is kept loaded."""
        from headscale_tw.noise import _codec

        responder = NoiseResponder(SERVER_PRIVATE)
        loads = []
        real = _codec.X25519PrivateKey

        class Counting:
            @staticmethod
            def from_private_bytes(data):
                loads.append(data)
                return real.from_private_bytes(data)

        self.patch(_codec, "X25519PrivateKey", Counting)
        initiation = NoiseInitiator(MACHINE_PRIVATE, responder.public, 133, CLIENT_EPHEMERAL).initiation()
        loads.clear()
        responder.respond(initiation)
        self.assertEqual(len(loads), 1)

    def test_initiation_layout(self):
        """The initiation is BE16 version, type 1, BE16 96, then the cleartext ephemeral key."""
        initiator = NoiseInitiator(MACHINE_PRIVATE, x25519_public(SERVER_PRIVATE), 0x1234, CLIENT_EPHEMERAL)
        message = initiator.initiation()
        self.assertEqual(message[:5], b"\x12\x34\x01\x00\x60")
        self.assertEqual(message[5:37], x25519_public(CLIENT_EPHEMERAL))
        self.assertEqual(len(message), 101)

    def test_initiator_matches_noiseprotocol(self):
        """With the same keys our initiation equals noiseprotocol's byte for byte (after the 5-byte header)."""
        ours = NoiseInitiator(MACHINE_PRIVATE, x25519_public(SERVER_PRIVATE), 133, CLIENT_EPHEMERAL)
        theirs = _noise_initiator(133, CLIENT_EPHEMERAL)
        self.assertEqual(ours.initiation()[5:], theirs.write_message())

    def test_responder_matches_noiseprotocol(self):
        """With the same keys our response equals noiseprotocol's responder's byte for byte."""
        message = NoiseInitiator(
            MACHINE_PRIVATE, x25519_public(SERVER_PRIVATE), 133, CLIENT_EPHEMERAL
        ).initiation()
        theirs = NoiseConnection.from_name(b"Noise_IK_25519_ChaChaPoly_BLAKE2s")
        theirs.set_as_responder()
        theirs.set_keypair_from_private_bytes(Keypair.STATIC, SERVER_PRIVATE)
        theirs.set_keypair_from_private_bytes(Keypair.EPHEMERAL, SERVER_EPHEMERAL)
        theirs.set_prologue(prologue(133))
        theirs.start_handshake()
        theirs.read_message(message[5:])
        expected = theirs.write_message()
        result = NoiseResponder(SERVER_PRIVATE).respond(message, ephemeral_private=SERVER_EPHEMERAL)
        self.assertEqual(result.response[3:], expected)
        self.assertEqual(result.ciphers.handshake_hash, theirs.get_handshake_hash())

    def test_version_bound_by_prologue(self):
        """Changing the cleartext version makes the handshake fail: the prologue binds it."""
        message = bytearray(
            NoiseInitiator(MACHINE_PRIVATE, x25519_public(SERVER_PRIVATE), 133).initiation()
        )
        message[1] = 0x86
        self.assertRaises(HandshakeFailed, NoiseResponder(SERVER_PRIVATE).respond, bytes(message))

    def test_tampered_machine_key(self):
        """A flipped bit in the sealed machine key fails authentication."""
        message = bytearray(
            NoiseInitiator(MACHINE_PRIVATE, x25519_public(SERVER_PRIVATE), 133).initiation()
        )
        message[40] ^= 1
        self.assertRaises(HandshakeFailed, NoiseResponder(SERVER_PRIVATE).respond, bytes(message))

    def test_low_order_ephemeral(self):
        """An all-zero ephemeral key (low-order point) fails the handshake instead of crashing."""
        message = b"\x00\x85\x01\x00\x60" + bytes(96)
        self.assertRaises(HandshakeFailed, NoiseResponder(SERVER_PRIVATE).respond, message)

    def test_refusals(self):
        """Wrong size, type and length are refused with Tailscale's error texts."""
        responder = NoiseResponder(SERVER_PRIVATE)
        good = NoiseInitiator(MACHINE_PRIVATE, responder.public, 133).initiation()
        cases = [
            (good[:100], "wrong handshake initiation size"),
            (good + b"\x00", "wrong handshake initiation size"),
            (good[:2] + b"\x02" + good[3:], "unexpected handshake message type"),
            (good[:3] + b"\x00\x61" + good[5:], "wrong handshake initiation length"),
        ]
        for message, text in cases:
            e = self.assertRaises(HandshakeRefused, responder.respond, message)
            self.assertEqual(str(e), text)

    def test_error_frame(self):
        """An error frame is type 3, BE16 length, text; the initiator surfaces the text."""
        frame = error_frame("no")
        self.assertEqual(frame, b"\x03\x00\x02no")
        initiator = NoiseInitiator(MACHINE_PRIVATE, x25519_public(SERVER_PRIVATE), 133)
        initiator.initiation()
        self.assertEqual(NoiseInitiator.reply_length(frame[:3]), 5)
        e = self.assertRaises(ServerError, initiator.finish, frame)
        self.assertEqual(str(e), "no")

    def test_error_frame_truncated(self):
        """Error texts longer than 65535 bytes are cut so the length fits 16 bits."""
        frame = error_frame("x" * 70000)
        self.assertEqual(frame[1:3], b"\xff\xff")
        self.assertEqual(len(frame), 3 + 0xFFFF)


class NonceTests(unittest.TestCase):
    """The transport nonce is 4 zero bytes then a big-endian counter."""

    def test_nonce_layout(self):
        """Record n is sealed with nonce 00000000 || BE64(n)."""
        key = os.urandom(32)
        cipher = TransportCipher(key)
        cipher.encrypt(b"a")
        sealed = cipher.encrypt(b"b")
        nonce = bytes(4) + (1).to_bytes(8, "big")
        self.assertEqual(ChaCha20Poly1305(key).decrypt(nonce, sealed, None), b"b")

    def test_exhausted(self):
        """The counter value 2**64-1 is never used."""
        cipher = TransportCipher(bytes(32))
        cipher.counter = 2**64 - 1
        self.assertRaises(FrameError, cipher.encrypt, b"x")

    def test_noiseprotocol_first_frame_only(self):
        """noiseprotocol interoperates for frame 1 each way and fails at frame 2 (little-endian nonce)."""
        theirs = _noise_initiator(133)
        message = struct.pack(">HBH", 133, 1, 96) + theirs.write_message()
        result = NoiseResponder(SERVER_PRIVATE).respond(message)
        theirs.read_message(result.response[3:])
        self.assertTrue(theirs.handshake_finished)

        decoder = RecordDecoder(result.ciphers.receive)
        encoder = RecordEncoder(result.ciphers.send)

        sealed = theirs.encrypt(b"first")
        self.assertEqual(decoder.feed(b"\x04" + struct.pack(">H", len(sealed)) + sealed), [b"first"])
        self.assertEqual(theirs.decrypt(encoder.encode(b"one")[3:]), b"one")

        sealed = theirs.encrypt(b"second")
        self.assertRaises(FrameError, decoder.feed, b"\x04" + struct.pack(">H", len(sealed)) + sealed)
        self.assertRaises(Exception, theirs.decrypt, encoder.encode(b"two")[3:])


class RecordTests(unittest.TestCase):
    """Record framing: splitting, reassembly and rejection."""

    def setUp(self):
        client, result = _pair()
        self.client_encoder = RecordEncoder(client.send)
        self.server_decoder = RecordDecoder(result.ciphers.receive)
        self.server_encoder = RecordEncoder(result.ciphers.send)
        self.client_decoder = RecordDecoder(client.receive)

    def test_both_directions(self):
        """Several records flow each way with independent counters."""
        for i in range(3):
            wire = self.client_encoder.encode(b"c%d" % i)
            self.assertEqual(self.server_decoder.feed(wire), [b"c%d" % i])
            wire = self.server_encoder.encode(b"s%d" % i)
            self.assertEqual(self.client_decoder.feed(wire), [b"s%d" % i])

    def test_split_sizes(self):
        """A 10000-byte write becomes records of 4096, 4096 and 1865 bytes on the wire."""
        wire = self.server_encoder.encode(b"z" * 10000)
        sizes = []
        rest = wire
        while rest:
            n = 3 + struct.unpack(">H", rest[1:3])[0]
            sizes.append(n)
            rest = rest[n:]
        self.assertEqual(sizes, [4096, 4096, 1865])
        self.assertEqual(b"".join(self.client_decoder.feed(wire)), b"z" * 10000)

    def test_max_plaintext_one_frame(self):
        """Exactly 4077 plaintext bytes make one maximal 4096-byte record."""
        self.assertEqual(len(self.server_encoder.encode(b"q" * MAX_PLAINTEXT_LEN)), MAX_FRAME_LEN)
        self.assertEqual(self.server_encoder.encode(b""), b"")

    def test_byte_at_a_time(self):
        """Headers and bodies straddling reads are reassembled."""
        wire = self.client_encoder.encode(b"hello") + self.client_encoder.encode(b"world")
        out = []
        for i in range(len(wire)):
            out.extend(self.server_decoder.feed(wire[i : i + 1]))
        self.assertEqual(out, [b"hello", b"world"])

    def test_oversized_header(self):
        """A header announcing more than 4096 bytes is refused before its body arrives."""
        e = self.assertRaises(FrameError, self.server_decoder.feed, b"\x04\x10\x00")
        self.assertIn("4099", str(e))

    def test_wrong_type(self):
        """A frame type other than 4 is refused."""
        e = self.assertRaises(FrameError, self.server_decoder.feed, b"\x03\x00\x10" + bytes(16))
        self.assertIn("type 3", str(e))

    def test_short_frame(self):
        """A record shorter than its tag is refused."""
        self.assertRaises(FrameError, self.server_decoder.feed, b"\x04\x00\x05" + bytes(5))

    def test_bad_tag_poisons(self):
        """After a bad tag the decoder refuses everything, even valid records."""
        wire = bytearray(self.client_encoder.encode(b"hello"))
        wire[-1] ^= 1
        self.assertRaises(FrameError, self.server_decoder.feed, bytes(wire))
        self.assertRaises(FrameError, self.server_decoder.feed, self.client_encoder.encode(b"x"))

    def test_empty_records_skipped(self):
        """Zero-length plaintext records are legal and produce nothing."""
        sealed = self.client_encoder._cipher.encrypt(b"")
        wire = b"\x04\x00\x10" + sealed + self.client_encoder.encode(b"after")
        self.assertEqual(self.server_decoder.feed(wire), [b"after"])

    @settings(max_examples=200, deadline=None)
    @given(st.binary(max_size=300), st.integers(min_value=1, max_value=50))
    def test_random_bytes_only_frame_error(self, data, chunk):
        """Random bytes fed in random chunks raise nothing but FrameError."""
        decoder = RecordDecoder(TransportCipher(bytes(32)))
        try:
            for i in range(0, len(data), chunk):
                decoder.feed(data[i : i + chunk])
        except FrameError:
            pass

    @settings(max_examples=50, deadline=None)
    @given(st.lists(st.binary(max_size=5000), max_size=5), st.integers(min_value=1, max_value=5000))
    def test_any_chunking_same_plaintext(self, writes, chunk):
        """However the wire is cut into reads, the plaintext stream is unchanged."""
        client, result = _pair()
        encoder = RecordEncoder(client.send)
        decoder = RecordDecoder(result.ciphers.receive)
        wire = b"".join(encoder.encode(w) for w in writes)
        out = []
        for i in range(0, len(wire), chunk):
            out.extend(decoder.feed(wire[i : i + chunk]))
        self.assertEqual(b"".join(out), b"".join(writes))


class EarlyPayloadTests(unittest.TestCase):
    """The optional early payload before HTTP/2."""

    def test_layout(self):
        """Magic, BE32 95, then 95 bytes of EarlyNoise JSON: 104 bytes."""
        challenge = bytes(range(32))
        data = encode_early_payload(challenge)
        self.assertEqual(len(data), 104)
        self.assertEqual(data[:9], EARLY_PAYLOAD_MAGIC + b"\x00\x00\x00\x5f")
        self.assertEqual(json.loads(data[9:]), {"nodeKeyChallenge": "chalpub:" + challenge.hex()})

    def test_reader_strips_payload(self):
        """The reader returns the bytes after the payload, fed one byte at a time."""
        data = encode_early_payload(bytes(32)) + b"PRI *"
        reader = EarlyPayloadReader()
        out = b"".join(reader.feed(data[i : i + 1]) for i in range(len(data)))
        self.assertEqual(out, b"PRI *")
        self.assertEqual(reader.early["nodeKeyChallenge"], "chalpub:" + "00" * 32)

    def test_reader_without_payload(self):
        """Without the magic, the first 9 bytes are passed through as HTTP/2."""
        reader = EarlyPayloadReader()
        self.assertEqual(reader.feed(b"\x00\x00\x12\x04"), b"")
        self.assertEqual(reader.feed(b"\x00\x00\x00\x00\x00rest"), b"\x00\x00\x12\x04\x00\x00\x00\x00\x00rest")
        self.assertIsNone(reader.early)

    def test_reader_refuses_huge(self):
        """A payload announcing more than 10 MiB is refused."""
        reader = EarlyPayloadReader()
        self.assertRaises(NoiseError, reader.feed, EARLY_PAYLOAD_MAGIC + struct.pack(">I", 11 << 20))
