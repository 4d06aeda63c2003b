"""Tests for headscale_tw.derp._frames: byte-for-byte codec checks and fuzzing."""

import random

from nacl.public import PrivateKey
from twisted.trial import unittest

from headscale_tw.derp import _frames as f

KEY_A = bytes(range(32))
KEY_B = bytes(range(32, 64))


class EncodeTests(unittest.TestCase):
    """Frames encode to the exact bytes the Go implementation writes."""

    def test_magic(self):
        """The magic is 'DERP' followed by the UTF-8 key emoji."""
        self.assertEqual(f.MAGIC, "DERP🔑".encode())
        self.assertEqual(f.MAGIC.hex(), "44455250f09f9491")

    def test_server_key(self):
        """ServerKey is type 1, length 40, magic, key."""
        self.assertEqual(f.server_key_frame(KEY_A), b"\x01\x00\x00\x00\x28" + f.MAGIC + KEY_A)

    def test_send_packet(self):
        """SendPacket is type 4, length 32+n, destination key, data."""
        self.assertEqual(f.send_packet_frame(KEY_B, b"hi"), b"\x04\x00\x00\x00\x22" + KEY_B + b"hi")

    def test_recv_packet(self):
        """RecvPacket is type 5 with the source key."""
        self.assertEqual(f.recv_packet_frame(KEY_A, b""), b"\x05\x00\x00\x00\x20" + KEY_A)

    def test_forward_packet(self):
        """ForwardPacket is type 0x0a with source then destination key."""
        self.assertEqual(
            f.forward_packet_frame(KEY_A, KEY_B, b"x"), b"\x0a\x00\x00\x00\x41" + KEY_A + KEY_B + b"x"
        )

    def test_small_frames(self):
        """KeepAlive, NotePreferred, WatchConns, ClosePeer, Ping, Pong, Health, Restarting encode exactly."""
        self.assertEqual(f.keep_alive_frame(), b"\x06\x00\x00\x00\x00")
        self.assertEqual(f.note_preferred_frame(True), b"\x07\x00\x00\x00\x01\x01")
        self.assertEqual(f.note_preferred_frame(False), b"\x07\x00\x00\x00\x01\x00")
        self.assertEqual(f.watch_conns_frame(), b"\x10\x00\x00\x00\x00")
        self.assertEqual(f.close_peer_frame(KEY_A), b"\x11\x00\x00\x00\x20" + KEY_A)
        self.assertEqual(f.ping_frame(b"12345678"), b"\x12\x00\x00\x00\x0812345678")
        self.assertEqual(f.pong_frame(b"12345678"), b"\x13\x00\x00\x00\x0812345678")
        self.assertEqual(f.health_frame("bad"), b"\x14\x00\x00\x00\x03bad")
        self.assertEqual(
            f.restarting_frame(1000, 2000), b"\x15\x00\x00\x00\x08\x00\x00\x03\xe8\x00\x00\x07\xd0"
        )

    def test_peer_gone(self):
        """PeerGone carries the key and a reason byte; a missing reason reads as Disconnected."""
        self.assertEqual(f.peer_gone_frame(KEY_A, f.PeerGoneReason.NOT_HERE), b"\x08\x00\x00\x00\x21" + KEY_A + b"\x01")
        self.assertEqual(f.parse_peer_gone(KEY_A), (KEY_A, 0))
        self.assertEqual(f.parse_peer_gone(KEY_A + b"\x01"), (KEY_A, 1))

    def test_peer_present_ipv4(self):
        """PeerPresent carries a v4-mapped address, big-endian port and flags (51 bytes)."""
        frame = f.peer_present_frame(KEY_A, "192.0.2.1", 443, f.PeerPresentFlags.IS_REGULAR)
        mapped = b"\x00" * 10 + b"\xff\xff" + bytes([192, 0, 2, 1])
        self.assertEqual(frame, b"\x09\x00\x00\x00\x33" + KEY_A + mapped + b"\x01\xbb\x01")
        self.assertEqual(f.parse_peer_present(frame[5:]), (KEY_A, "192.0.2.1", 443, 1))

    def test_peer_present_short(self):
        """A PeerPresent with only a key parses with no address."""
        self.assertEqual(f.parse_peer_present(KEY_A), (KEY_A, None, 0, 0))

    def test_oversized_packet_refused(self):
        """Packets over 64 KiB cannot be encoded."""
        self.assertRaises(f.FrameError, f.send_packet_frame, KEY_A, b"x" * (f.MAX_PACKET_SIZE + 1))

    def test_disco(self):
        """looks_like_disco needs the magic and at least 62 bytes."""
        self.assertTrue(f.looks_like_disco(f.DISCO_MAGIC + b"\x00" * 56))
        self.assertFalse(f.looks_like_disco(f.DISCO_MAGIC + b"\x00" * 55))
        self.assertFalse(f.looks_like_disco(b"x" * 100))


