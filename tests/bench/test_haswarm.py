"""The failover and chaos drivers' bookkeeping: reconnect delays, gauges, event replay, summaries."""

from __future__ import annotations

import json
import random

from twisted.trial import unittest

from headscale_tw.bench.failover import SwarmEvents, _official_timeline, summary
from headscale_tw.bench.haswarm import parse_connected, retry_delay


class RetryDelayTests(unittest.TestCase):
    """Simulated nodes reconnect at once, then back off to a bounded delay."""

    def test_schedule(self):
        """Attempt 0 waits nothing; later attempts double from 0.25 s, capped at 4 s plus at most 25 %."""
        rng = random.Random(1)
        self.assertEqual(retry_delay(0, rng), 0.0)
        for attempt, base in ((1, 0.25), (2, 0.5), (3, 1.0), (5, 4.0), (12, 4.0)):
            delay = retry_delay(attempt, rng)
            self.assertTrue(base <= delay <= base * 1.25, (attempt, delay))


class ParseConnectedTests(unittest.TestCase):
    """The stream gauge is read from a metrics page."""

    def test_found_and_absent(self):
        """The value of ``headscale_nodes_connected`` is returned, and 0 when the line is missing."""
        page = (b"# HELP headscale_nodes_connected Nodes with at least one map stream\n"
                b"headscale_nodes_connected 17.0\nheadscale_nodes_connected_other 3.0\n")
        self.assertEqual(parse_connected(page), 17)
        self.assertEqual(parse_connected(b"headscale_nodes 4.0\n"), 0)


class SwarmEventsTests(unittest.TestCase):
    """The driver reads the swarm's log incrementally and keeps who streams."""

    def test_incremental_with_noise(self):
        """JSON event lines are parsed across partial reads; other lines are skipped."""
        path = self.mktemp()
        events = SwarmEvents(path)
        with open(path, "w") as f:
            f.write(json.dumps({"event": "up", "index": 1, "t": 1.0}) + "\n")
            f.write("2026-12-04 a Twisted log line\n")
            f.write(json.dumps({"event": "up", "index": 2, "t": 1.1}) + "\n" + '{"event": "lo')
        self.assertEqual([e["index"] for e in events.poll()], [1, 2])
        with open(path, "a") as f:
            f.write('st", "index": 1, "t": 2.0}\n')
            f.write(json.dumps({"event": "gauges", "counts": {"9091": 1}, "t": 2.1}) + "\n")
        self.assertEqual([e["event"] for e in events.poll()], ["lost", "gauges"])
        self.assertEqual(events.streaming, {2})
        self.assertEqual(events.gauges, {"9091": 1})


class OfficialTimelineTests(unittest.TestCase):
    """Official clients are the gauges' streams minus the swarm's, replayed in order."""

    def test_dip_and_recovery(self):
        """After the kill, each gauge reading is paired with the official streams it implies."""
        events = [
            {"event": "up", "index": 0, "t": 0.0},
            {"event": "gauges", "counts": {"a": 2, "b": 1}, "t": 0.5},   # 1 sim + 2 official
            {"event": "lost", "index": 0, "t": 1.01},
            {"event": "gauges", "counts": {"a": 0, "b": 1}, "t": 1.05},  # official: 1
            {"event": "back", "index": 0, "t": 1.3},
            {"event": "gauges", "counts": {"a": 0, "b": 3}, "t": 1.6},   # official: 2
        ]
        self.assertEqual(_official_timeline(events, since=1.0),
                         [(1.05, {"a": 0, "b": 1}, 1), (1.6, {"a": 0, "b": 3}, 2)])


class SummaryTests(unittest.TestCase):
    """Rounds are summarised as percentiles, with unrecovered rounds counted."""

    def test_summary(self):
        """Per-node recoveries are pooled over rounds; a round with no total counts as unrecovered."""
        rounds = [
            {"sim_recovery_s": [0.5, 1.0], "official_recovery_s": 2.0, "all_back_s": 2.1},
            {"sim_recovery_s": [0.7], "official_recovery_s": None, "all_back_s": None},
        ]
        result = summary(rounds)
        self.assertEqual(result["rounds"], 2)
        self.assertEqual(result["unrecovered_rounds"], 1)
        self.assertEqual(result["sim_node"]["n"], 3)
        self.assertEqual(result["sim_node"]["max"], 1.0)
        self.assertEqual(result["official_client_rounds"]["n"], 1)
