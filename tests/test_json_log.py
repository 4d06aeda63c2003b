"""Tests for headscale_tw.json_log: ``log.format: json`` writes one JSON object per line."""

import io
import json

from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.trial import unittest

from headscale_tw.config.model import LogConfig
from headscale_tw.json_log import JSONLinesObserver
from headscale_tw.logs import stdout_observer

_KEY = "hskey-api-abcdefabcdef-" + "Q" * 43


class JSONLinesObserverTests(unittest.TestCase):
    """Each event is one line that parses as JSON, with Headscale's keys and the event's plain fields."""

    def _lines(self, emit, level="debug"):
        stream = io.StringIO()
        log = Logger(namespace="headscale_tw.test", observer=stdout_observer(LogConfig(level=level, format="json"),
                                                                             stream))
        emit(log)
        return [json.loads(line) for line in stream.getvalue().splitlines()]

    def test_access_line_fields(self):
        """An access-log event keeps its fields as JSON keys next to time, level and the rendered message."""
        (record,) = self._lines(lambda log: log.info('{client} "{method} {path}" {status}', client="192.0.2.1",
                                                     method="GET", path="/health", status=200, latency_ms=1.5))
        self.assertEqual(record["message"], '192.0.2.1 "GET /health" 200')
        self.assertEqual((record["level"], record["namespace"]), ("info", "headscale_tw.test"))
        self.assertEqual((record["client"], record["status"], record["latency_ms"]), ("192.0.2.1", 200, 1.5))
        self.assertTrue(record["time"].endswith("+00:00"))

    def test_secret_fields_redacted(self):
        """A secret in the message or in a field that the message does not show is redacted."""
        records = self._lines(lambda log: (log.info("path {path}", path="/x?key=" + _KEY), log.info("plain", token=_KEY)))
        text = json.dumps(records)
        self.assertNotIn("Q" * 43, text)
        self.assertEqual(len(records), 2)

    def test_failure(self):
        """A logged failure puts its traceback under ``error`` and the level under Headscale's name."""

        def emit(log):
            try:
                1 / 0
            except ZeroDivisionError:
                log.failure("it broke", Failure())

        (record,) = self._lines(emit)
        self.assertEqual((record["level"], record["message"]), ("fatal", "it broke"))
        self.assertIn("ZeroDivisionError", record["error"])

    def test_unserialisable_fields_skipped(self):
        """Fields that are not plain values (objects) are left out rather than breaking the line."""
        stream = io.StringIO()
        Logger(namespace="t", observer=JSONLinesObserver(stream)).info("x", thing=object(), count=3)
        record = json.loads(stream.getvalue())
        self.assertNotIn("thing", record)
        self.assertEqual(record["count"], 3)
