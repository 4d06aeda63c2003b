# -*- test-case-name: tests.config.test_durations -*-
"""
Go-style durations, shared by the config loader and the CLI.

Headscale reads durations with Go's ``time.ParseDuration`` (``"30m"``,
``"1h30m"``, ``"1.5h"``, ``"300ms"``) and, for ``node.expiry``, Prometheus'
``model.ParseDuration`` (``"180d"``, ``"1w"``, ``"1y"``). ``parse_duration``
accepts the union of both, plus plain numbers meaning seconds, and returns
``float`` seconds. ``format_duration`` is the inverse for display.
"""

from __future__ import annotations

import json
import math
import re

__all__ = ["DurationError", "parse_duration", "format_duration"]


def _q(value: object) -> str:
    """Quote a value the way Go's %q does (double quotes) for messages."""
    return json.dumps(value) if isinstance(value, str) else repr(value)

_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "\u00b5s": 1e-6,
    "\u03bcs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
    "d": 86400.0,
    "w": 7 * 86400.0,
    "y": 365 * 86400.0,
}

# One "<number><unit>" group; longer units first so "ms" wins over "m".
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|\u00b5s|\u03bcs|ms|s|m|h|d|w|y)")
_NUMBER = re.compile(r"[+-]?(\d+(?:\.\d*)?|\.\d+)")


class DurationError(ValueError):
    """The text is not a duration; the message says what was expected."""


def parse_duration(value: object) -> float:
    """
    Return ``value`` as seconds (``float``).

    Accepts ``int``/``float`` (seconds), numeric strings (seconds) and Go-style
    strings such as ``"1h30m"``; a leading ``-`` gives a negative result (callers
    that forbid negatives check the sign). Raises :class:`DurationError`.
    """
    if isinstance(value, bool):
        raise DurationError(f"expected a duration such as \"30m\", got {_q(value)}")
    if isinstance(value, (int, float)):
        seconds = float(value)
        if math.isnan(seconds) or math.isinf(seconds):
            raise DurationError(f"{_q(value)} is not a finite duration")
        return seconds
    if not isinstance(value, str):
        raise DurationError(f"expected a duration such as \"30m\", got {type(value).__name__}")
    text = value.strip()
    if not text:
        raise DurationError("expected a duration such as \"30m\", got an empty string")
    if _NUMBER.fullmatch(text):
        return float(text)
    sign = 1.0
    body = text
    if body[0] in "+-":
        sign = -1.0 if body[0] == "-" else 1.0
        body = body[1:]
    total = 0.0
    pos = 0
    while pos < len(body):
        m = _PART.match(body, pos)
        if m is None:
            raise DurationError(
                f"{_q(value)} is not a duration (use a number of seconds or units "
                f"ns, us, ms, s, m, h, d, w, y as in \"1h30m\")"
            )
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if pos == 0:
        raise DurationError(f"{_q(value)} is not a duration")
    return sign * total


def format_duration(seconds: float) -> str:
    """Format seconds the way Headscale's example config writes them (``"30m"``, ``"1h30m"``, ``"0"``)."""
    if seconds == 0:
        return "0"
    sign = "-" if seconds < 0 else ""
    seconds = abs(seconds)
    if seconds < 1:
        ms = seconds * 1000
        return f"{sign}{ms:g}ms"
    out = []
    whole = int(seconds)
    frac = seconds - whole
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        out.append(f"{hours}h")
    if minutes:
        out.append(f"{minutes}m")
    if secs or frac:
        out.append(f"{secs + frac:g}s")
    return sign + "".join(out)
