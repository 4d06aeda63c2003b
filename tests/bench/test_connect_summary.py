"""The connect step's summary: registrations/s and the median time of each login step."""

from __future__ import annotations

from twisted.trial import unittest

from headscale_tw.bench.load import connect_summary


class ConnectSummaryTests(unittest.TestCase):
    """Per-step medians are read from the nodes' timestamps; nodes that did not get that far are left out."""

    def test_step_medians(self):
        """Three nodes: each step's median in milliseconds; a node without a map counts only where it has both ends."""
        result = {
            "start": [0.0, 1.0, 2.0],
            "key": [0.010, 1.020, 2.030],
            "noise": [0.030, 1.050, 2.070],
            "registered": [0.080, 1.150, 2.170],
            "map": [0.100, 1.180, None],
            "full_map_bytes": [100, 100, None],
            "errors": ["node 2: no map"],
        }
        summary = connect_summary(result, 3)
        self.assertEqual(summary["steps_p50_ms"],
                         {"key": 20.0, "noise": 30.0, "register": 100.0, "to_full_map": 20.0})
        self.assertEqual(summary["registered"], 3)
        self.assertIsNone(summary["all_maps_s"])

    def test_without_key_times(self):
        """A result without key timestamps (an older worker) leaves those steps out as None."""
        result = {"start": [0.0], "noise": [0.05], "registered": [0.1], "map": [0.2],
                  "full_map_bytes": [10], "errors": []}
        steps = connect_summary(result, 1)["steps_p50_ms"]
        self.assertEqual((steps["key"], steps["noise"], steps["register"]), (None, None, 50.0))
