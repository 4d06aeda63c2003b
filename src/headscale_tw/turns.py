# -*- test-case-name: tests.test_turns -*-
"""
Bounded work per reactor turn for bursts of expensive, deferrable jobs.

In a reconnect storm thousands of clients open their map stream within
seconds, and each stream starts with a full map build (milliseconds for a
large tailnet). Built as the requests arrive, one reactor turn could run
hundreds of them back to back, and everything else the reactor serves
(``/health``, keep-alives, the accept queue) waited behind the whole batch:
``/health`` p99 2.6 s during a 10,000-node storm.

:class:`TurnBudget` admits such jobs a few per turn instead: :meth:`admit`
returns a :class:`~twisted.internet.defer.Deferred` that fires in a later
turn, at most ``per_turn`` of them per turn and no more once ``seconds`` of
the turn are used up (whichever comes first; at least one per turn, so the
queue always drains). Between two turns the reactor polls its sockets, so a
request that arrives during a storm waits for at most one budget's worth of
queued work rather than for the whole queue.

A waiter cancelled before its turn (the client went away) is skipped without
counting against the budget.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime

__all__ = ["TurnBudget"]


class TurnBudget:
    """
    Admit queued jobs a bounded number per reactor turn.

    :param clock: schedules the next turn (``callLater(0, ...)``).
    :param per_turn: most waiters fired in one turn.
    :param seconds: the turn ends early once this much CPU-bound time has passed
        (read with ``timer``; ``0`` disables the time check).
    :param timer: a monotonic clock in seconds (tests pass a fake).
    """

    def __init__(self, clock: IReactorTime, per_turn: int = 8, seconds: float = 0.01,
                 timer: Callable[[], float] = time.perf_counter) -> None:
        if per_turn < 1:
            raise ValueError(f"per_turn must be at least 1, got {per_turn}")
        if seconds < 0:
            raise ValueError(f"seconds must not be negative, got {seconds}")
        self._clock = clock
        self.per_turn = per_turn
        self.seconds = seconds
        self._timer = timer
        self._waiting: deque[Deferred[None]] = deque()
        self._call: IDelayedCall | None = None
        #: Turns run and waiters admitted so far (work counts for tests and metrics).
        self.turns = 0
        self.admitted = 0

    @property
    def waiting(self) -> int:
        """Waiters not yet admitted (cancelled ones included until their turn comes)."""
        return len(self._waiting)

    def admit(self) -> Deferred[None]:
        """A Deferred that fires (with ``None``) when the caller's turn has come."""
        d: Deferred[None] = Deferred()
        self._waiting.append(d)
        if self._call is None:
            self._call = self._clock.callLater(0, self._turn)
        return d

    def stop(self) -> None:
        """Cancel the scheduled turn and every waiter (service shutdown, tests)."""
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        waiting, self._waiting = self._waiting, deque()
        for d in waiting:
            if not d.called:
                d.cancel()

    def _turn(self) -> None:
        self._call = None
        self.turns += 1
        started = self._timer()
        fired = 0
        waiting = self._waiting
        while waiting and fired < self.per_turn:
            d = waiting.popleft()
            if d.called:  # cancelled while queued
                continue
            fired += 1
            self.admitted += 1
            d.callback(None)
            if self.seconds and self._timer() - started >= self.seconds:
                break
        if waiting and self._call is None:
            self._call = self._clock.callLater(0, self._turn)
