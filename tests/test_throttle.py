# -*- test-case-name: tests.test_throttle -*-
"""Tests for headscale_tw.throttle: token buckets per source, bounded, summarized, on a Clock."""

from __future__ import annotations

__all__ = ["SourceKeyTests", "FailureThrottleTests", "AttemptTests", "SummaryTests", "GuardedTests"]

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial import unittest

from headscale_tw.throttle import (
    CLEAN_SOURCE_IN_FLIGHT,
    PREAUTH_KEYS,
    SUMMARY_LINES,
    AuthThrottles,
    FailureThrottle,
    Throttled,
    ThrottleSettings,
    guarded,
    source_key,
)

SMALL = ThrottleSettings("test_key", "test keys", burst=3, per_second=0.5, max_sources=4)


def _captured(testcase) -> list[dict]:
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    testcase.addCleanup(globalLogPublisher.removeObserver, events.append)
    return events


def _summaries(events):
    return [e for e in events if e.get("kind") == "test_key"]


class SourceKeyTests(unittest.TestCase):
    """Addresses fall into per-host buckets."""

    def test_keys(self):
        """IPv4 is per address, IPv6 per /64, anything else is its own bucket."""
        self.assertEqual(source_key("192.0.2.1"), "192.0.2.1")
        self.assertEqual(source_key("2001:db8:1:2:aaaa::1"), "2001:db8:1:2::/64")
        self.assertEqual(source_key("2001:db8:1:2:bbbb::9"), "2001:db8:1:2::/64")
        self.assertEqual(source_key("local"), "local")


class FailureThrottleTests(unittest.TestCase):
    """The token bucket engages past the burst, refills with time and touches no other source."""

    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1_000)
        self.throttle = FailureThrottle(SMALL, self.clock)

    def fail(self, address, n=1):
        for _ in range(n):
            self.throttle.check(address)
            self.throttle.record_failure(address)

    def test_burst_then_throttled(self):
        """burst failures pass; the next attempt is refused with the retry time and counted."""
        self.fail("192.0.2.1", 3)
        error = self.assertRaises(Throttled, self.throttle.check, "192.0.2.1")
        self.assertEqual(error.retry_after, 2)
        self.assertEqual(str(error), "too many failed test keys from 192.0.2.1; try again in 2 s")
        self.assertEqual((self.throttle.failures, self.throttle.refused), (3, 1))

    def test_other_sources_unaffected(self):
        """A throttled source leaves every other source free to try."""
        self.fail("192.0.2.1", 3)
        self.assertRaises(Throttled, self.throttle.check, "192.0.2.1")
        self.throttle.check("192.0.2.2")
        self.throttle.check("2001:db8::1")

    def test_refill(self):
        """One token comes back every 1/per_second seconds; a full bucket allows the burst again."""
        self.fail("192.0.2.1", 3)
        self.clock.advance(1.9)
        self.assertRaises(Throttled, self.throttle.check, "192.0.2.1")
        self.clock.advance(0.1)
        self.fail("192.0.2.1")
        self.assertRaises(Throttled, self.throttle.check, "192.0.2.1")
        self.clock.advance(6)
        self.fail("192.0.2.1", 3)
        self.assertRaises(Throttled, self.throttle.check, "192.0.2.1")

    def test_sustained_rate(self):
        """A source that keeps trying every second gets per_second failures a second, no more."""
        allowed = 0
        for _ in range(100):
            try:
                self.throttle.check("192.0.2.1")
            except Throttled:
                pass
            else:
                allowed += 1
                self.throttle.record_failure("192.0.2.1")
            self.clock.advance(1)
        # burst + 99 s * 0.5/s, give or take the last partial token
        self.assertIn(allowed, (51, 52))
        self.assertEqual(self.throttle.refused, 100 - allowed)

    def test_refusals_do_not_lengthen_throttle(self):
        """Refused attempts cost nothing; concurrent failures never push the wait past one refill."""
        for _ in range(50):  # fifty in flight, all past the check before any failed
            self.throttle.check("192.0.2.1")
        for _ in range(50):
            self.throttle.record_failure("192.0.2.1")
        for _ in range(1000):
            self.assertRaises(Throttled, self.throttle.check, "192.0.2.1")
        self.clock.advance(2)
        self.throttle.check("192.0.2.1")

    def test_ipv6_shares_a_slash_64(self):
        """Addresses of one IPv6 /64 share a bucket."""
        self.fail("2001:db8::1", 2)
        self.fail("2001:db8::2")
        self.assertRaises(Throttled, self.throttle.check, "2001:db8::ffff")
        self.throttle.check("2001:db8:0:1::1")

    def test_bounded_sources(self):
        """Beyond max_sources the least recently failing source is forgotten; memory stays bounded."""
        for i in range(1000):
            self.throttle.record_failure(f"198.51.100.{i % 250}" if i < 250 else f"203.0.{i // 250}.{i % 250}")
        self.assertEqual(self.throttle.tracked, 4)
        self.assertEqual(self.throttle.evicted, 996)

    def test_recent_source_kept(self):
        """A source failing again moves to the back, so eviction takes a quieter one."""
        self.fail("192.0.2.1", 3)
        for i in range(2, 5):
            self.throttle.record_failure(f"192.0.2.{i}")
        self.throttle.record_failure("192.0.2.1")  # no check: it happened in flight
        self.throttle.record_failure("192.0.2.9")  # evicts 192.0.2.2, not .1
        self.assertRaises(Throttled, self.throttle.check, "192.0.2.1")
        self.assertEqual(self.throttle.tracked, 4)

    def test_idle_sources_expire(self):
        """A source whose bucket has filled up again is forgotten at the next summary."""
        self.fail("192.0.2.1", 3)
        self.fail("192.0.2.2")
        self.throttle.summarize()
        self.assertEqual(self.throttle.tracked, 2)
        self.clock.advance(2)
        self.throttle.summarize()
        # .2 is full again but waits behind the older .1, which is still refilling: a
        # sweep stops at the first source in use, so its work is what it forgets.
        self.assertEqual(self.throttle.tracked, 2)
        self.clock.advance(4)  # burst / per_second after the last failure: everyone is full
        self.throttle.summarize()
        self.assertEqual(self.throttle.tracked, 0)

    def test_documented_numbers(self):
        """Pre-auth keys: 10 failures at once, then one every 6 s."""
        throttle = FailureThrottle(PREAUTH_KEYS, self.clock)
        for _ in range(10):
            throttle.check("192.0.2.1")
            throttle.record_failure("192.0.2.1")
        self.assertRaises(Throttled, throttle.check, "192.0.2.1")
        self.clock.advance(6)
        throttle.check("192.0.2.1")


