# -*- test-case-name: tests.cli.test_output,tests.web.test_admin_api -*-
"""
RFC 3339 timestamps as protobuf JSON writes them, in one low-layer module.

The admin API (``web/``) answers with these and the CLI (``cli/``) parses and
prints them; both import them from here so that neither layer imports the other.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

from headscale_tw.clock import as_utc

__all__ = ["parse_timestamp", "format_timestamp"]

_TS = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?(Z|z|[+-]\d{2}:\d{2})$",
    re.ASCII,
)


def parse_timestamp(text: str) -> tuple[datetime, int]:
    """Parse an RFC 3339 timestamp; return the UTC ``datetime`` and its nanoseconds part.

    :raises ValueError: naming the text when it is not RFC 3339 (or names a
        day, hour or offset that does not exist).
    """
    m = _TS.match(text) if isinstance(text, str) and len(text) <= 64 else None
    if m is None:
        shown = text if not isinstance(text, str) or len(text) <= 64 else text[:64] + "..."
        raise ValueError(f"{shown!r} is not an RFC 3339 timestamp such as 2030-01-02T03:04:05Z")
    year, month, day, hour, minute, second = (int(m.group(i)) for i in range(1, 7))
    frac = (m.group(7) or "").ljust(9, "0")
    nanos = int(frac)
    tz = m.group(8)
    try:
        if tz in ("Z", "z"):
            offset = timezone.utc
        else:
            sign = 1 if tz[0] == "+" else -1
            offset = timezone(sign * timedelta(hours=int(tz[1:3]), minutes=int(tz[4:6])))
        dt = datetime(year, month, day, hour, minute, second, nanos // 1000, tzinfo=offset)
        return dt.astimezone(timezone.utc), nanos
    except (ValueError, OverflowError) as e:
        raise ValueError(f"{text!r} is not a valid time: {e}") from None


def format_timestamp(dt: datetime) -> str:
    """A ``datetime`` as protobuf JSON does it: UTC, ``Z``, 0/3/6 fractional digits."""
    dt = as_utc(dt)
    base = dt.strftime("%Y-%m-%dT%H:%M:%S")
    us = dt.microsecond
    if us == 0:
        return base + "Z"
    if us % 1000 == 0:
        return f"{base}.{us // 1000:03d}Z"
    return f"{base}.{us:06d}Z"
