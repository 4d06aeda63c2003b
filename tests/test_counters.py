"""Tests for headscale_tw.counters and the map-session counts kept with them."""

from twisted.internet.task import Clock
from twisted.trial import unittest

from headscale_tw.control.framing import PLAIN, FramedMessage
from headscale_tw.control.sessions import MapSession
from headscale_tw.counters import Histogram, HTTPCounters, LabelledHistograms, MapCounters, Stopwatch


class HistogramTests(unittest.TestCase):
    """Observations land in the first bucket whose bound holds them, cumulated as Prometheus exposes them."""

    def test_buckets(self):
        """Values on, between and above the bounds are counted where Prometheus' ``le`` semantics put them."""
        histogram = Histogram((1, 5))
        for value in (0.5, 1, 3, 5, 9):
            histogram.observe(value)
        self.assertEqual(histogram.cumulative(), [("1.0", 2), ("5.0", 4), ("+Inf", 5)])
        self.assertEqual((histogram.count, histogram.sum), (5, 18.5))

    def test_labelled(self):
        """Each label tuple gets its own histogram, made on first use."""
        histograms = LabelledHistograms((1,))
        histograms.observe(("a",), 0.5)
        histograms.observe(("b",), 2)
        histograms.observe(("a",), 3)
        counts = {labels: h.cumulative() for labels, h in histograms.items()}
        self.assertEqual(counts, {("a",): [("1.0", 1), ("+Inf", 2)], ("b",): [("1.0", 0), ("+Inf", 1)]})

    def test_http_counters(self):
        """A request is counted by listener, route, method and status, and timed without the status."""
        counters = HTTPCounters()
        counters.count("control", "/key", "GET", "200", 0.01)
        counters.count("control", "/key", "GET", "404", 0.02)
        self.assertEqual(counters.requests, {("control", "/key", "GET", "200"): 1, ("control", "/key", "GET", "404"): 1})
        self.assertEqual([labels for labels, _ in counters.seconds.items()], [("control", "/key", "GET")])

    def test_stopwatch(self):
        """The stopwatch reads the injected clock."""
        clock = Clock()
        watch = Stopwatch(clock.seconds)
        clock.advance(2.5)
        self.assertEqual(watch.elapsed(), 2.5)


class MapSessionCountTests(unittest.TestCase):
    """A map session counts what it sends (by type and outcome) and why it ended, as Headscale does."""

    def _session(self, write=None, unsent=None, abort=None):
        clock = Clock()
        counters = MapCounters()
        writes = []
        session = MapSession(1, write or writes.append, lambda: None, clock, interval=lambda: 50.0,
                             unsent=unsent, abort=abort, max_unsent=100, encoding=PLAIN, counters=counters)
        return session, counters, clock

    def test_full_change_keepalive_and_done(self):
        """The first message counts as full, a delta as change, an idle gap as keepalive; a client leaving as done."""
        session, counters, clock = self._session()
        session.start(FramedMessage(b"{}"))
        session.send(FramedMessage(b"{}"))
        clock.advance(50)
        session.connection_lost()
        self.assertEqual(counters.sent, {("ok", "full"): 1, ("ok", "change"): 1, ("ok", "keepalive"): 1})
        self.assertEqual(counters.ended, {"done": 1})

    def test_write_error_and_cancel(self):
        """A failing write counts as an error; a stream the server closes counts as cancelled."""

        def broken(data):
            raise OSError("gone")

        session, counters, _ = self._session(write=broken)
        session.start(FramedMessage(b"{}"))
        self.assertEqual(counters.sent, {("error", "full"): 1})
        self.assertEqual(counters.ended, {"done": 1})
        self.flushLoggedErrors(OSError)
        session, counters, _ = self._session()
        session.start(FramedMessage(b"{}"))
        session.close()
        self.assertEqual(counters.ended, {"cancelled": 1})

    def test_slow_client(self):
        """A stream aborted because its client stopped reading ends as slow_client."""
        session, counters, _ = self._session(unsent=lambda: 1000, abort=lambda: None)
        session.start(FramedMessage(b"{}"))
        self.assertEqual(counters.ended, {"slow_client": 1})
