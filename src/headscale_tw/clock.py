# -*- test-case-name: tests.test_clock -*-
"""
The one place where times become wall-clock ``datetime`` objects.

Domain objects and stores take an ``IReactorTime`` so that tests drive time
with :class:`twisted.internet.task.Clock`; whenever they need a timestamp
(expiry, ``last_seen``, ``created_at``) they ask :func:`utc_now`. Seconds from
elsewhere (a JWT claim, a log event) go through :func:`utc_from_seconds`, and a
``datetime`` read or parsed from outside through :func:`as_utc`.
"""

from __future__ import annotations

from datetime import datetime, timezone

from twisted.internet.interfaces import IReactorTime

__all__ = ["utc_now", "utc_from_seconds", "as_utc"]


def utc_now(clock: IReactorTime) -> datetime:
    """Return ``clock``'s current time as an aware UTC ``datetime``."""
    return utc_from_seconds(clock.seconds())


def utc_from_seconds(seconds: float) -> datetime:
    """Seconds since the epoch as an aware UTC ``datetime``.

    :raises OverflowError, OSError, ValueError: when no ``datetime`` can hold the time.
    """
    return datetime.fromtimestamp(seconds, timezone.utc)


def as_utc(value: datetime) -> datetime:
    """``value`` in UTC; a naive ``datetime`` is taken to be UTC already (every clock here is UTC)."""
    if value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)
