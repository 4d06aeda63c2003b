"""Tests for headscale_tw.control.plane."""

from twisted.internet.task import Clock
from twisted.trial import unittest

from headscale_tw.config.model import Config
from headscale_tw.control.plane import ControlPlane
from headscale_tw.testing.db import open_test_database, resolve
from headscale_tw.web.plane_resources import machine_resource, register_page


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
        self.assertIsNotNone(machine_resource(plane).children_by_name[b"map"])
        self.assertIsNotNone(register_page(plane.registrar))
        plane.stop()
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_ephemeral_sweep_follows_timeout(self):
        """The ephemeral sweep runs at half the inactivity timeout, between 1 and 30 seconds."""
        import dataclasses

        from headscale_tw.config.model import NodeConfig

        def interval(timeout):
            config = dataclasses.replace(Config(), node=NodeConfig(ephemeral_inactivity_timeout=timeout))
            plane = ControlPlane(config, open_test_database(self), Clock())
            resolve(plane.start())
            intervals = [i for i, _ in plane.periodic_jobs()]
            self.assertIn(plane._ephemeral_sweep_interval(), intervals)
            return plane._ephemeral_sweep_interval()

        self.assertEqual(interval(4.0), 2.0)
        self.assertEqual(interval(1.0), 1.0)
        self.assertEqual(interval(3600.0), 30.0)
