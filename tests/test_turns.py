"""Tests for :mod:`headscale_tw.turns` (bounded work per reactor turn)."""

from __future__ import annotations

from twisted.internet.address import IPv4Address
from twisted.internet.defer import CancelledError
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial import unittest
from twisted.web.resource import Resource
from twisted.web.server import Site

from headscale_tw.service import HealthResource
from headscale_tw.turns import TurnBudget


class _FakeTimer:
    """A monotonic timer that advances by ``step`` on each read."""

    def __init__(self, step: float) -> None:
        self.now = 0.0
        self.step = step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


class _ReactorLikeClock(Clock):
    """
    A Clock whose :meth:`iterate` runs one reactor iteration's timed calls.

    ``Clock.advance(0)`` also runs calls scheduled *while* it runs; the reactor
    leaves those for its next iteration (after polling its sockets). This models that.
    """

    def iterate(self) -> None:
        """Run the calls due when the iteration starts, not those they schedule."""
        due = [call for call in self.calls if call.getTime() <= self.seconds()]
        for call in due:
            if call.active():
                self.calls.remove(call)
                call.called = 1
                call.func(*call.args, **call.kw)


class TurnBudgetTests(unittest.TestCase):
    """:class:`TurnBudget` admits at most ``per_turn`` waiters per turn."""

    def setUp(self) -> None:
        self.clock = _ReactorLikeClock()

    def test_nothing_runs_in_the_calling_turn(self) -> None:
        """A waiter fires in a later turn, never synchronously from :meth:`admit`."""
        budget = TurnBudget(self.clock, per_turn=4, seconds=0)
        fired: list[int] = []
        budget.admit().addCallback(lambda _: fired.append(1))
        self.assertEqual(fired, [])
        self.clock.iterate()
        self.assertEqual(fired, [1])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_per_turn_count_bounds_each_turn(self) -> None:
        """100 waiters with a budget of 8 take 13 turns, 8 per turn (the last 4), in order."""
        budget = TurnBudget(self.clock, per_turn=8, seconds=0)
        fired: list[int] = []
        for i in range(100):
            budget.admit().addCallback(lambda _, i=i: fired.append(i))
        per_turn = []
        while self.clock.getDelayedCalls():
            before = len(fired)
            self.clock.iterate()
            per_turn.append(len(fired) - before)
        self.assertEqual(per_turn, [8] * 12 + [4])
        self.assertEqual(fired, list(range(100)))
        self.assertEqual((budget.turns, budget.admitted, budget.waiting), (13, 100, 0))

    def test_time_budget_ends_a_turn_early(self) -> None:
        """With each job taking 4 ms of a 10 ms budget, a turn admits 3 (at least one always)."""
        budget = TurnBudget(self.clock, per_turn=100, seconds=0.010, timer=_FakeTimer(0.004))
        fired: list[int] = []
        for i in range(7):
            budget.admit().addCallback(lambda _, i=i: fired.append(i))
        self.clock.iterate()
        # timer reads: start 0.004, after 1st 0.008 (4 ms), after 2nd 0.012 (8 ms), after 3rd 0.016
        self.assertEqual(fired, [0, 1, 2])
        budget.seconds = 0.001
        self.clock.iterate()
        self.assertEqual(fired, [0, 1, 2, 3])

    def test_cancelled_waiters_are_skipped_without_counting(self) -> None:
        """A waiter cancelled while queued does not use a slot of the turn."""
        budget = TurnBudget(self.clock, per_turn=2, seconds=0)
        waiters = [budget.admit() for _ in range(4)]
        fired: list[int] = []
        for i, d in enumerate(waiters):
            d.addCallbacks(lambda _, i=i: fired.append(i), lambda f: f.trap(CancelledError))
        waiters[0].cancel()
        waiters[1].cancel()
        self.clock.iterate()
        self.assertEqual(fired, [2, 3])
        self.assertEqual(budget.admitted, 2)

    def test_stop_cancels_the_turn_and_the_waiters(self) -> None:
        """:meth:`stop` leaves no timer and fails the waiters with CancelledError."""
        budget = TurnBudget(self.clock)
        d = budget.admit()
        budget.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.failureResultOf(d, CancelledError)

    def test_bad_arguments_are_refused_by_name(self) -> None:
        """A zero ``per_turn`` or a negative ``seconds`` is a ValueError naming the argument."""
        with self.assertRaisesRegex(ValueError, "per_turn"):
            TurnBudget(self.clock, per_turn=0)
        with self.assertRaisesRegex(ValueError, "seconds"):
            TurnBudget(self.clock, seconds=-1)


class HealthNotStarvedTests(unittest.TestCase):
    """
    A ``/health`` request arriving during a storm of stream opens is answered
    after at most one turn's budget of full map builds, not after the whole queue.

    The reactor is modelled as Twisted runs it: each iteration runs the timed calls
    that are due (``_ReactorLikeClock.iterate``), then delivers the socket events that are ready.
    """

    def _health_channel(self) -> tuple[object, StringTransport]:
        root = Resource()
        root.putChild(b"health", HealthResource(lambda: True))
        site = Site(root)
        channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        transport = StringTransport()
        channel.makeConnection(transport)
        self.addCleanup(channel.connectionLost, None)
        return channel, transport

    def _storm(self, admission: TurnBudget | None, streams: int) -> tuple[list[int], int]:
        builds: list[int] = []

        def build_full_map(node_id: int) -> None:
            builds.append(node_id)

        for node_id in range(streams):  # the map requests of one storm burst, all readable at once
            if admission is None:
                build_full_map(node_id)
            else:
                admission.admit().addCallback(lambda _, n=node_id: build_full_map(n))
        return builds, streams

    def test_health_waits_for_one_budget_not_the_queue(self) -> None:
        """1,000 queued full maps with a budget of 8: ``/health`` is answered after 8 builds."""
        clock = _ReactorLikeClock()
        admission = TurnBudget(clock, per_turn=8, seconds=0)
        builds, _ = self._storm(admission, 1000)
        self.assertEqual(builds, [])  # the burst's own turn only queued them
        channel, transport = self._health_channel()
        # next iteration: due timed calls first (one budget of builds), then the ready socket
        clock.iterate()
        channel.dataReceived(b"GET /health HTTP/1.1\r\nHost: control\r\n\r\n")
        self.assertIn(b'{"status":"pass"}', transport.value())
        self.assertEqual(len(builds), 8)
        self.assertEqual(admission.waiting, 992)
        while clock.getDelayedCalls():
            clock.iterate()
        self.assertEqual(len(builds), 1000)
