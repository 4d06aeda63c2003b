# -*- test-case-name: tests.control.test_compress -*-
"""
Tests for ``MapRequest.Compress``: map frames are zstd only when the client asked.

A client that omits ``Compress`` gets the same LE32 framing around plain JSON,
for the full map, deltas and keep-alives, through the notifier and through
``POST /machine/map``; streams of both kinds share one frame per encoding.
"""

import json
import os

from twisted.trial import unittest

from headscale_tw.control.framing import PLAIN, ZSTD, FrameDecoder
from headscale_tw.control.poll import parse_map_request
from headscale_tw.errors import InvalidInput
from headscale_tw.testing.netmap import NetmapApplier
from headscale_tw.web.control_api import MachineResource
from tests.control._harness import Harness, key
from tests.control.test_control_api import _render, _Request

__all__ = ["MapRequestCompressTests", "UncompressedStreamTests", "SharedFramesTests", "MapResourceCompressTests"]

_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


def _bodies(data: bytes) -> list[bytes]:
    """Split a stream of LE32-framed messages into their bodies, checking every length."""
    out, at = [], 0
    while at < len(data):
        size = int.from_bytes(data[at : at + 4], "little")
        body = data[at + 4 : at + 4 + size]
        if size == 0 or len(body) != size:
            raise AssertionError(f"frame at {at} claims {size} bytes, {len(body)} follow")
        out.append(body)
        at += 4 + size
    return out


class MapRequestCompressTests(unittest.TestCase):
    """``parse_map_request`` reads ``Compress`` the way Headscale does."""

    def _parse(self, **extra):
        return parse_map_request(dict({"Version": 133, "NodeKey": key("nodekey")}, **extra))

    def test_zstd_asked(self):
        """``"Compress": "zstd"`` asks for zstd frames."""
        self.assertEqual(self._parse(Compress="zstd").compress, ZSTD)

    def test_absent_or_other(self):
        """No ``Compress``, an empty one or an unknown algorithm gets uncompressed frames."""
        self.assertEqual(self._parse().compress, PLAIN)
        self.assertEqual(self._parse(Compress="").compress, PLAIN)
        self.assertEqual(self._parse(Compress="br").compress, PLAIN)

    def test_official_client_request(self):
        """The streaming MapRequest captured from the official client (1.96.4) asks for zstd."""
        with open(os.path.join(os.path.dirname(__file__), "data", "map-request-stream.json")) as f:
            body = json.load(f)["body"]
        self.assertEqual(parse_map_request(body).compress, ZSTD)

    def test_not_a_string(self):
        """A non-string ``Compress`` is refused with an error naming the field."""
        e = self.assertRaises(InvalidInput, self._parse, Compress=1)
        self.assertIn("Compress", str(e))


class UncompressedStreamTests(unittest.TestCase):
    """A stream whose client omitted ``Compress`` carries plain JSON frames."""

    def setUp(self):
        self.h = Harness(self)
        self.a, _ = self.h.register("a")
        self.b, _ = self.h.register("b")
        self.sa = self.h.stream(self.a)
        self.sb = self.h.stream(self.b, Compress=None)

    def test_full_map_and_deltas(self):
        """Full map, endpoint patch, Hostinfo change and keep-alive are all well-formed plain JSON frames."""
        self.assertEqual(self.sb.session.encoding, PLAIN)
        self.h.lite(self.h.state.get(self.a.id), Endpoints=["192.0.2.9:41641"])
        node = self.h.state.get(self.a.id)
        self.h.lite(node, Hostinfo=dict(node.hostinfo, OSVersion="7.0"))
        self.h.clock.advance(60)
        data = b"".join(self.sb.writes)
        bodies = _bodies(data)
        self.assertGreaterEqual(len(bodies), 4)
        messages = [json.loads(body) for body in bodies]
        self.assertEqual(messages[0]["Node"]["ID"], self.b.id)
        self.assertIn({"KeepAlive": True}, messages)
        for body in bodies:
            self.assertFalse(body.startswith(_ZSTD_MAGIC))
        applier = self.sb.applier  # decoded as plain and applied like tailscaled would
        self.assertEqual(applier.peers[self.a.id]["Endpoints"], ["192.0.2.9:41641"])
        self.assertEqual(applier.peers[self.a.id]["Hostinfo"]["OSVersion"], "7.0")

    def test_compressed_stream_unchanged(self):
        """The stream that asked for zstd still gets zstd frames only."""
        self.h.lite(self.h.state.get(self.b.id), Endpoints=["192.0.2.7:41641"])
        for body in _bodies(b"".join(self.sa.writes)):
            self.assertTrue(body.startswith(_ZSTD_MAGIC))
        self.assertEqual(self.sa.applier.peers[self.b.id]["Endpoints"], ["192.0.2.7:41641"])

    def test_one_shot(self):
        """A one-shot full map is plain when asked plain and zstd when asked zstd."""
        plain = self.h.notifier.one_shot(self.a.id, PLAIN)
        self.assertEqual(json.loads(_bodies(plain)[0])["Node"]["ID"], self.a.id)
        self.assertEqual(FrameDecoder(ZSTD).feed(self.h.notifier.one_shot(self.a.id, ZSTD))[0]["Node"]["ID"],
                         self.a.id)


