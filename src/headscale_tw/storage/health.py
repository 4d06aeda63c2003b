# -*- test-case-name: tests.storage.test_health -*-
"""
Whether the database answers, known without a round trip: :class:`DatabaseHealth`.

``GET /health`` used to read the database on every call, so under load (a
reconnect storm queues hundreds of interactions) the answer waited seconds
behind real work, and each probe added to the queue. Now the answer comes from
memory:

- every interaction that returns counts as proof of life
  (:attr:`~headscale_tw.storage.database.DatabasePool.last_success`);
- :meth:`DatabaseHealth.tick` (a ``TimerService`` every ``interval`` seconds)
  runs one ``SELECT 1`` only when nothing succeeded for ``interval`` seconds,
  and gives it ``timeout`` seconds;
- :meth:`DatabaseHealth.healthy` is true while the newest success is newer
  than the newest failed or timed-out probe, and not older than
  ``2 * interval + timeout`` (the longest gap a working database can leave).

A broken database therefore reads as unhealthy at most ``interval + timeout``
seconds after it stops answering.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.logger import Logger

__all__ = ["DatabaseHealth"]


def _probe_txn(txn) -> None:
    txn.query_one("SELECT 1")


class DatabaseHealth:
    """Database liveness from the pool's last success and a periodic probe.

    ``pool`` is a :class:`~headscale_tw.storage.database.DatabasePool`
    (``last_success`` and ``run_interaction``); ``clock`` an ``IReactorTime``.
    """

    log = Logger()

    def __init__(self, pool, clock, interval: float = 10.0, timeout: float = 5.0) -> None:
        self.pool = pool
        self.clock = clock
        self.interval = interval
        self.timeout = timeout
        self.last_failure: float | None = None
        self.probes = 0
        self._probing: Deferred | None = None

    def healthy(self) -> bool:
        """True while the database has answered recently and no later probe failed."""
        success = self.pool.last_success
        if success is None:
            return False
        if self.last_failure is not None and self.last_failure >= success:
            return False
        return self.clock.seconds() - success <= 2 * self.interval + self.timeout

    def tick(self) -> Deferred | None:
        """Probe the database unless it answered within ``interval``; the probe's Deferred, or ``None``."""
        if self._probing is not None:
            return None
        success = self.pool.last_success
        if success is not None and self.clock.seconds() - success < self.interval:
            return None
        self.probes += 1
        self._probing = d = Deferred.fromCoroutine(self.pool.run_interaction("health_probe", _probe_txn))
        d.addTimeout(self.timeout, self.clock)
        d.addErrback(self._failed)
        d.addBoth(self._finished)
        return d

    def _failed(self, failure) -> None:
        self.last_failure = self.clock.seconds()
        self.log.warn("database health probe failed: {error}", error=failure.getErrorMessage())

    def _finished(self, result) -> None:
        self._probing = None
