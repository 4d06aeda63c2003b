# -*- test-case-name: tests.test_clock -*-
"""
The one conversion from an injected reactor clock to a wall-clock ``datetime``.

Domain objects and stores take an ``IReactorTime`` so that tests drive time
with :class:`twisted.internet.task.Clock`; whenever they need a timestamp
(expiry, ``last_seen``, ``created_at``) they ask :func:`utc_now`.
"""

from __future__ import annotations

from datetime import datetime, timezone

from twisted.internet.interfaces import IReactorTime

__all__ = ["utc_now"]


def utc_now(clock: IReactorTime) -> datetime:
    """Return ``clock``'s current time as an aware UTC ``datetime``."""
    return datetime.fromtimestamp(clock.seconds(), timezone.utc)