class SummaryTests(unittest.TestCase):
    """One log line per active source and interval, bounded per interval."""

    def setUp(self):
        self.clock = Clock()
        self.throttle = FailureThrottle(SMALL, self.clock, interval=60)
        self.events = _captured(self)

    def test_one_line_per_source(self):
        """Many failures from one source make one line naming the count, the source and the throttling."""
        for _ in range(3):
            self.throttle.record_failure("192.0.2.1")
        for _ in range(500):
            self.assertRaises(Throttled, self.throttle.check, "192.0.2.1")
        self.throttle.record_failure("192.0.2.2")
        self.assertEqual(_summaries(self.events), [])
        self.assertEqual(self.throttle.summarize(), 2)
        lines = {e["source"]: e for e in _summaries(self.events)}
        from twisted.logger import formatEvent

        self.assertEqual(formatEvent(lines["192.0.2.1"]),
                         "3 failed test keys from 192.0.2.1 in the last 60 s; throttled (500 refused)")
        self.assertEqual(lines["192.0.2.1"]["log_level"], LogLevel.warn)
        self.assertEqual(formatEvent(lines["192.0.2.2"]), "1 failed test keys from 192.0.2.2 in the last 60 s")
        self.assertEqual(lines["192.0.2.2"]["log_level"], LogLevel.info)

    def test_quiet_interval_logs_nothing(self):
        """An interval without failures or refusals logs nothing, even for tracked sources."""
        self.throttle.record_failure("192.0.2.1")
        self.throttle.summarize()
        del self.events[:]
        self.assertEqual(self.throttle.summarize(), 0)
        self.assertEqual(_summaries(self.events), [])

    def test_lines_bounded(self):
        """With many active sources, at most SUMMARY_LINES lines plus one line for the rest."""
        throttle = FailureThrottle(ThrottleSettings("test_key", "test keys", 3, 0.5), self.clock)
        for i in range(300):
            throttle.record_failure(f"198.51.100.{i % 250}" if i < 250 else f"203.0.113.{i - 250}")
        self.assertEqual(throttle.summarize(), SUMMARY_LINES + 1)
        rest = _summaries(self.events)[-1]
        self.assertEqual((rest["sources"], rest["failures"]), (300 - SUMMARY_LINES, 300 - SUMMARY_LINES))

    def test_all_three(self):
        """AuthThrottles summarizes its three throttles, with their kinds."""
        throttles = AuthThrottles.build(self.clock)
        self.assertEqual([t.settings.kind for t in throttles.all()], ["preauth_key", "api_key", "noise_handshake"])
        throttles.api_key.record_failure("192.0.2.1")
        throttles.noise_handshake.record_failure("192.0.2.1")
        self.assertEqual(throttles.summarize(), 2)


