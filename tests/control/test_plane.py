"""Tests for headscale_tw.control.plane."""

from twisted.internet.task import Clock
from twisted.trial import unittest

from headscale_tw.config.model import Config
from headscale_tw.control.plane import ControlPlane
from headscale_tw.testing.db import open_test_database, resolve


class ControlPlaneTests(unittest.TestCase):
    """The builder wires every part and its jobs run cleanly."""

    def test_build_start_jobs_stop(self):
        """A plane starts on an empty store, runs its jobs and stops with no timers left."""
        clock = Clock()
        clock.advance(1_800_000_000)
        plane = ControlPlane(Config(), open_test_database(self), clock)
        resolve(plane.start())
        for interval, job in plane.periodic_jobs():
            self.assertGreater(interval, 0)
            self.successResultOf(job())
        self.assertIsNotNone(plane.machine_resource().children_by_name[b"map"])
        self.assertIsNotNone(plane.register_page())
        plane.stop()
        self.assertEqual(clock.getDelayedCalls(), [])
