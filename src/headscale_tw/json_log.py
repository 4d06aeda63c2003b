# -*- test-case-name: tests.test_json_log -*-
"""
``log.format: json``: one JSON object per line, as Headscale's (zerolog's) JSON log.

Each line holds ``time`` (RFC 3339, UTC), ``level`` (``debug``, ``info``,
``warn``, ``error``, ``fatal``), ``namespace``, ``message`` (the rendered
text, as the text format shows it) and, when there is one, ``error`` (the
traceback). The event's own fields (an access-log line's ``client``,
``method``, ``path``, ``route``, ``status``, ``bytes``, ``latency_ms``,
``listener``) follow as keys of their own when they are plain values
(text, numbers, booleans), so log pipelines can filter on them; text values
pass through :func:`~headscale_tw.redact.redact` as the message does.

Unlike Twisted's ``jsonFileLogObserver`` there is no record-separator byte
and no Python-specific payload: every line parses as JSON on its own.
"""

from __future__ import annotations

import json
from typing import IO

from twisted.logger import ILogObserver, LogLevel, formatEvent
from zope.interface import implementer

from headscale_tw.clock import utc_from_seconds
from headscale_tw.redact import redact

__all__ = ["JSONLinesObserver", "LEVEL_NAMES", "RENDERED_MESSAGE", "RENDERED_TRACEBACK"]

#: Event keys under which :class:`~headscale_tw.logs.RedactingObserver` passes on the
#: text it rendered (already redacted): the message, and the traceback when there is one.
#: Output observers use them instead of rendering the event a second time.
RENDERED_MESSAGE = "log_headscale_message"
RENDERED_TRACEBACK = "log_headscale_traceback"

#: Twisted levels under the names Headscale's JSON log uses.
LEVEL_NAMES = {
    LogLevel.debug: "debug",
    LogLevel.info: "info",
    LogLevel.warn: "warn",
    LogLevel.error: "error",
    LogLevel.critical: "fatal",
}

_RESERVED = frozenset({"time", "level", "namespace", "message", "error"})
_PLAIN = (str, int, float, bool)


@implementer(ILogObserver)
class JSONLinesObserver:
    """Writes each event to ``stream`` as one JSON line (see the module docstring)."""

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream

    def __call__(self, event: dict) -> None:
        when = event.get("log_time")
        level = event.get("log_level")
        record: dict = {
            "time": utc_from_seconds(when).isoformat(timespec="milliseconds")
            if isinstance(when, (int, float)) else None,
            "level": LEVEL_NAMES.get(level, getattr(level, "name", "info")),
            "namespace": event.get("log_namespace", ""),
            "message": event[RENDERED_MESSAGE] if RENDERED_MESSAGE in event else formatEvent(event),
        }
        failure = event.get("log_failure")
        if RENDERED_TRACEBACK in event:
            record["error"] = event[RENDERED_TRACEBACK]
        elif failure is not None:
            try:
                record["error"] = redact(failure.getTraceback())
            except Exception:
                record["error"] = "(traceback unavailable)"
        for key, value in event.items():
            if key.startswith("log_") or key in _RESERVED or not isinstance(value, _PLAIN):
                continue
            record[key] = redact(value) if isinstance(value, str) else value
        self._stream.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")
        flush = getattr(self._stream, "flush", None)
        if flush is not None:
            flush()
