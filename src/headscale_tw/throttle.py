# -*- test-case-name: tests.test_throttle -*-
"""
Brute-force throttling: failed secrets are counted per source address, and a
source that fails too often is refused for a while without being checked.

One :class:`FailureThrottle` per kind of secret (pre-auth keys, API keys,
Noise handshakes; :class:`AuthThrottles` holds the three). Each source address
(see :func:`source_key`: an IPv4 address, or the /64 of an IPv6 address) has a
token bucket of ``burst`` tokens refilled at ``per_second``; every failure
takes one token. While a source has less than one token it is *throttled*:
:meth:`FailureThrottle.check` raises :class:`Throttled` and the caller refuses
the attempt before looking at the secret. Successes cost nothing. Other
sources are unaffected. A check that waits (a database lookup) runs inside
:meth:`FailureThrottle.attempt`, which holds one token until the outcome is
known, so fifty wrong keys sent at once cannot all pass on the last token.
That hold applies once a source has a failure on record; a source with a
clean record may have :data:`CLEAN_SOURCE_IN_FLIGHT` attempts in flight, since
legitimate clients behind one address (a NAT, Headplane, a fleet registering
through one proxy) check many valid secrets at once.

Bounded work and memory: only sources that failed are tracked, at most
``max_sources`` per kind (the least recently failing one is forgotten to make
room); an entry whose bucket has filled up again is forgotten at the next
summary. No database write happens per attempt.

Visible: :meth:`FailureThrottle.summarize` (run every ``interval`` seconds by
a timer) logs one line per source that failed or was refused in the interval,
at most :data:`SUMMARY_LINES` lines per kind plus one line for the rest; the
totals are exported as Prometheus counters (see :mod:`headscale_tw.metrics`).
The same lines can be collected as :class:`SourceSummary` objects (the audit
log stores them: one row per source and interval, never one per failure).
The clock is injected (``IReactorTime``); tests drive it with ``Clock``.
"""

from __future__ import annotations

import ipaddress
import math
from collections import OrderedDict
from collections.abc import Awaitable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import attrs
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from headscale_tw.errors import HeadscaleError

__all__ = [
    "Throttled",
    "ThrottleSettings",
    "FailureThrottle",
    "AuthThrottles",
    "guarded",
    "source_key",
    "CLEAN_SOURCE_IN_FLIGHT",
    "PREAUTH_KEYS",
    "API_KEYS",
    "NOISE_HANDSHAKES",
    "SUMMARY_INTERVAL",
    "SUMMARY_LINES",
    "SourceSummary",
]

_T = TypeVar("_T")

#: Seconds between summary lines for a source (and between expiry sweeps).
SUMMARY_INTERVAL = 60.0
#: At most this many per-source summary lines per kind and interval; the rest share one line.
SUMMARY_LINES = 20


class Throttled(HeadscaleError):
    """A source failed too often; ``str()`` says what and when to try again."""

    def __init__(self, kind: str, noun: str, source: str, retry_after: float) -> None:
        self.kind = kind
        self.source = source
        self.retry_after = max(1, math.ceil(retry_after))
        super().__init__(f"too many failed {noun} from {source}; try again in {self.retry_after} s")


@attrs.frozen
class ThrottleSettings:
    """The numbers of one throttle (documented in docs/security.md)."""

    #: Metric label and log key, e.g. ``preauth_key``.
    kind: str
    #: What failed, in plural, for messages: "pre-auth keys".
    noun: str
    #: Failures a source may have at once before it is throttled (the bucket size).
    burst: int
    #: Failures per second a source earns back (the refill rate).
    per_second: float
    #: Sources tracked at once; the least recently failing one is forgotten beyond this.
    max_sources: int = 10_000


#: ``tailscale up --authkey``: 10 wrong keys, then one every 6 s (10 a minute). The official
#: client backs off to one attempt every 30 s, so its own retries never keep it throttled.
PREAUTH_KEYS = ThrottleSettings("preauth_key", "pre-auth keys", burst=10, per_second=1 / 6)
#: ``Authorization: Bearer`` on /api/v1: 10 refused requests, then one every 6 s.
API_KEYS = ThrottleSettings("api_key", "API keys", burst=10, per_second=1 / 6)
#: ``/ts2021`` upgrades whose handshake is malformed or fails: 20, then one every 3 s.
NOISE_HANDSHAKES = ThrottleSettings("noise_handshake", "Noise handshakes", burst=20, per_second=1 / 3)


def source_key(address: str) -> str:
    """The bucket an address falls in: an IPv4 address itself, an IPv6 address's /64.

    One IPv6 host usually owns a whole /64 and can pick any address in it.
    Anything that is not an IP address (``local``) is its own bucket.
    """
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return address
    if parsed.version == 6:
        return str(ipaddress.ip_network(f"{parsed}/64", strict=False))
    return str(parsed)


