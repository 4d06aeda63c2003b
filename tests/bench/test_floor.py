"""The machine's floor: bare Noise connections carry whole frames and replies; ratios compare like with like."""

from __future__ import annotations

from twisted.internet.defer import ensureDeferred
from twisted.internet.task import Clock
from twisted.test.iosim import connectedServerAndClient
from twisted.trial import unittest

from headscale_tw.bench.floor import FloorServer, _FloorConnection, _FloorStream, ratio
from headscale_tw.bench.scenarios import floor_ratios


class FloorConnectionTests(unittest.TestCase):
    """One floor connection: the real Noise handshake, records both ways, frames reassembled."""

    def setUp(self):
        self.server = FloorServer(Clock(), reply_bytes=3000)
        self.stream, self.connection, self.pump = connectedServerAndClient(
            lambda: _FloorConnection(self.server), lambda: _FloorStream(self.server.public_key))
        self.pump.flush()

    def test_handshake_establishes(self):
        """After the handshake the client is ready and the server counts the connection as established."""
        self.assertTrue(self.stream.ready.called)
        self.assertEqual(self.server.established, {self.connection})

    def test_fanout_frame_arrives_whole(self):
        """A frame larger than one record (10,000 bytes: three records) is counted once, with its size."""
        written = self.successResultOf(ensureDeferred(self.server.call("fanout", nbytes=10_000)))
        self.assertEqual(written["connections"], 1)
        self.pump.flush()
        self.assertEqual([size for _, size in self.stream.frames], [10_000])

    def test_request_gets_one_reply(self):
        """A request record is answered with one reply (the login floor's round trip)."""
        replied = self.stream.request(b"q" * 1024)
        self.assertNoResult(replied)
        self.pump.flush()
        self.successResultOf(replied)
        self.assertEqual(self.stream.frames, [])

    def test_garbage_record_closes_only_that_connection(self):
        """A record that fails authentication aborts the connection and forgets it."""
        self.connection.dataReceived(b"\x04\x00\x20" + b"\x00" * 32)
        self.pump.flush()
        self.assertEqual(self.server.established, set())


class RatioTests(unittest.TestCase):
    """Ratios say how many times the floor a figure is."""

    def test_latency_ratio(self):
        """A latency is divided by the floor's."""
        self.assertEqual(ratio(300.0, 100.0), 3.0)

    def test_rate_ratio_is_times_slower(self):
        """A rate is the floor's divided by ours: 2.0 means half the floor's rate."""
        self.assertEqual(ratio(100.0, 200.0, rate=True), 2.0)

    def test_missing_figure_gives_none(self):
        """No measurement (or a zero floor) gives no ratio rather than a division error."""
        self.assertIsNone(ratio(None, 100.0))
        self.assertIsNone(ratio(10.0, 0))

    def test_each_change_uses_the_floor_of_its_frame_size(self):
        """Changes are compared with the fan-out of their own frame size; registrations with the login loop."""
        run = {
            "connect": {"registrations_per_s": 100.0},
            "endpoint_change": {"p99_ms": 60.0, "bytes_per_stream": 300, "streams": 99},
            "hub_join": {"p99_ms": 500.0, "bytes_per_stream": 2000, "streams": 100},
        }
        floor = {"connections": 100, "logins": {"per_s": 400.0},
                 "fanout": {"300": {"p99_ms": 20.0}, "2000": {"p99_ms": 50.0}}}
        self.assertEqual(floor_ratios(run, floor),
                         {"registrations": 4.0, "endpoint_change_p99": 3.0, "hub_join_p99": 10.0})

    def test_changes_seen_by_a_group_get_no_ratio(self):
        """A change that reaches one group, not every stream, is not compared with a fan-out to all."""
        run = {"connect": {"registrations_per_s": 100.0},
               "endpoint_change": {"p99_ms": 60.0, "bytes_per_stream": 300, "streams": 9}}
        floor = {"connections": 100, "logins": {"per_s": 400.0}, "fanout": {"300": {"p99_ms": 20.0}}}
        self.assertEqual(floor_ratios(run, floor), {"registrations": 4.0})
