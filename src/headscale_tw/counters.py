# -*- test-case-name: tests.test_counters -*-
"""
Plain counters and histograms that the serving code updates and ``/metrics`` reads.

Everything here runs on the reactor thread, so an update is an integer
addition and a bisection: no locks, no metric objects, no label lookups in a
registry. Each object that does the work owns its counters (the notifier its
:class:`MapCounters`, the control state its :class:`NodeStoreCounters`, the
database pool its query histogram, a site its :class:`HTTPCounters`), and
:mod:`headscale_tw.metrics` turns them into Prometheus families at scrape
time. This module imports nothing from Prometheus, Twisted or the web layer,
so the domain may use it.

Label values are always drawn from small fixed sets chosen by the code
(a response type, a route template, a status code), never from client input,
so the number of series stays bounded.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Hashable, Iterator, Sequence

import attrs

__all__ = [
    "DEFAULT_BUCKETS",
    "BATCH_SIZE_BUCKETS",
    "Histogram",
    "LabelledHistograms",
    "MapCounters",
    "NodeStoreCounters",
    "HTTPCounters",
    "Stopwatch",
]

#: Prometheus' default latency buckets (seconds), as Headscale's histograms use.
DEFAULT_BUCKETS: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0,
                                      7.5, 10.0)

#: Headscale's ``nodestore_batch_size`` buckets.
BATCH_SIZE_BUCKETS: tuple[float, ...] = (1, 2, 5, 10, 20, 50, 100)


class Histogram:
    """Observations counted into fixed upper bounds (``le``), plus their sum and count."""

    __slots__ = ("bounds", "counts", "sum", "count")

    def __init__(self, bounds: Sequence[float] = DEFAULT_BUCKETS) -> None:
        self.bounds = tuple(bounds)
        #: One count per bound (not cumulative); observations above the last bound land only in ``count``.
        self.counts = [0] * len(self.bounds)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        """Count one observation."""
        index = bisect_left(self.bounds, value)
        if index < len(self.counts):
            self.counts[index] += 1
        self.sum += value
        self.count += 1

    def cumulative(self) -> list[tuple[str, int]]:
        """``(le, count)`` pairs as Prometheus exposes them, ending with ``+Inf``."""
        out, running = [], 0
        for bound, count in zip(self.bounds, self.counts):
            running += count
            out.append((_bound_text(bound), running))
        out.append(("+Inf", self.count))
        return out


def _bound_text(bound: float) -> str:
    return repr(float(bound))


class LabelledHistograms:
    """One :class:`Histogram` per label tuple, made on first use."""

    __slots__ = ("bounds", "by_labels")

    def __init__(self, bounds: Sequence[float] = DEFAULT_BUCKETS) -> None:
        self.bounds = tuple(bounds)
        self.by_labels: dict[tuple, Histogram] = {}

    def observe(self, labels: tuple, value: float) -> None:
        """Count ``value`` under ``labels``."""
        histogram = self.by_labels.get(labels)
        if histogram is None:
            histogram = self.by_labels[labels] = Histogram(self.bounds)
        histogram.observe(value)

    def items(self) -> Iterator[tuple[tuple, Histogram]]:
        """Every label tuple with its histogram."""
        return iter(list(self.by_labels.items()))


def _bump(counts: dict, key: Hashable, by: int = 1) -> None:
    counts[key] = counts.get(key, 0) + by


@attrs.define
class MapCounters:
    """
    Map streams, with Headscale's metric meanings (``headscale_mapresponse_*``).

    ``sent``: ``(status, type)`` -> messages written to a client (``ok`` or
    ``error``; ``full``, ``change`` or ``keepalive``). ``generated``:
    ``response_type`` -> messages built, typed as Headscale types its changes
    (``full``, ``self``, ``peers``, ``patch``, ``policy``, ``config``); one
    built message may be sent to many streams.
    ``endpoint_updates``: ``status`` -> lite MapRequests (endpoint and Hostinfo
    reports without a stream). ``ended``: ``reason`` -> streams that ended
    (``done``: the client went away; ``cancelled``: the server ended it, for a
    newer stream, a deleted node or shutdown; ``slow_client``: aborted because
    its client stopped reading).
    """

    sent: dict[tuple[str, str], int] = attrs.field(factory=dict)
    generated: dict[str, int] = attrs.field(factory=dict)
    endpoint_updates: dict[str, int] = attrs.field(factory=dict)
    ended: dict[str, int] = attrs.field(factory=dict)

    def count_sent(self, status: str, kind: str) -> None:
        _bump(self.sent, (status, kind))

    def count_generated(self, response_type: str) -> None:
        _bump(self.generated, response_type)

    def count_endpoint_update(self, status: str) -> None:
        _bump(self.endpoint_updates, status)

    def count_ended(self, reason: str) -> None:
        _bump(self.ended, reason)


@attrs.define
class NodeStoreCounters:
    """
    The in-memory node state and the change batches fanned out from it,
    with Headscale's NodeStore metric meanings (``headscale_nodestore_*``).

    ``operations``: ``operation`` -> completed writes (``put``, ``update``,
    ``delete``) and ``operation_seconds`` their durations (store write
    included). ``batch_size``/``batch_seconds``: nodes taken into one policy
    update and the time to apply and fan it out. ``peers_seconds``: the
    policy update alone (who sees whom). ``snapshot_seconds``: loading every
    node into memory at start.
    """

    operations: dict[str, int] = attrs.field(factory=dict)
    operation_seconds: LabelledHistograms = attrs.field(factory=LabelledHistograms)
    batch_size: Histogram = attrs.field(factory=lambda: Histogram(BATCH_SIZE_BUCKETS))
    batch_seconds: Histogram = attrs.field(factory=Histogram)
    peers_seconds: Histogram = attrs.field(factory=Histogram)
    snapshot_seconds: Histogram = attrs.field(factory=Histogram)

    def count_operation(self, operation: str, seconds: float) -> None:
        _bump(self.operations, operation)
        self.operation_seconds.observe((operation,), seconds)


@attrs.define
class HTTPCounters:
    """
    Requests answered by the listeners: ``requests`` maps ``(listener, route,
    method, status)`` to a count and ``seconds`` holds the latency per
    ``(listener, route, method)``. ``route`` is a template (``/api/v1/node/{id}``),
    never a raw path; ``method`` is one of the standard methods or ``OTHER``.
    """

    requests: dict[tuple[str, str, str, str], int] = attrs.field(factory=dict)
    seconds: LabelledHistograms = attrs.field(factory=LabelledHistograms)

    def count(self, listener: str, route: str, method: str, status: str, seconds: float) -> None:
        _bump(self.requests, (listener, route, method, status))
        self.seconds.observe((listener, route, method), seconds)


class Stopwatch:
    """Seconds elapsed since creation, on ``seconds`` (an ``IReactorTime.seconds``)."""

    __slots__ = ("_seconds", "_start")

    def __init__(self, seconds: Callable[[], float]) -> None:
        self._seconds = seconds
        self._start = seconds()

    def elapsed(self) -> float:
        return max(0.0, self._seconds() - self._start)