class GuardedTests(unittest.TestCase):
    """guarded() runs an attempt unless throttled and counts the failures it raises."""

    def setUp(self):
        self.clock = Clock()
        self.throttle = FailureThrottle(SMALL, self.clock)

    def test_counts_failures_only(self):
        """The named exception counts as a failure and propagates; success and other errors do not count."""

        async def ok():
            return 7

        async def wrong():
            raise KeyError("wrong")

        async def broken():
            raise RuntimeError("database down")

        self.assertEqual(self.successResultOf(Deferred.fromCoroutine(guarded(self.throttle, "a", ok(), KeyError))), 7)
        self.failureResultOf(Deferred.fromCoroutine(guarded(self.throttle, "a", wrong(), KeyError)), KeyError)
        self.failureResultOf(Deferred.fromCoroutine(guarded(self.throttle, "a", broken(), KeyError)), RuntimeError)
        self.assertEqual(self.throttle.failures, 1)

    def test_throttled_attempt_not_run(self):
        """A throttled source's attempt is closed without running."""
        for _ in range(3):
            self.throttle.record_failure("a")
        ran = []

        async def attempt():
            ran.append(True)

        self.failureResultOf(Deferred.fromCoroutine(guarded(self.throttle, "a", attempt(), KeyError)), Throttled)
        self.assertEqual(ran, [])

    def test_no_throttle(self):
        """Without a throttle the attempt just runs."""

        async def attempt():
            return "ran"

        self.assertEqual(self.successResultOf(Deferred.fromCoroutine(guarded(None, "a", attempt(), KeyError))), "ran")


class AttemptTests(unittest.TestCase):
    """Attempts in flight hold tokens, so concurrent wrong secrets cannot overrun the bucket."""

    def setUp(self):
        self.clock = Clock()
        self.throttle = FailureThrottle(SMALL, self.clock)

    def test_clean_source_checks_many_at_once(self):
        """A source with no failure on record may check far more than burst secrets at once (a NAT, a fleet)."""
        blocks = [self.throttle.attempt("192.0.2.1") for _ in range(CLEAN_SOURCE_IN_FLIGHT)]
        for block in blocks:
            block.__enter__()
        self.assertRaises(Throttled, self.throttle.attempt("192.0.2.1").__enter__)
        for block in blocks:
            block.__exit__(None, None, None)
        self.assertEqual((self.throttle.failures, self.throttle.refused), (0, 1))
        self.throttle.check("192.0.2.1")

    def test_first_failure_ends_the_clean_allowance(self):
        """Once a failure is on record, attempts in flight beyond the tokens left are refused."""
        blocks = [self.throttle.attempt("192.0.2.1") for _ in range(5)]
        outcomes = [block.__enter__() for block in blocks]
        outcomes[0].failed()
        blocks[0].__exit__(None, None, None)
        # 2 tokens left (burst 3, one failure), 4 attempts still in flight.
        self.assertRaises(Throttled, self.throttle.attempt("192.0.2.1").__enter__)
        for block in blocks[1:]:
            block.__exit__(None, None, None)
        with self.throttle.attempt("192.0.2.1"):
            pass

    def test_in_flight_hold_tokens(self):
        """With a failure on record, attempts being checked hold tokens: the next is refused before any fails."""
        with self.throttle.attempt("192.0.2.1") as first:
            first.failed()
        self.clock.advance(SMALL.burst / SMALL.per_second)  # the bucket is full again, the record kept
        blocks = [self.throttle.attempt("192.0.2.1") for _ in range(3)]
        outcomes = [block.__enter__() for block in blocks]
        self.assertRaises(Throttled, self.throttle.attempt("192.0.2.1").__enter__)
        self.throttle.attempt("192.0.2.2").__enter__()  # other sources are free
        for block, outcome in zip(blocks, outcomes):
            outcome.failed()
            block.__exit__(None, None, None)
        self.assertEqual((self.throttle.failures, self.throttle.refused), (4, 1))
        self.assertRaises(Throttled, self.throttle.check, "192.0.2.1")

    def test_success_gives_token_back(self):
        """An attempt that did not fail returns its token, even when the block raised."""
        for _ in range(10):
            with self.throttle.attempt("192.0.2.1"):
                pass
        with self.assertRaises(RuntimeError):
            with self.throttle.attempt("192.0.2.1"):
                raise RuntimeError("database down")
        self.assertEqual((self.throttle.failures, self.throttle.tracked), (0, 0))
        self.assertEqual(self.throttle.retry_after("192.0.2.1"), 0)

    def test_failed_attempts_spend(self):
        """Failed attempts spend their tokens one by one, then the source is throttled."""
        for _ in range(3):
            with self.throttle.attempt("192.0.2.1") as outcome:
                outcome.failed()
        with self.assertRaises(Throttled):
            with self.throttle.attempt("192.0.2.1"):
                self.fail("a throttled attempt must not run")
