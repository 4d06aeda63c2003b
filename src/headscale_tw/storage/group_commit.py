# -*- test-case-name: tests.storage.test_group_commit -*-
"""
Group commit for the one SQLite connection.

With ``synchronous=FULL`` every commit waits for an ``fsync`` (about 1 ms on
the benchmark machine), and the single connection does nothing else meanwhile:
under a burst of logins (four commits each) it spent half its time there, and
every database step of a login queued behind it.

:class:`GroupCommit` therefore queues the interactions submitted while a
transaction runs, and when it ends runs them together in *one* transaction (at
most :data:`GROUP_COMMIT_MAX`), each inside its own ``SAVEPOINT``: one that
raises is rolled back to its savepoint and gets its own error, the others are
unaffected, and every caller's result arrives only after the shared ``COMMIT``
returned, so a result still means "on disk". An interaction submitted while
nothing runs starts at once, alone, exactly as without grouping. Order is kept:
a raw connection use (``run_with_connection``) runs alone in its place. A pool
that answers at once (the threadless test pool) is drained in a loop, so long
chains of interactions do not nest calls.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

__all__ = ["GROUP_COMMIT_MAX", "GroupCommit"]

#: Interactions that may share one transaction.
GROUP_COMMIT_MAX = 64


@dataclass
class _Queued:
    """An interaction (or, ``raw``, a use of the bare connection) waiting for the connection."""

    desc: str
    fn: Callable[..., Any]
    args: tuple
    done: Deferred
    raw: bool = False


class GroupCommit:
    """
    The queue in front of an ``adbapi.ConnectionPool`` with one connection.

    ``single(cursor, desc, fn, args)`` runs one interaction in its own
    transaction (as the pool does without grouping); ``begin(cursor)`` starts a
    shared transaction and returns the ``Txn`` its members get.
    """

    def __init__(self, pool: Any, single: Callable[..., Any], begin: Callable[[Any], Any]) -> None:
        self._pool = pool
        self._single = single
        self._begin = begin
        self._queue: list[_Queued] = []
        self._running = False
        #: Transactions (and raw connection uses) started, for work-count tests.
        self.transactions = 0

    def submit(self, desc: str, fn: Callable[..., Any], args: tuple, raw: bool = False) -> Deferred:
        """Queue ``fn(txn, *args)`` (or, ``raw``, ``fn(connection, *args)``); fires with its outcome."""
        item = _Queued(desc, fn, args, Deferred(), raw)
        self._queue.append(item)
        if not self._running:
            self._run_queue()
        return item.done

    def _next_group(self) -> list[_Queued]:
        """The queue's head: one raw connection use alone, else the interactions up to the next one."""
        queue = self._queue
        if queue[0].raw:
            return [queue.pop(0)]
        end = 1
        while end < len(queue) and end < GROUP_COMMIT_MAX and not queue[end].raw:
            end += 1
        group = queue[:end]
        del queue[:end]
        return group

    def _run_queue(self) -> None:
        """Start groups until one is left running on the pool's thread (or the queue is empty)."""
        self._running = True
        while self._queue:
            group = self._next_group()
            self.transactions += 1
            first = group[0]
            if first.raw:
                d = self._pool.runWithConnection(first.fn, *first.args)
            elif len(group) == 1:
                d = self._pool.runInteraction(self._single, first.desc, first.fn, first.args)
            else:
                d = self._pool.runInteraction(self._run_group, group)
            finished: list = []
            d.addBoth(finished.append)
            if not finished:
                d.addCallback(lambda _, group=group: self._finished_later(group, finished[0]))
                return
            self._deliver(group, finished[0])
        self._running = False

    def _finished_later(self, group: list[_Queued], result: Any) -> None:
        self._deliver(group, result)
        self._run_queue()

    @staticmethod
    def _deliver(group: list[_Queued], result: Any) -> None:
        """Fire each caller's Deferred: its own outcome, or the whole transaction's failure."""
        if isinstance(result, Failure):
            for item in group:
                item.done.errback(result)
            return
        if len(group) == 1:  # ran alone, as without grouping
            group[0].done.callback(result)
            return
        for item, (ok, value) in zip(group, result):
            if ok:
                item.done.callback(value)
            else:
                item.done.errback(value)

    def _run_group(self, cursor: Any, group: list[_Queued]) -> list[tuple[bool, Any]]:
        """Run several interactions in one transaction, each in a savepoint (on the pool's thread)."""
        txn = self._begin(cursor)
        outcomes: list[tuple[bool, Any]] = []
        for item in group:
            cursor.execute("SAVEPOINT interaction")
            try:
                value = item.fn(txn, *item.args)
            except Exception:
                failure = Failure()
                # Should undoing fail, the exception ends the transaction: everyone gets it.
                cursor.execute("ROLLBACK TO SAVEPOINT interaction")
                cursor.execute("RELEASE SAVEPOINT interaction")
                outcomes.append((False, failure))
            else:
                cursor.execute("RELEASE SAVEPOINT interaction")
                outcomes.append((True, value))
        return outcomes
