# -*- test-case-name: tests.test_clock -*-
"""Tests for :mod:`headscale_tw.clock`."""

from datetime import datetime, timezone

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from headscale_tw.clock import utc_now

__all__ = ["UtcNowTests"]


class UtcNowTests(SynchronousTestCase):
    """The injected clock's seconds become an aware UTC datetime."""

    def test_follows_clock(self) -> None:
        """The datetime is the clock's time in UTC, and moves when the clock advances."""
        clock = Clock()
        clock.advance(86400 + 1.5)
        self.assertEqual(utc_now(clock), datetime(1970, 1, 2, 0, 0, 1, 500000, tzinfo=timezone.utc))
        clock.advance(60)
        self.assertEqual(utc_now(clock).minute, 1)
