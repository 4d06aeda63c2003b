"""Tests for headscale_tw.web.access_log: route templates, counters and the access-log line."""

from twisted.internet.error import ConnectionLost
from twisted.internet.task import Clock
from twisted.logger import LogLevel, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial import unittest
from twisted.web.test.requesthelper import DummyRequest

from headscale_tw.counters import HTTPCounters
from headscale_tw.web.access_log import (
    CONTROL_ROUTES,
    OTHER_ROUTE,
    AccessLog,
    RouteTemplates,
    access_logs,
    admin_api_routes,
)


class RouteTemplateTests(unittest.TestCase):
    """Paths map to a bounded set of templates; anything else is ``other``."""

    def test_admin_routes_from_klein(self):
        """Every admin API route is a template, with Klein's parameters written ``{name}``."""
        routes = admin_api_routes()
        self.assertIn("/api/v1/node/{node_id}/rename/{new_name}", routes)
        self.assertIn("/api/v1/user", routes)
        self.assertFalse([r for r in routes if "<" in r or "__rest__" in r])

    def test_matching(self):
        """Parameters match one segment; fixed segments win over parameters; unknown paths are other."""
        templates = RouteTemplates(CONTROL_ROUTES + admin_api_routes())
        cases = {
            "/api/v1/node/12": "/api/v1/node/{node_id}",
            "/api/v1/node/12/": "/api/v1/node/{node_id}",
            "/api/v1/node/register": "/api/v1/node/register",
            "/api/v1/node/3/rename/laptop": "/api/v1/node/{node_id}/rename/{new_name}",
            "/register/abc123": "/register/{auth_id}",
            "/key": "/key",
            "/": "/",
            "/api/v1/node/3/unknown": OTHER_ROUTE,
            "/wp-admin/setup.php": OTHER_ROUTE,
            "/api/v1/node/a/b/c/d/e": OTHER_ROUTE,
        }
        self.assertEqual({path: templates.route(path) for path in cases}, cases)

    def test_each_listener_has_its_routes(self):
        """The metrics, Noise and HTTP-01 listeners' logs know their own templates only."""
        logs = access_logs(HTTPCounters(), Clock().seconds)
        self.assertEqual(logs["metrics"].routes.route("/metrics"), "/metrics")
        self.assertEqual(logs["noise"].routes.route("/machine/map"), "/machine/map")
        self.assertEqual(logs["noise"].routes.route("/api/v1/user"), OTHER_ROUTE)
        self.assertEqual(logs["acme"].routes.route("/.well-known/acme-challenge/abc"),
                         "/.well-known/acme-challenge/{token}")
        self.assertEqual(logs["unix"].routes.route("/api/v1/user/3"), "/api/v1/user/{user_id}")


class AccessLogTests(unittest.TestCase):
    """A finished request is counted under its template and logged with its redacted path."""

    def setUp(self):
        self.clock = Clock()
        self.counters = HTTPCounters()
        self.events: list = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def _finish(self, log: AccessLog, method: bytes, uri: bytes, code: int = 200, took: float = 0.25):
        request = DummyRequest([])
        request.method, request.uri, request.path, request.code = method, uri, uri.split(b"?")[0], code
        request.sentLength = 17
        log.started(request)
        self.clock.advance(took)
        log.finished(request)
        return [e for e in self.events if e.get("log_namespace") == "headscale_tw.web.access_log.AccessLog"][-1]

    def test_counted_and_logged(self):
        """Status, bytes and latency go to the counters and the line; the secret in the query does not."""
        log = access_logs(self.counters, self.clock.seconds)["control"]
        event = self._finish(log, b"GET", b"/register/abc?key=hskey-auth-abcdefabcdef-" + b"Z" * 40, 404)
        self.assertEqual(self.counters.requests, {("control", "/register/{auth_id}", "GET", "404"): 1})
        (histogram,) = [h for _, h in self.counters.seconds.items()]
        self.assertEqual((histogram.count, histogram.sum), (1, 0.25))
        self.assertEqual(event["path"], "/register/abc?key=***")
        self.assertEqual((event["status"], event["bytes"], event["latency_ms"]), (404, 17, 250.0))
        self.assertEqual(event["log_level"], LogLevel.debug)

    def test_unknown_method_and_long_path(self):
        """An unknown method is counted as OTHER and a very long path is cut in the line."""
        log = access_logs(self.counters, self.clock.seconds)["unix"]
        event = self._finish(log, b"BREW", b"/" + b"a" * 2000)
        self.assertEqual(list(self.counters.requests), [("unix", OTHER_ROUTE, "OTHER", "200")])
        self.assertEqual(event["method"], "BREW")
        self.assertLess(len(event["path"]), 600)
        self.assertEqual(event["log_level"], LogLevel.info)

    def test_below_threshold_counted_not_logged(self):
        """At ``log.level`` info a control request is counted but its debug line is not built."""
        log = access_logs(self.counters, self.clock.seconds, threshold=LogLevel.info)["control"]
        request = DummyRequest([])
        request.method, request.uri, request.path, request.code = b"GET", b"/key?v=133", b"/key", 200
        log.started(request)
        log.finished(request)
        self.assertEqual(self.counters.requests, {("control", "/key", "GET", "200"): 1})
        self.assertEqual([e for e in self.events if e.get("log_namespace") == "headscale_tw.web.access_log.AccessLog"],
                         [])

    def test_lost_connection_logged(self):
        """A request whose connection is lost before it finishes (a client leaving a map stream) is logged then."""
        log = access_logs(self.counters, self.clock.seconds)["noise"]
        request = DummyRequest([])
        request.method, request.uri, request.path, request.code = b"POST", b"/machine/map", b"/machine/map", 200
        log.started(request)
        self.clock.advance(30)
        request.processingFailed(Failure(ConnectionLost()))  # errbacks notifyFinish, as a lost connection does
        self.assertEqual(self.counters.requests, {("noise", "/machine/map", "POST", "200"): 1})
        (histogram,) = [h for _, h in self.counters.seconds.items()]
        self.assertEqual(histogram.sum, 30)
