# -*- test-case-name: tests.storage.test_stores -*-
"""
What every store shares: the pool, the injected clock, and conversions
between row values and model fields.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from headscale_tw.clock import utc_now
from headscale_tw.storage.database import DatabasePool, required_bytes, required_datetime, to_bytes, to_datetime

__all__ = ["StoreBase", "to_datetime", "to_bytes", "required_datetime", "required_bytes", "to_bool", "json_list", "json_dict", "dump_json"]


def to_bool(value: Any) -> bool:
    """SQLite hands back booleans as 0/1."""
    return bool(value)


def json_list(text: str | None) -> tuple[str, ...]:
    """A stored JSON array as a tuple (``None`` or empty text: empty)."""
    if not text:
        return ()
    return tuple(json.loads(text))


def json_dict(text: str | None) -> dict:
    """A stored JSON object as a dict (``None`` or empty text: empty)."""
    if not text:
        return {}
    value = json.loads(text)
    return value if isinstance(value, dict) else {}


def dump_json(value: Any) -> str:
    """Compact JSON text for a list, tuple or dict column."""
    if isinstance(value, tuple):
        value = list(value)
    return json.dumps(value, separators=(",", ":"))


class StoreBase:
    """A store: SQL for one table area, run through one :class:`DatabasePool`."""

    def __init__(self, pool: DatabasePool, clock: Any):
        self._pool = pool
        self._clock = clock

    def _now(self, now: datetime | None = None) -> datetime:
        if now is not None:
            return now
        return utc_now(self._clock)
