# -*- test-case-name: tests.derp.test_admission -*-
"""
``derp.server.verify_clients``: :class:`NodeKeyAdmission`, the check a DERP
client's node key passes before the relay serves it.

A key the control plane holds in memory is admitted at once. With several
instances on one database, memory follows the others' registrations through
the change feed, so a node registered elsewhere a moment ago may not be there
yet: on a miss the key is looked up in the database before the client is
refused. The look-up is bounded in time (``timeout``, refused when it passes)
and in number (at most ``max_lookups`` at once; beyond that, unknown keys are
refused without asking), so a flood of made-up keys cannot queue work on the
database.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

__all__ = ["NodeKeyAdmission"]


class NodeKeyAdmission:
    """
    A ``verify_client`` for :class:`~headscale_tw.derp.server.DERPServer`.

    :param known: whether a ``nodekey:<hex>`` is in this instance's memory.
    :param clock: the injected clock (look-up timeouts).
    :param lookup: the database look-up of a node key (a node row or ``None``);
        without it a miss is refused at once (a single instance: memory is the truth).
    :param timeout: seconds one look-up may take.
    :param max_lookups: look-ups running at once, at most.
    """

    log = Logger()

    def __init__(self, known: Callable[[str], bool], clock: IReactorTime,
                 lookup: Callable[[str], Awaitable[Any]] | None = None,
                 timeout: float = 3.0, max_lookups: int = 32) -> None:
        self._known = known
        self.clock = clock
        self._lookup = lookup
        self.timeout = timeout
        self.max_lookups = max_lookups
        #: Look-ups under way.
        self.in_flight = 0
        #: Keys admitted because the database knew them and memory did not (yet).
        self.found_in_database = 0

    def __call__(self, node_key: str) -> bool | defer.Deferred:
        """``True`` or ``False`` at once, or a Deferred firing with one after a database look-up."""
        if self._known(node_key):
            return True
        if self._lookup is None:
            return False
        if self.in_flight >= self.max_lookups:
            self.log.debug("DERP admission: {count} look-ups under way, refusing {key} unchecked",
                           count=self.in_flight, key=node_key)
            return False
        self.in_flight += 1
        d = defer.Deferred.fromCoroutine(self._ask(node_key))
        d.addTimeout(self.timeout, self.clock)

        def release(result: Any) -> Any:
            self.in_flight -= 1
            return result

        def found(row: Any) -> bool:
            if row is None:
                return False
            self.found_in_database += 1
            return True

        def failed(failure: Any) -> Any:
            if failure.check(defer.CancelledError):
                return failure  # the connection went away: nobody waits for the answer
            self.log.warn("DERP admission: could not look {key} up in the database, refusing it: {error}",
                          key=node_key, error=failure.getErrorMessage() or failure.type.__name__)
            return False

        d.addBoth(release)
        d.addCallbacks(found, failed)
        return d

    async def _ask(self, node_key: str) -> Any:
        assert self._lookup is not None
        return await self._lookup(node_key)
