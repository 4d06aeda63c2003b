# -*- test-case-name: tests.test_logs -*-
"""Tests for headscale_tw.logs and the log observer the service hands to twistd."""

import io
import json
import os
import signal
import sys

from twisted.application import service
from twisted.internet.testing import MemoryReactor
from twisted.logger import ILogObserver, Logger, LogLevel, formatEvent
from twisted.python.failure import Failure
from twisted.trial import unittest

from headscale_tw.config.model import Config, LogConfig
from headscale_tw.logs import RedactingObserver, configured_observer, stdout_observer, twistd_observer, twisted_level
from headscale_tw.service import HeadscaleService

__all__ = ["LevelTests", "RedactingObserverTests", "DestinationTests", "ServiceObserverTests"]

_KEY = "hskey-api-abcdefabcdef-" + "Q" * 43


def _emit_all(observer, namespace="headscale_tw.test"):
    log = Logger(namespace=namespace, observer=observer)
    log.debug("a debug line")
    log.info("an info line")
    log.warn("a warn line")
    log.error("an error line")
    log.critical("a critical line")


class LevelTests(unittest.TestCase):
    """log.level decides which events reach the output, whoever emitted them."""

    def _levels(self, level: str, namespace: str = "headscale_tw.test") -> list:
        events: list = []
        _emit_all(configured_observer(events.append, LogConfig(level=level)), namespace)
        return [e["log_level"] for e in events]

    def test_error(self):
        """At error only error and critical events pass."""
        self.assertEqual(self._levels("error"), [LogLevel.error, LogLevel.critical])

    def test_twisted_namespaces_too(self):
        """Twisted's own loggers are filtered the same way."""
        self.assertEqual(self._levels("warn", "twisted.web.http"), [LogLevel.warn, LogLevel.error, LogLevel.critical])

    def test_debug_and_trace(self):
        """debug and trace let everything through."""
        self.assertEqual(len(self._levels("debug")), 5)
        self.assertEqual(len(self._levels("trace")), 5)

    def test_twisted_per_connection_lines_are_debug(self):
        """Twisted's "Timing out client" lines pass only at debug."""
        for level, expected in (("info", 0), ("debug", 2)):
            events: list = []
            log = Logger(namespace="twisted.web.http.HTTPChannel",
                         observer=configured_observer(events.append, LogConfig(level=level)))
            log.info("Timing out client: {peer}", peer="IPv4Address(TCP, '192.0.2.1', 4000)")
            log.info("Timing out client {client}", client="x")
            log.info("Site starting on 8080")
            self.assertEqual(len(events), expected + 1)

    def test_mapping(self):
        """Headscale's level names map onto Twisted's; unknown names fall back to info."""
        self.assertEqual([twisted_level(n) for n in ("trace", "info", "warn", "fatal", "panic", "odd")],
                         [LogLevel.debug, LogLevel.info, LogLevel.warn, LogLevel.critical, LogLevel.critical,
                          LogLevel.info])


class RedactingObserverTests(unittest.TestCase):
    """No secret leaves the observer, in fields or in tracebacks."""

    def test_field_redacted(self):
        """A key passed as a format field is redacted in the rendered text."""
        events: list = []
        Logger(observer=RedactingObserver(events.append)).info("login with {key} from {who}", key=_KEY, who="x")
        (event,) = events
        text = formatEvent(event)
        self.assertNotIn("Q" * 43, text)
        self.assertIn("hskey-api-abcdefabcdef-***", text)
        self.assertNotIn("key", [k for k in event if not k.startswith("log_")])

    def test_traceback_redacted(self):
        """An exception message holding a key is redacted in the logged traceback."""
        events: list = []
        try:
            raise ValueError(f"bad key {_KEY}")
        except ValueError:
            failure = Failure()
        Logger(observer=RedactingObserver(events.append)).failure("request failed", failure)
        (event,) = events
        self.assertNotIn("log_failure", event)
        self.assertIn("ValueError", formatEvent(event))
        self.assertNotIn("Q" * 43, formatEvent(event))

    def test_clean_event_unchanged(self):
        """An event without a secret is passed on as it is (braces in fields survive)."""
        events: list = []
        Logger(observer=RedactingObserver(events.append)).info("node {name}", name="{odd}")
        self.assertEqual(formatEvent(events[0]), "node {odd}")
        self.assertEqual(events[0]["name"], "{odd}")


