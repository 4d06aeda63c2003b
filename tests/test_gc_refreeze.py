"""Tests for :mod:`headscale_tw.gc_refreeze`."""

from __future__ import annotations

import gc
import weakref

from twisted.internet.task import Clock
from twisted.trial import unittest

from headscale_tw.gc_refreeze import GcRefreezer, refreeze


class GcRefreezerTests(unittest.TestCase):
    """The re-freeze runs from the clock, only once the heap has grown enough."""

    def setUp(self):
        self.clock = Clock()
        self.blocks = 1000
        self.calls = 0
        self.full = []

    def _collector(self, full):
        self.calls += 1
        self.full.append(full)
        return 1234, 7

    def _refreezer(self, **kwargs):
        kwargs.setdefault("max_interval", None)
        refreezer = GcRefreezer(self.clock, check_every=10, growth_factor=2,
                                blocks=lambda: self.blocks, collector=self._collector, **kwargs)
        refreezer.startService()
        self.addCleanup(refreezer.stopService)
        return refreezer

    def test_no_refreeze_below_growth(self):
        """Growth below the factor leaves the heap alone, however many checks run."""
        refreezer = self._refreezer()
        self.blocks = 1999
        self.clock.pump([10] * 20)
        self.assertEqual((self.calls, refreezer.refreezes), (0, 0))

    def test_refreeze_once_grown(self):
        """Doubling triggers one re-freeze at the next tick; the baseline then moves up."""
        refreezer = self._refreezer()
        self.blocks = 2000
        self.clock.advance(9)
        self.assertEqual(self.calls, 0)
        self.clock.advance(1)
        self.assertEqual(self.calls, 1)
        self.assertEqual((refreezer.frozen, refreezer.collected, refreezer.baseline), (1234, 7, 2000))
        self.clock.pump([10] * 5)
        self.assertEqual(self.calls, 1)
        self.blocks = 4000
        self.clock.advance(10)
        self.assertEqual((self.calls, refreezer.refreezes, refreezer.collected), (2, 2, 14))

    def test_max_interval(self):
        """With any growth, a full pass happens after ``max_interval`` even below the factor; growth alone is not full."""
        refreezer = self._refreezer(max_interval=100)
        self.blocks = 2000
        self.clock.advance(10)
        self.assertEqual(self.full, [False], "growth before max_interval: new objects only")
        self.clock.pump([10] * 20)
        self.assertEqual(self.calls, 1, "no growth, no re-freeze")
        self.blocks = 2001
        self.clock.advance(10)
        self.assertEqual(self.full, [False, True])
        self.assertEqual(refreezer.full_passes, 1)

    def test_stop_cancels_timer(self):
        """Stopping the service leaves no pending call."""
        refreezer = self._refreezer()
        refreezer.stopService()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_bad_arguments(self):
        """Nonsense settings are refused with the name of what is wrong."""
        with self.assertRaisesRegex(ValueError, "growth_factor"):
            GcRefreezer(self.clock, growth_factor=1)
        with self.assertRaisesRegex(ValueError, "check_every"):
            GcRefreezer(self.clock, check_every=0)

    def test_refreeze_collects_frozen_garbage(self):
        """A cycle frozen while alive and dropped later survives collections until :func:`refreeze`."""
        class Node:
            pass
        node = Node()
        node.me = node
        alive = weakref.ref(node)
        self.addCleanup(gc.unfreeze)  # the runner's own heap is not left frozen
        gc.freeze()
        del node
        gc.collect()
        self.assertIsNotNone(alive(), "frozen garbage is not collected by an ordinary collection")
        frozen, collected = refreeze()
        self.assertIsNone(alive())
        self.assertGreaterEqual(collected, 1)
        self.assertEqual(frozen, gc.get_freeze_count())
