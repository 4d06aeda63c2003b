# -*- test-case-name: tests.test_logs -*-
"""
Log output: ``log.level`` and ``log.format`` applied to the one observer each entry point installs.

Twisted's loggers and ours all publish to the global log publisher, which hands
every event to the observer that ``twistd``, ``headscale serve`` or
``etc/headscale.tac`` installed. That observer is built here, always as::

    level filter (log.level)  ->  redaction (headscale_tw.redact)  ->  text or JSON output

so ``log.level: error`` silences every info and debug line, whoever emitted it,
and no secret reaches the output whatever a message or traceback contains.

Headscale's levels map onto Twisted's: ``trace`` and ``debug`` are debug,
``info`` is info, ``warn`` is warn, ``error`` is error, ``fatal`` and ``panic``
are critical.

- ``headscale serve`` passes :func:`stdout_observer` to ``globalLogBeginner``;
- the ``.tac`` sets :func:`stdout_observer` as the application's ``ILogObserver``;
- ``twistd headscale`` gets :func:`twistd_observer`, which writes where twistd
  itself would (``--logfile``, stdout with ``-n``, ``twistd.log``, ``--syslog``);
  the service sets it as the application's ``ILogObserver`` when twistd attaches
  it (see :meth:`headscale_tw.service.HeadscaleService.setServiceParent`).
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import IO, Any, cast

from twisted.logger import (
    FileLogObserver,
    FilteringLogObserver,
    ILogFilterPredicate,
    ILogObserver,
    LegacyLogObserverWrapper,
    LogLevel,
    LogLevelFilterPredicate,
    PredicateResult,
    formatEvent,
    formatEventAsClassicLogText,
    formatTime,
)
from zope.interface import implementer

from headscale_tw.json_log import RENDERED_MESSAGE, RENDERED_TRACEBACK, JSONLinesObserver
from headscale_tw.redact import redact

__all__ = [
    "LEVELS",
    "twisted_level",
    "RedactingObserver",
    "PER_CONNECTION_FORMATS",
    "PerConnectionNoise",
    "classic_line",
    "configured_observer",
    "stdout_observer",
    "twistd_observer",
]

#: Headscale's ``log.level`` names and the Twisted level each one lets through (and above).
LEVELS: Mapping[str, LogLevel] = {
    "trace": LogLevel.debug,
    "debug": LogLevel.debug,
    "info": LogLevel.info,
    "warn": LogLevel.warn,
    "error": LogLevel.error,
    "fatal": LogLevel.critical,
    "panic": LogLevel.critical,
}

#: Keys an event keeps when :class:`RedactingObserver` replaces its text.
_KEPT = ("log_time", "log_level", "log_namespace", "log_system", "log_source", "log_logger")


def twisted_level(name: str) -> LogLevel:
    """The Twisted level for a ``log.level`` value (unknown names: info, as the config's default)."""
    return LEVELS.get((name or "info").lower(), LogLevel.info)


def _escape(text: str) -> str:
    return text.replace("{", "{{").replace("}", "}}")


def _traceback(failure: Any) -> str:
    try:
        return str(failure.getTraceback())
    except BaseException as e:  # as Twisted's own text rendering does
        return "(UNABLE TO OBTAIN TRACEBACK FROM EVENT):" + str(e)


@implementer(ILogObserver)
class RedactingObserver:
    """Pass events to ``observer`` with any secret in their text (message and traceback) replaced.

    An event whose rendered text holds no secret is passed on as a copy carrying
    that rendering (:data:`~headscale_tw.json_log.RENDERED_MESSAGE` and
    :data:`~headscale_tw.json_log.RENDERED_TRACEBACK`), so the output observers
    (:func:`classic_line`, :class:`~headscale_tw.json_log.JSONLinesObserver`) do not
    render it again; one that does is replaced by an event whose only text is the
    redacted rendering (its traceback included), so no field of the original can
    leak the secret.
    """

    def __init__(self, observer: ILogObserver) -> None:
        self._observer = observer

    def __call__(self, event: dict) -> None:
        message = formatEvent(event)
        failure = event.get("log_failure")
        traceback = None if failure is None else _traceback(failure)
        text = message if traceback is None else message + "\n" + traceback
        clean = redact(text)
        if clean != text:
            forwarded = {key: event[key] for key in _KEPT if key in event}
            forwarded["log_format"] = _escape(clean)
            forwarded[RENDERED_MESSAGE] = clean
        else:
            forwarded = dict(event)
            forwarded[RENDERED_MESSAGE] = message
            if traceback is not None:
                forwarded[RENDERED_TRACEBACK] = traceback
        self._observer(forwarded)


class _SecondStamps:
    """``formatTime`` (RFC 3339, one-second resolution) of the last whole second, kept."""

    def __init__(self) -> None:
        self._second: int | None = None
        self._text = "-"

    def __call__(self, when: object) -> str:
        if not isinstance(when, (int, float)):
            return "-"
        second = int(when // 1)
        if second != self._second:
            self._second, self._text = second, formatTime(when)
        return self._text


_stamps = _SecondStamps()


def classic_line(event: dict) -> str | None:
    """
    Twisted's classic text line (``formatEventAsClassicLogText``) for ``event``, from the text
    :class:`RedactingObserver` already rendered when it is there (rendered once per event),
    the time stamp computed once per second.
    """
    message = event.get(RENDERED_MESSAGE)
    if message is None:
        return formatEventAsClassicLogText(event)
    traceback = event.get(RENDERED_TRACEBACK)
    text = message if traceback is None else message + "\n" + traceback
    if not text:
        return None
    system = event.get("log_system")
    if system is None:
        level = event.get("log_level")
        system = f"{event.get('log_namespace', '-')}#{getattr(level, 'name', '-') if level is not None else '-'}"
    return f"{_stamps(event.get('log_time'))} [{system}] {text}".replace("\n", "\n\t") + "\n"


#: Twisted's own per-connection lines, emitted at info once for every idle or slow
#: client (a slowloris run writes one per connection): treated as debug here.
PER_CONNECTION_FORMATS = frozenset({
    "Timing out client: {peer}",  # twisted.web.http.HTTPChannel
    "Forcibly timing out client: {peer}",
    "Timing out client {client}",  # Twisted's HTTP/2 server connection (H2Connection)
    "Forcibly timing out client: {client}",
})


@implementer(ILogFilterPredicate)
class PerConnectionNoise:
    """Drop the events of :data:`PER_CONNECTION_FORMATS` unless ``level`` lets debug events through."""

    def __init__(self, level: LogLevel) -> None:
        self._keep = level <= LogLevel.debug

    def __call__(self, event: dict) -> PredicateResult:
        if not self._keep and event.get("log_format") in PER_CONNECTION_FORMATS:
            return PredicateResult.no
        return PredicateResult.maybe


def configured_observer(output: ILogObserver, log_config: Any) -> ILogObserver:
    """``output`` behind the ``log.level`` filter (per-connection noise counted as debug) and redaction."""
    level = twisted_level(getattr(log_config, "level", "info"))
    predicates = [PerConnectionNoise(level), LogLevelFilterPredicate(defaultLogLevel=level)]
    return FilteringLogObserver(RedactingObserver(output), predicates)


def _format_observer(stream: IO[str], log_config: Any) -> ILogObserver:
    if getattr(log_config, "format", "text") == "json":
        return JSONLinesObserver(stream)  # one JSON object per line (headscale_tw.json_log)
    return FileLogObserver(stream, classic_line)  # textFileLogObserver's lines, without rendering again


def stdout_observer(log_config: Any, stream: IO[str] | None = None) -> ILogObserver:
    """Text (or JSON, ``log.format: json``) lines on ``stream`` (stdout), filtered and redacted."""
    return configured_observer(_format_observer(stream or sys.stdout, log_config), log_config)


def twistd_observer(twistd_options: Mapping[str, Any] | None, log_config: Any) -> ILogObserver:
    """The observer for ``twistd headscale``: where twistd's own options send the log, filtered and redacted.

    ``twistd_options`` are twistd's parsed options (``logfile``, ``nodaemon``,
    ``syslog``, ``prefix``): ``--syslog`` goes to syslog; ``--logfile=-`` or
    ``-n`` without ``--logfile`` to stdout; otherwise to ``--logfile`` (default
    ``twistd.log``), a ``LogFile`` that rotates by size and on SIGUSR1, as twistd does.
    """
    options = twistd_options or {}
    if options.get("syslog"):
        from twisted.python import log as legacy_log
        from twisted.python import syslog

        # Twisted annotates the legacy observer as log.ILogObserver; it is any callable taking an event dict.
        legacy = cast(legacy_log.ILogObserver, syslog.SyslogObserver(options.get("prefix") or "twisted").emit)
        output: ILogObserver = LegacyLogObserverWrapper(legacy)
        return configured_observer(output, log_config)
    path = options.get("logfile") or ""
    if path == "-" or (not path and options.get("nodaemon")):
        return stdout_observer(log_config)
    from twisted.python import logfile

    log_file = logfile.LogFile.fromFullPath(path or "twistd.log")
    _rotate_on_sigusr1(log_file)
    return configured_observer(_format_observer(log_file, log_config), log_config)


def _rotate_on_sigusr1(log_file: Any) -> None:
    import signal

    if signal.getsignal(signal.SIGUSR1) in (None, signal.SIG_DFL):
        def rotate(signum: int, frame: Any) -> None:
            from twisted.internet import reactor
            from twisted.internet.interfaces import IReactorFromThreads

            # A signal handler must not touch the reactor's state: hand the rotation to its thread.
            cast(IReactorFromThreads, reactor).callFromThread(log_file.rotate)

        signal.signal(signal.SIGUSR1, rotate)