class InfoTests(unittest.TestCase):
    """ClientInfo and ServerInfo boxes open with the right keys only."""

    def test_client_info_round_trip(self):
        """The server opens a ClientInfo sealed by the client, with a fixed nonce layout."""
        server, client = PrivateKey.generate(), PrivateKey.generate()
        nonce = b"n" * 24
        frame = f.client_info_frame(client, bytes(server.public_key), {"version": 2, "CanAckPings": True}, nonce)
        self.assertEqual(frame[0], 2)
        payload = frame[5:]
        self.assertEqual(payload[:32], bytes(client.public_key))
        self.assertEqual(payload[32:56], nonce)
        self.assertEqual(len(payload), 32 + 24 + 16 + len(b'{"version":2,"CanAckPings":true}'))
        key, info = f.open_client_info(server, payload)
        self.assertEqual((key, info), (bytes(client.public_key), {"version": 2, "CanAckPings": True}))

    def test_client_info_wrong_key(self):
        """A ClientInfo sealed to another server does not open."""
        server, other, client = PrivateKey.generate(), PrivateKey.generate(), PrivateKey.generate()
        frame = f.client_info_frame(client, bytes(other.public_key), {"version": 2})
        self.assertRaises(f.FrameError, f.open_client_info, server, frame[5:])

    def test_client_info_short(self):
        """A ClientInfo shorter than key + nonce is an error."""
        self.assertRaises(f.FrameError, f.open_client_info, PrivateKey.generate(), b"x" * 55)

    def test_server_info_round_trip(self):
        """ServerInfo defaults to {"version": 2}."""
        server, client = PrivateKey.generate(), PrivateKey.generate()
        frame = f.server_info_frame(server, bytes(client.public_key))
        self.assertEqual(
            f.open_server_info(client, bytes(server.public_key), frame[5:]), {"version": 2}
        )


class DecoderTests(unittest.TestCase):
    """The incremental decoder."""

    def test_byte_at_a_time(self):
        """Frames fed one byte at a time come out whole and in order."""
        stream = f.send_packet_frame(KEY_A, b"abc") + f.keep_alive_frame() + f.ping_frame(b"12345678")
        d = f.FrameDecoder()
        out = []
        for i in range(len(stream)):
            d.feed(stream[i : i + 1])
            out.extend(d.frames())
        self.assertEqual(
            out,
            [(4, KEY_A + b"abc"), (6, b""), (0x12, b"12345678")],
        )
        self.assertEqual(d.buffered, 0)

    def test_limit_checked_on_header(self):
        """An oversized length fails as soon as the header arrives, naming the type and limit."""
        d = f.FrameDecoder(limits=f.SERVER_FRAME_LIMITS)
        d.feed(b"\x04\x00\x01\x00\x21")
        e = self.assertRaises(f.FrameError, list, d.frames())
        self.assertIn("0x04", str(e))
        self.assertIn("65568", str(e))
        self.assertRaises(f.FrameError, list, d.frames())

    def test_unknown_types_pass(self):
        """Unknown frame types are returned for the caller to skip."""
        d = f.FrameDecoder()
        d.feed(b"\x7f\x00\x00\x00\x02hi")
        self.assertEqual(list(d.frames()), [(0x7F, b"hi")])

    def test_fuzz(self):
        """Random bytes produce frames or FrameError, never another exception."""
        rng = random.Random(1234)
        parsers = [
            f.parse_packet, f.parse_forward_packet, f.parse_note_preferred, f.parse_peer_gone,
            f.parse_peer_present, f.parse_close_peer, f.parse_ping, f.parse_restarting, f.parse_server_key,
        ]
        server = PrivateKey.generate()
        for _ in range(3000):
            blob = bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 80)))
            if rng.random() < 0.5 and blob:
                blob = bytes([rng.choice([1, 2, 4, 7, 8, 9, 10, 0x11, 0x12])]) + b"\x00\x00\x00" + blob[1:]
            d = f.FrameDecoder(limits=f.SERVER_FRAME_LIMITS)
            try:
                d.feed(blob)
                for frame in d.frames():
                    for parse in parsers:
                        try:
                            parse(frame.payload)
                        except f.FrameError:
                            pass
                    try:
                        f.open_client_info(server, frame.payload)
                    except f.FrameError:
                        pass
            except f.FrameError:
                pass