class SharedFramesTests(unittest.TestCase):
    """Each encoding of a change is built at most once, and only when a stream needs it."""

    N = 6

    def _setup(self, plain: int):
        h = Harness(self)
        nodes = [h.register(f"n{i}")[0] for i in range(self.N)]
        streams = [h.stream(n, Compress=None if i < plain else "zstd") for i, n in enumerate(nodes)]
        h.notifier.frames_built = 0
        return h, nodes, streams

    def _change(self, h, nodes):
        h.lite(h.state.get(nodes[-1].id), Endpoints=["192.0.2.1:1"])

    def test_mixed(self):
        """With both kinds of stream, one change builds two frames: one zstd, one plain."""
        h, nodes, streams = self._setup(plain=3)
        self._change(h, nodes)
        self.assertEqual(h.notifier.frames_built, 2)
        for stream in streams[:-1]:
            self.assertEqual(stream.applier.peers[nodes[-1].id]["Endpoints"], ["192.0.2.1:1"])

    def test_one_encoding_only(self):
        """With only zstd or only plain streams, one change builds one frame."""
        for plain in (0, self.N):
            h, nodes, _ = self._setup(plain=plain)
            self._change(h, nodes)
            self.assertEqual(h.notifier.frames_built, 1, plain)

    def test_plain_only_shares_bytes(self):
        """Plain streams receive the very same bytes object for a shared delta."""
        h, nodes, streams = self._setup(plain=self.N)
        self._change(h, nodes)
        last = [s.writes[-1] for s in streams[:-1]]
        self.assertTrue(all(w is last[0] for w in last))


class MapResourceCompressTests(unittest.TestCase):
    """``POST /machine/map`` without ``Compress`` answers uncompressed frames."""

    def setUp(self):
        self.h = Harness(self)
        self.root = MachineResource(self.h.registrar, self.h.poll, self.h.notifier, identify=lambda r: r.identity)
        self.mkey = key("mkey")

    def _post(self, path, body):
        return _render(self.root, _Request(path, json.dumps(body).encode(), (self.mkey, 133)))

    def test_stream_without_compress(self):
        """A streaming request that omits Compress gets a plain-JSON full map, then plain deltas."""
        node, _ = self.h.register("a", machine_key=self.mkey)
        other, _ = self.h.register("b")
        body = self.h.map_request(node, Stream=True)
        del body["Compress"]
        stream = self._post(b"/machine/map", body)
        self.assertEqual(stream.responseCode, 200)
        self.assertFalse(stream.finished)
        self.h.lite(self.h.state.get(other.id), Endpoints=["192.0.2.3:3"])
        applier = NetmapApplier(PLAIN)
        applier.feed(b"".join(stream.written))
        self.assertEqual(applier.node["Name"].split(".")[0], "a")
        self.assertEqual(applier.peers[other.id]["Endpoints"], ["192.0.2.3:3"])

    def test_one_shot_without_compress(self):
        """A non-streaming request that omits Compress gets one plain-JSON full map."""
        node, _ = self.h.register("a", machine_key=self.mkey)
        body = self.h.map_request(node)
        del body["Compress"]
        request = self._post(b"/machine/map", body)
        (message,) = [json.loads(b) for b in _bodies(b"".join(request.written))]
        self.assertEqual(message["Node"]["ID"], node.id)
