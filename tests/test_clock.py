# -*- test-case-name: tests.test_clock -*-
"""Tests for :mod:`headscale_tw.clock`."""

from datetime import datetime, timedelta, timezone

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from headscale_tw.clock import as_utc, utc_from_seconds, utc_now

__all__ = ["UtcNowTests", "ConversionTests"]


class UtcNowTests(SynchronousTestCase):
    """The injected clock's seconds become an aware UTC datetime."""

    def test_follows_clock(self) -> None:
        """The datetime is the clock's time in UTC, and moves when the clock advances."""
        clock = Clock()
        clock.advance(86400 + 1.5)
        self.assertEqual(utc_now(clock), datetime(1970, 1, 2, 0, 0, 1, 500000, tzinfo=timezone.utc))
        clock.advance(60)
        self.assertEqual(utc_now(clock).minute, 1)


class ConversionTests(SynchronousTestCase):
    """Seconds and foreign datetimes become aware UTC datetimes."""

    def test_from_seconds(self) -> None:
        """Epoch seconds (with a fraction) become the same instant in UTC."""
        self.assertEqual(utc_from_seconds(86400.25), datetime(1970, 1, 2, 0, 0, 0, 250000, tzinfo=timezone.utc))

    def test_as_utc(self) -> None:
        """A naive datetime is read as UTC; an aware one is moved to UTC keeping its instant."""
        naive = datetime(2030, 1, 2, 3, 4, 5)
        self.assertEqual(as_utc(naive), naive.replace(tzinfo=timezone.utc))
        plus_two = timezone(timedelta(hours=2))
        converted = as_utc(datetime(2030, 1, 2, 5, 4, 5, tzinfo=plus_two))
        self.assertEqual((converted, converted.tzinfo), (naive.replace(tzinfo=timezone.utc), timezone.utc))