class DestinationTests(unittest.TestCase):
    """Where each entry point's observer writes."""

    def test_stdout_text_and_json(self):
        """stdout_observer writes text lines, or JSON with log.format json, behind the level."""
        text, js = io.StringIO(), io.StringIO()
        _emit_all(stdout_observer(LogConfig(level="error"), text))
        _emit_all(stdout_observer(LogConfig(level="fatal", format="json"), js))
        self.assertEqual(len(text.getvalue().splitlines()), 2)
        self.assertIn("an error line", text.getvalue())
        records = [json.loads(line) for line in js.getvalue().splitlines()]
        self.assertEqual([(r["level"], r["message"]) for r in records], [("fatal", "a critical line")])

    def test_twistd_nodaemon_stdout(self):
        """twistd -n without --logfile logs to stdout."""
        out = io.StringIO()
        self.patch(sys, "stdout", out)
        _emit_all(twistd_observer({"nodaemon": True, "logfile": None}, LogConfig(level="info")))
        self.assertEqual(len(out.getvalue().splitlines()), 4)

    def test_twistd_logfile(self):
        """twistd --logfile=PATH logs to that file, behind the level."""
        self.addCleanup(signal.signal, signal.SIGUSR1, signal.getsignal(signal.SIGUSR1))
        path = os.path.abspath(self.mktemp())
        observer = twistd_observer({"nodaemon": False, "logfile": path}, LogConfig(level="warn"))
        _emit_all(observer)
        with open(path) as f:
            self.assertEqual(len(f.read().splitlines()), 3)


class ServiceObserverTests(unittest.TestCase):
    """The service hands its observer to the twistd Application it joins."""

    def test_sets_component(self):
        """An Application without an ILogObserver gets the service's observer."""
        observer = stdout_observer(LogConfig(), io.StringIO())
        application = service.Application("headscale")
        HeadscaleService(Config(), MemoryReactor(), log_observer=observer).setServiceParent(application)
        self.assertIs(application.getComponent(ILogObserver), observer)
        self.assertEqual(len(list(service.IServiceCollection(application))), 1)

    def test_keeps_existing_component(self):
        """An observer the application already has (the .tac's) is kept."""
        mine, theirs = stdout_observer(LogConfig(), io.StringIO()), stdout_observer(LogConfig(), io.StringIO())
        application = service.Application("headscale")
        application.setComponent(ILogObserver, theirs)
        HeadscaleService(Config(), MemoryReactor(), log_observer=mine).setServiceParent(application)
        self.assertIs(application.getComponent(ILogObserver), theirs)


class _CountedField:
    """A log field that counts how often it is rendered."""

    def __init__(self) -> None:
        self.renders = 0

    def __format__(self, spec: str) -> str:
        self.renders += 1
        return "node-7"


class RenderedOnceTests(unittest.TestCase):
    """An event is rendered once on its way to the text or JSON output, not once per observer."""

    def _log(self, log_format: str):
        stream = io.StringIO()
        field = _CountedField()
        log = Logger(namespace="headscale_tw.test",
                     observer=stdout_observer(LogConfig(level="info", format=log_format), stream))
        log.info("registered node {name}", name=field)
        return stream.getvalue(), field.renders

    def test_text_output_renders_the_message_once(self):
        """The text line has the message and renders its fields once (redaction and output share it)."""
        text, renders = self._log("text")
        self.assertIn("[headscale_tw.test#info] registered node node-7\n", text)
        self.assertEqual(renders, 1)

    def test_json_output_renders_the_message_once(self):
        """The JSON line's message renders its fields once too."""
        text, renders = self._log("json")
        self.assertEqual(json.loads(text)["message"], "registered node node-7")
        self.assertEqual(renders, 1)

    def test_text_line_matches_twisteds_own(self):
        """With a traceback and a system, the line is what ``textFileLogObserver`` writes."""
        from twisted.logger import textFileLogObserver

        try:
            1 / 0
        except ZeroDivisionError:
            failure = Failure()
        for extra in ({"log_system": "HTTPChannel,3,127.0.0.1"}, {}):
            event = {"log_format": "broke {what}", "what": "here", "log_time": 1_700_000_000.25,
                     "log_level": LogLevel.error, "log_namespace": "headscale_tw.test",
                     "log_failure": failure, **extra}
            ours, theirs = io.StringIO(), io.StringIO()
            stdout_observer(LogConfig(level="info"), ours)(dict(event))
            textFileLogObserver(theirs)(dict(event))
            self.assertEqual(ours.getvalue(), theirs.getvalue())