CLEAN_SOURCE_IN_FLIGHT = 256
"""Attempts a source without failures on record may have being checked at once.

With a failure on record each attempt in flight holds one of the source's
tokens instead (at most ``burst``). Found by the control benchmark: 64
concurrent registrations with a valid reusable key from one load generator
were refused as "too many failed pre-auth keys" when tokens were held for
every source.
"""


@attrs.frozen
class SourceSummary:
    """One summary line: a source's failures and refusals over one interval.

    The line for the sources past :data:`SUMMARY_LINES` has ``source``
    ``"<N> more sources"`` and their summed counts.
    """

    kind: str
    source: str
    failures: int
    refused: int
    throttled: bool
    interval: float


@attrs.define
class _Attempt:
    """One secret being checked (see :meth:`FailureThrottle.attempt`)."""

    wrong: bool = False

    def failed(self) -> None:
        """The secret was wrong: the attempt spends its token."""
        self.wrong = True


@attrs.define
class _Source:
    """One source's bucket and its counts since the last summary."""

    tokens: float
    #: When ``tokens`` was last brought up to date.
    updated: float
    failures: int = 0
    refused: int = 0
    #: Whether the source is waiting in the summary's list.
    pending: bool = False


class FailureThrottle:
    """Failed attempts of one kind, counted and throttled per source address."""

    log = Logger()

    def __init__(self, settings: ThrottleSettings, clock: IReactorTime, interval: float = SUMMARY_INTERVAL) -> None:
        self.settings = settings
        self.clock = clock
        self.interval = interval
        self._sources: OrderedDict[str, _Source] = OrderedDict()
        self._pending: list[str] = []
        #: Attempts being checked now, per source (each holds one token; see :meth:`attempt`).
        self._in_flight: dict[str, int] = {}
        #: Totals since start, for the metrics.
        self.failures = 0
        self.refused = 0
        #: Sources forgotten to stay within ``max_sources``.
        self.evicted = 0

    @property
    def tracked(self) -> int:
        """How many sources are tracked now."""
        return len(self._sources)

    def _tokens(self, entry: _Source, now: float) -> float:
        elapsed = max(0.0, now - entry.updated)
        return min(float(self.settings.burst), entry.tokens + elapsed * self.settings.per_second)

    def _available(self, key: str, now: float) -> float:
        """Tokens of ``key`` not spoken for by attempts still being checked.

        A source with no failure on record is only bounded by
        :data:`CLEAN_SOURCE_IN_FLIGHT` attempts at once.
        """
        entry = self._sources.get(key)
        tokens = float(CLEAN_SOURCE_IN_FLIGHT) if entry is None else self._tokens(entry, now)
        return tokens - self._in_flight.get(key, 0)

    def retry_after(self, address: str) -> float:
        """Seconds until ``address`` may try again (0 when it is not throttled)."""
        missing = 1.0 - self._available(source_key(address), self.clock.seconds())
        return max(0.0, missing / self.settings.per_second)

    def check(self, address: str) -> None:
        """Before checking a secret from ``address``: refuse it if the source is throttled.

        For a secret checked at once (no waiting in between), followed by
        :meth:`record_failure` if it was wrong. A check that waits (a database
        lookup) uses :meth:`attempt`, so that attempts in flight at the same
        time cannot all pass on the same token.

        :raises Throttled: (and counts the refusal) while the source has no token left.
        """
        key = source_key(address)
        now = self.clock.seconds()
        if self._available(key, now) >= 1.0:
            return
        entry = self._sources.get(key)
        if entry is None:  # throttled by attempts in flight before its first failure
            entry = self._track(key, now)
        entry.refused += 1
        self.refused += 1
        self._mark(key, entry)
        raise Throttled(self.settings.kind, self.settings.noun, key, self.retry_after(address))

    @contextmanager
    def attempt(self, address: str) -> Iterator[_Attempt]:
        """Check one secret from ``address`` inside a ``with`` block; call ``.failed()`` if it was wrong.

        The attempt holds one of the source's tokens while the block runs (so
        at most the bucket's tokens are being checked at once); a failed one
        spends it, anything else gives it back.

        :raises Throttled: on entry, while the source has no token left.
        """
        self.check(address)
        key = source_key(address)
        self._in_flight[key] = self._in_flight.get(key, 0) + 1
        outcome = _Attempt()
        try:
            yield outcome
        finally:
            left = self._in_flight[key] - 1
            if left:
                self._in_flight[key] = left
            else:
                del self._in_flight[key]
            if outcome.wrong:
                self.record_failure(address)

    def _track(self, key: str, now: float) -> _Source:
        if len(self._sources) >= self.settings.max_sources:
            self._sources.popitem(last=False)
            self.evicted += 1
        entry = self._sources[key] = _Source(tokens=float(self.settings.burst), updated=now)
        return entry

    def record_failure(self, address: str) -> None:
        """A secret from ``address`` was wrong: take one token from its bucket."""
        key = source_key(address)
        now = self.clock.seconds()
        entry = self._sources.get(key)
        if entry is None:
            entry = self._track(key, now)
        else:
            self._sources.move_to_end(key)
        # Never below zero: failures already in flight when the source ran dry
        # (concurrent requests) do not lengthen the wait beyond one refill.
        entry.tokens = max(0.0, self._tokens(entry, now) - 1.0)
        entry.updated = now
        entry.failures += 1
        self.failures += 1
        self._mark(key, entry)

    def _mark(self, key: str, entry: _Source) -> None:
        if not entry.pending:
            entry.pending = True
            self._pending.append(key)

    def summarize(self, sink: list[SourceSummary] | None = None) -> int:
        """Log one line per source active since the last call, forget idle sources; return the lines logged.

        Run every ``interval`` seconds. Work is bounded by the sources active in
        the interval plus those forgotten. Each line is also appended to ``sink``
        (when given) as a :class:`SourceSummary`.
        """
        pending, self._pending = self._pending, []
        now = self.clock.seconds()
        lines = 0
        rest_sources = rest_failures = rest_refused = 0
        for key in pending:
            entry = self._sources.get(key)
            if entry is None:  # evicted meanwhile
                continue
            entry.pending = False
            throttled = self._tokens(entry, now) < 1.0
            if lines < SUMMARY_LINES:
                self._log_source(key, entry, throttled)
                if sink is not None:
                    sink.append(SourceSummary(self.settings.kind, key, entry.failures, entry.refused, throttled,
                                              self.interval))
                lines += 1
            else:
                rest_sources += 1
                rest_failures += entry.failures
                rest_refused += entry.refused
            entry.failures = entry.refused = 0
        if rest_sources:
            self.log.warn(
                "{failures} failed {noun} from {sources} more sources in the last {interval:.0f} s"
                " ({refused} refused while throttled)",
                failures=rest_failures, noun=self.settings.noun, sources=rest_sources,
                interval=self.interval, refused=rest_refused, kind=self.settings.kind,
            )
            if sink is not None:
                sink.append(SourceSummary(self.settings.kind, f"{rest_sources} more sources", rest_failures,
                                          rest_refused, bool(rest_refused), self.interval))
            lines += 1
        self._forget_idle(now)
        return lines

    def _log_source(self, key: str, entry: _Source, throttled: bool) -> None:
        fields = dict(failures=entry.failures, noun=self.settings.noun, source=key, interval=self.interval,
                      refused=entry.refused, kind=self.settings.kind)
        if throttled or entry.refused:
            self.log.warn(
                "{failures} failed {noun} from {source} in the last {interval:.0f} s; throttled"
                " ({refused} refused)",
                **fields,
            )
        else:
            self.log.info("{failures} failed {noun} from {source} in the last {interval:.0f} s", **fields)

    def _forget_idle(self, now: float) -> None:
        """Drop sources whose bucket is full again, oldest failure first; stop at the first one still in use.

        Sources are kept in the order of their last failure, and a bucket is
        full ``burst / per_second`` seconds after its last failure at the
        latest (it never goes below zero), so every source idle that long is
        forgotten, with work proportional to what is forgotten.
        """
        full = float(self.settings.burst)
        sources = self._sources
        while sources:
            key, entry = next(iter(sources.items()))
            if entry.pending or self._tokens(entry, now) < full:
                break
            del sources[key]


