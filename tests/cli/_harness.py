# -*- test-case-name: tests.cli -*-
"""
The admin API over a real (threadless, in-memory) SQLite database, reached
in-process through ``StubTreq``; and a CLI transport that goes through it.
"""

import json
from urllib.parse import urlencode

from treq.testing import StubTreq
from twisted.internet.task import Clock
from twisted.web.resource import Resource

from headscale_tw.clock import utc_now
from headscale_tw.control.admin import build_admin_services
from headscale_tw.testing.db import open_test_database
from headscale_tw.web.admin_api import AdminAPI, mount

__all__ = ["AdminHarness", "StubTransport", "START"]

START = 1_700_000_000.0  # 2023-11-14T22:13:20Z


class AdminHarness:
    """One database, a clock, and the admin API mounted at /api like the service does."""

    def __init__(self, testcase, trust_all=True):
        self.testcase = testcase
        self.db = open_test_database(testcase)
        self.clock = Clock()
        self.clock.advance(START)
        self.api = AdminAPI(build_admin_services(self.db, lambda: utc_now(self.clock)), trust_all=trust_all)
        root = Resource()
        mount(root, self.api)
        self.treq = StubTreq(root)

    def request(self, method, path, body=None, token=None, raw=None, query=None):
        """Send a request; return ``(status, decoded JSON or None, response)``."""
        url = "http://headscale.test" + path
        if query:
            url += "?" + urlencode(query)
        headers = {}
        if token is not None:
            headers[b"Authorization"] = [f"Bearer {token}".encode()]
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        if data is not None:
            headers[b"Content-Type"] = [b"application/json"]
        response = self.testcase.successResultOf(self.treq.request(method, url, data=data, headers=headers))
        content = self.testcase.successResultOf(self.treq.content(response))
        try:
            decoded = json.loads(content) if content else None
        except ValueError:
            decoded = None
        return response.code, decoded, response


class StubTransport:
    """A CLI ``Transport`` that sends each request to an ``AdminHarness`` in-process."""

    def __init__(self, harness, token=None):
        self.harness = harness
        self.token = token
        self.requests = []

    def request(self, method, path, query=None, body=None):
        """Forward to the harness; return ``(status, body bytes)``."""
        self.requests.append((method, path, dict(query or {}), body))
        url = "http://headscale.test" + path + ("?" + urlencode(query) if query else "")
        headers = {}
        if self.token:
            headers[b"Authorization"] = [f"Bearer {self.token}".encode()]
        data = json.dumps(body).encode() if body is not None else None
        tc = self.harness.testcase
        response = tc.successResultOf(self.harness.treq.request(method, url, data=data, headers=headers))
        return response.code, tc.successResultOf(self.harness.treq.content(response))
