# -*- test-case-name: tests.config.test_durations -*-
"""Tests for headscale_tw.config._durations."""

from twisted.trial import unittest

from headscale_tw.config._durations import DurationError, format_duration, parse_duration

__all__ = ["ParseDurationTests", "FormatDurationTests"]


class ParseDurationTests(unittest.TestCase):
    """Go- and Prometheus-style duration text becomes seconds."""

    def test_go_units(self):
        """Single Go units convert to seconds."""
        self.assertEqual(parse_duration("30m"), 1800.0)
        self.assertEqual(parse_duration("90s"), 90.0)
        self.assertEqual(parse_duration("3h"), 10800.0)
        self.assertAlmostEqual(parse_duration("300ms"), 0.3)
        self.assertAlmostEqual(parse_duration("5us"), 5e-6)

    def test_compound(self):
        """Several number-unit groups add up, as in Go."""
        self.assertEqual(parse_duration("1h30m"), 5400.0)
        self.assertEqual(parse_duration("1h0m10s"), 3610.0)

    def test_fraction(self):
        """A decimal number is allowed before a unit."""
        self.assertEqual(parse_duration("1.5h"), 5400.0)

    def test_days_weeks_years(self):
        """Prometheus' d, w and y units (used for node.expiry) are accepted."""
        self.assertEqual(parse_duration("180d"), 180 * 86400.0)
        self.assertEqual(parse_duration("1w"), 7 * 86400.0)
        self.assertEqual(parse_duration("1y"), 365 * 86400.0)

    def test_zero_and_plain_seconds(self):
        """"0", integers and numeric strings are seconds."""
        self.assertEqual(parse_duration("0"), 0.0)
        self.assertEqual(parse_duration(0), 0.0)
        self.assertEqual(parse_duration(45), 45.0)
        self.assertEqual(parse_duration("120"), 120.0)
        self.assertEqual(parse_duration(2.5), 2.5)

    def test_negative(self):
        """A leading minus gives a negative value; callers decide whether that is allowed."""
        self.assertEqual(parse_duration("-5m"), -300.0)

    def test_rejects_garbage(self):
        """Text that is not a duration raises DurationError naming the value."""
        for bad in ("", "abc", "5 minutes", "1h30", "m", "1x", True, [1], None):
            self.assertRaises(DurationError, parse_duration, bad)
        e = self.assertRaises(DurationError, parse_duration, "10 parsecs")
        self.assertIn("10 parsecs", str(e))


class FormatDurationTests(unittest.TestCase):
    """Seconds are shown the way Headscale's example config writes them."""

    def test_examples(self):
        """Common values round to Go-style text."""
        self.assertEqual(format_duration(0), "0")
        self.assertEqual(format_duration(1800), "30m")
        self.assertEqual(format_duration(5400), "1h30m")
        self.assertEqual(format_duration(65), "1m5s")
        self.assertEqual(format_duration(0.5), "500ms")
        self.assertEqual(format_duration(168 * 3600), "168h")

    def test_round_trip(self):
        """Formatting then parsing gives the same number of seconds."""
        for seconds in (1, 59, 61, 3600, 86400, 90061, 0.25):
            self.assertAlmostEqual(parse_duration(format_duration(seconds)), seconds)
