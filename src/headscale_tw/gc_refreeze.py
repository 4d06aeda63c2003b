# -*- test-case-name: tests.test_gc_refreeze -*-
"""
Periodic, controlled full garbage collections for a long-running server.

:func:`headscale_tw.service.tune_gc` moves everything that exists at start-up
into the permanent generation (``gc.freeze``), so the collector's full
collections no longer walk it. The state of 10,000 streaming nodes arrives
*after* start-up; unfrozen, it is walked by every full collection the
interpreter decides to run, at any moment, often inside a fan-out (in-process,
one such collection took 1.09 s and every policy change paid 170–215 ms).

:class:`GcRefreezer` checks, from a reactor timer (so never inside a request
or a fan-out), whether the number of allocated blocks
(``sys.getallocatedblocks()``, O(1)) has grown by :attr:`growth_factor` since
the last freeze. When it has, it collects what is not frozen (``gc.collect()``
walks only the unfrozen objects, so the cost is that of the growth) and
freezes the survivors. Once ``max_interval`` has passed since the last full
pass, it runs ``gc.unfreeze()`` first, so the one collection walks the whole
heap: garbage that was frozen earlier (a frozen object that later became part
of an unreachable cycle, e.g. a dropped connection's) is collected then. So
the frozen generation cannot leak without bound: frozen garbage lives at most
``max_interval`` (an hour), and that full pass happens from a timer, at a time
the server chose, instead of inside a fan-out.
"""

from __future__ import annotations

import gc
import sys
import time
from collections.abc import Callable

from twisted.application.service import Service
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

__all__ = ["GcRefreezer"]


class GcRefreezer(Service):
    """
    A service that re-freezes the heap once it has grown by ``growth_factor``.

    :param clock: the reactor (or a :class:`~twisted.internet.task.Clock` in tests).
    :param check_every: seconds between the cheap growth checks.
    :param growth_factor: re-freeze once allocated blocks reach this multiple of
        the count after the last freeze.
    :param max_interval: seconds after which the next re-freeze (due on growth,
        or on any growth once this has passed) unfreezes everything first, so
        frozen garbage is collected at least this often; ``None``: never.
    :param blocks: returns the allocated-block count (``sys.getallocatedblocks``;
        injected by tests).
    :param collector: ``collector(full)`` collects (after ``gc.unfreeze()``
        when ``full``) and freezes, returning ``(objects frozen, objects
        collected)``; injected by tests.
    """

    log = Logger()

    def __init__(self, clock: IReactorTime, check_every: float = 10.0, growth_factor: float = 1.5,
                 max_interval: float | None = 3600.0,
                 blocks: Callable[[], int] = sys.getallocatedblocks,
                 collector: Callable[[bool], tuple[int, int]] | None = None) -> None:
        if check_every <= 0:
            raise ValueError(f"check_every must be positive, not {check_every!r}")
        if growth_factor <= 1:
            raise ValueError(f"growth_factor must be above 1, not {growth_factor!r}")
        self._clock = clock
        self._check_every = check_every
        self._growth_factor = growth_factor
        self._max_interval = max_interval
        self._blocks = blocks
        self._collector = collector if collector is not None else refreeze
        self._loop: LoopingCall | None = None
        #: Allocated blocks right after the last freeze.
        self.baseline = blocks()
        self._last_full = clock.seconds()
        #: Re-freezes done (and how many of them were full passes), objects in the permanent generation after the last one,
        #: objects collected by all of them, and CPU seconds they took.
        self.refreezes = 0
        self.full_passes = 0
        self.frozen = gc.get_freeze_count()
        self.collected = 0
        self.cpu_seconds = 0.0

    def startService(self) -> None:
        super().startService()
        self._loop = LoopingCall(self.check)
        self._loop.clock = self._clock
        self._loop.start(self._check_every, now=False)

    def stopService(self):
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        return super().stopService()

    def due(self) -> bool:
        """Whether the heap has grown enough (or long enough ago) for a re-freeze; no side effects."""
        current = self._blocks()
        if current >= self.baseline * self._growth_factor:
            return True
        return current > self.baseline and self._full_due()

    def _full_due(self) -> bool:
        return self._max_interval is not None and self._clock.seconds() - self._last_full >= self._max_interval

    def check(self) -> bool:
        """Re-freeze if :meth:`due`; return whether it did."""
        if not self.due():
            return False
        before = self.baseline
        full = self._full_due()
        started = time.process_time()
        self.frozen, collected = self._collector(full)
        took = time.process_time() - started
        self.refreezes += 1
        self.collected += collected
        self.cpu_seconds += took
        self.baseline = self._blocks()
        if full:
            self.full_passes += 1
            self._last_full = self._clock.seconds()
        self.log.info("gc re-freeze ({kind}): {frozen} objects frozen, {collected} collected, "
                      "{before} -> {after} blocks, {ms:.0f} ms CPU",
                      kind="full" if full else "new objects", frozen=self.frozen, collected=collected, before=before, after=self.baseline,
                      ms=took * 1000)
        return True


def refreeze(full: bool = True) -> tuple[int, int]:
    """(With ``full``, ``gc.unfreeze()``), ``gc.collect()``, ``gc.freeze()``; return (frozen, collected)."""
    if full:
        gc.unfreeze()
    collected = gc.collect()
    gc.freeze()
    return gc.get_freeze_count(), collected
