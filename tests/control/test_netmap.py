"""Tests for the framing codec and the client-side netmap applier."""

from twisted.trial import unittest

from headscale_tw.control.framing import (
    KEEPALIVE_FRAME,
    KEEPALIVE_FRAMES,
    PLAIN,
    FrameDecoder,
    FramedMessage,
    FramingError,
    frame_json,
)
from headscale_tw.testing.netmap import NetmapApplier, ProtocolViolation

_NODE = {"ID": 1, "StableID": "n1", "Name": "a.t.", "Key": "nodekey:" + "1" * 64,
         "Addresses": ["100.64.0.1/32"], "MachineAuthorized": True}


def _peer(i, **extra):
    return dict({"ID": i, "Key": f"nodekey:{i:064x}", "Endpoints": []}, **extra)


class FramingTests(unittest.TestCase):
    """LE32 + independent zstd frames."""

    def test_roundtrip_byte_by_byte(self):
        """Messages fed one byte at a time decode in order."""
        data = frame_json({"A": 1}) + KEEPALIVE_FRAME + frame_json({"B": [1, 2]})
        decoder = FrameDecoder()
        out = []
        for i in range(len(data)):
            out.extend(decoder.feed(data[i : i + 1]))
        self.assertEqual(out, [{"A": 1}, {"KeepAlive": True}, {"B": [1, 2]}])
        self.assertEqual(decoder.pending, 0)

    def test_length_is_little_endian(self):
        """The 4-byte prefix is the little-endian size of the zstd frame."""
        data = frame_json({"A": 1})
        self.assertEqual(int.from_bytes(data[:4], "little"), len(data) - 4)
        self.assertEqual(data[4:8], b"\x28\xb5\x2f\xfd")

    def test_bad_input(self):
        """Zero length and non-zstd bodies raise FramingError."""
        self.assertRaises(FramingError, FrameDecoder().feed, b"\0\0\0\0")
        self.assertRaises(FramingError, FrameDecoder().feed, b"\3\0\0\0abc")

    def test_plain_roundtrip(self):
        """Uncompressed frames carry the JSON itself after the same LE32 length."""
        data = frame_json({"A": 1}, PLAIN) + KEEPALIVE_FRAMES[PLAIN]
        self.assertEqual(data[:11], b"\x07\0\0\0{\"A\":1}")
        decoder = FrameDecoder(PLAIN)
        out = []
        for i in range(len(data)):
            out.extend(decoder.feed(data[i : i + 1]))
        self.assertEqual(out, [{"A": 1}, {"KeepAlive": True}])

    def test_encoding_mismatch(self):
        """A plain decoder rejects a zstd frame and a zstd decoder rejects plain JSON."""
        self.assertRaises(FramingError, FrameDecoder(PLAIN).feed, frame_json({"A": 1}))
        self.assertRaises(FramingError, FrameDecoder().feed, frame_json({"A": 1}, PLAIN))

    def test_framed_message_builds_once(self):
        """A FramedMessage builds each encoding once, on first use, and reports every build."""
        built = []
        message = FramedMessage(b'{"A":1}', built.append)
        self.assertEqual(built, [])
        first = message.framed(PLAIN)
        self.assertIs(message.framed(PLAIN), first)
        message.framed("zstd")
        message.framed("zstd")
        self.assertEqual(built, [PLAIN, "zstd"])


class NetmapApplierTests(unittest.TestCase):
    """The applier follows the client's delta rules."""

    def test_first_needs_node(self):
        """A first message without Node is rejected like tailscaled does."""
        self.assertRaises(ProtocolViolation, NetmapApplier().apply, {"Peers": []})

    def test_keepalive_before_first(self):
        """Keep-alives before the first map are fine."""
        applier = NetmapApplier()
        applier.apply({"KeepAlive": True})
        applier.apply({"Node": _NODE})
        self.assertEqual(applier.keepalives, 1)

    def test_deltas(self):
        """Removed, changed, online and patch deltas apply in the documented order."""
        applier = NetmapApplier()
        applier.apply({"Node": _NODE, "Peers": [_peer(2), _peer(3)], "PacketFilter": []})
        applier.apply({"PeersRemoved": [3], "PeersChanged": [_peer(4)]})
        applier.apply({"OnlineChange": {"2": True}, "PeersChangedPatch": [{"NodeID": 2, "Endpoints": ["1.2.3.4:5"], "DERPRegion": 7}]})
        applier.apply({"Peers": []})  # empty Peers never clears
        self.assertEqual(sorted(applier.peers), [2, 4])
        self.assertEqual(applier.peers[2]["Endpoints"], ["1.2.3.4:5"])
        self.assertEqual(applier.peers[2]["HomeDERP"], 7)
        self.assertTrue(applier.peers[2]["Online"])
        self.assertEqual(applier.packet_filter, [])

    def test_unsorted_peers(self):
        """Unsorted Peers are a violation."""
        self.assertRaises(ProtocolViolation, NetmapApplier().apply, {"Node": _NODE, "Peers": [_peer(3), _peer(2)]})