@attrs.frozen
class AuthThrottles:
    """The three brute-force throttles of one server, built by the control plane."""

    preauth_key: FailureThrottle
    api_key: FailureThrottle
    noise_handshake: FailureThrottle

    @classmethod
    def build(cls, clock: IReactorTime, interval: float = SUMMARY_INTERVAL) -> AuthThrottles:
        """The throttles with the documented settings, on ``clock``."""
        return cls(
            FailureThrottle(PREAUTH_KEYS, clock, interval),
            FailureThrottle(API_KEYS, clock, interval),
            FailureThrottle(NOISE_HANDSHAKES, clock, interval),
        )

    @property
    def interval(self) -> float:
        """Seconds between two calls of :meth:`summarize` (the timer's interval)."""
        return self.preauth_key.interval

    def all(self) -> tuple[FailureThrottle, ...]:
        """Every throttle, for metrics and the summary timer."""
        return (self.preauth_key, self.api_key, self.noise_handshake)

    def summarize(self, sink: list[SourceSummary] | None = None) -> int:
        """Summarize every throttle (into ``sink`` too, when given); return the lines logged."""
        return sum(throttle.summarize(sink) for throttle in self.all())


async def guarded(
    throttle: FailureThrottle | None,
    address: str,
    attempt: Awaitable[_T],
    failure: type[BaseException] | tuple[type[BaseException], ...],
) -> _T:
    """Await ``attempt`` unless ``address`` is throttled; count it as failed if it raises ``failure``.

    ``throttle=None`` only awaits ``attempt`` (a listener that is not throttled).

    :raises Throttled: without awaiting ``attempt`` (it is closed).
    """
    if throttle is None:
        return await attempt
    try:
        with throttle.attempt(address) as outcome:
            try:
                return await attempt
            except failure:
                outcome.failed()
                raise
    except Throttled:
        close = getattr(attempt, "close", None)
        if close is not None:
            close()
        raise
