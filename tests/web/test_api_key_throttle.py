# -*- test-case-name: tests.web.test_api_key_throttle -*-
"""Refused API keys are throttled per client address: 429 for that address, others unaffected."""

from __future__ import annotations

__all__ = ["ApiKeyThrottleTests"]

import json
from types import SimpleNamespace

from treq.testing import StubTreq
from twisted.internet.task import Clock
from twisted.trial import unittest
from twisted.web.resource import Resource

from headscale_tw.clock import utc_now
from headscale_tw.control.admin import build_admin_services
from headscale_tw.testing.db import open_test_database, resolve
from headscale_tw.testing.keys import with_wrong_secret
from headscale_tw.throttle import API_KEYS, FailureThrottle
from headscale_tw.web.admin_api import AdminAPI, mount
from headscale_tw.web.client_address import TrustedProxies
from tests.cli._harness import START
from tests.web.test_admin_api import make_api_key

#: StubTreq's requests come from 127.0.0.1: make it the trusted reverse proxy.
PROXY = TrustedProxies.from_config(["127.0.0.1/32"])


class ApiKeyThrottleTests(unittest.TestCase):
    """The admin API counts refused keys per address behind a trusted proxy and answers 429 past the limit."""

    def setUp(self):
        self.db = open_test_database(self)
        self.clock = Clock()
        self.clock.advance(START)
        self.throttle = FailureThrottle(API_KEYS, self.clock)
        root = Resource()
        mount(root, AdminAPI(build_admin_services(self.db, lambda: utc_now(self.clock)), trust_all=False,
                             throttle=self.throttle, proxies=PROXY))
        self.treq = StubTreq(root)
        self.key = make_api_key(SimpleNamespace(db=self.db))

    def request(self, client: str, token: str | None):
        headers = {b"X-Forwarded-For": [client.encode()]}
        if token is not None:
            headers[b"Authorization"] = [f"Bearer {token}".encode()]
        response = self.successResultOf(self.treq.request("GET", "http://headscale.test/api/v1/user", headers=headers))
        body = json.loads(self.successResultOf(self.treq.content(response)))
        return response.code, body

    def wrong_key(self) -> str:
        return with_wrong_secret(self.key)

    def test_throttled_after_burst(self):
        """After the burst of wrong keys, that address gets 429 (gRPC 8) even with the right key."""
        for _ in range(API_KEYS.burst):
            self.assertEqual(self.request("192.0.2.66", self.wrong_key())[0], 401)
        status, body = self.request("192.0.2.66", self.wrong_key())
        self.assertEqual((status, body["code"]), (429, 8))
        self.assertEqual(body["message"], "too many failed API keys from 192.0.2.66; try again in 6 s")
        self.assertEqual(self.request("192.0.2.66", self.key)[0], 429)
        self.assertEqual((self.throttle.failures, self.throttle.refused), (API_KEYS.burst, 2))

    def test_other_addresses_served(self):
        """While one address is throttled, another address with the right key is served."""
        for _ in range(API_KEYS.burst + 50):
            self.request("192.0.2.66", self.wrong_key())
        self.assertEqual(self.request("192.0.2.7", self.key), (200, {"users": []}))
        self.assertEqual(self.throttle.tracked, 1)

    def test_refill(self):
        """One refill interval later the address may try once more."""
        for _ in range(API_KEYS.burst + 1):
            self.request("192.0.2.66", self.wrong_key())
        self.clock.advance(1 / API_KEYS.per_second)
        self.assertEqual(self.request("192.0.2.66", self.key)[0], 200)

    def test_missing_key_counts(self):
        """Requests without a key are refusals too and count against the address."""
        for _ in range(API_KEYS.burst):
            self.assertEqual(self.request("192.0.2.66", None)[0], 401)
        self.assertEqual(self.request("192.0.2.66", None)[0], 429)

    def test_untrusted_forwarded_for_ignored(self):
        """Without trusted proxies, X-Forwarded-For cannot spread one client over many buckets."""
        root = Resource()
        throttle = FailureThrottle(API_KEYS, self.clock)
        mount(root, AdminAPI(build_admin_services(self.db, lambda: utc_now(self.clock)), trust_all=False,
                             throttle=throttle))
        self.treq = StubTreq(root)
        for i in range(API_KEYS.burst):
            self.assertEqual(self.request(f"192.0.2.{i}", self.wrong_key())[0], 401)
        self.assertEqual(self.request("192.0.2.200", self.key)[0], 429)
        self.assertEqual(self.throttle.failures, 0)
        self.assertEqual(throttle.failures, API_KEYS.burst)

    def test_valid_key_not_counted(self):
        """Accepted keys cost nothing: many good requests never throttle."""
        for _ in range(100):
            self.assertEqual(self.request("192.0.2.7", self.key)[0], 200)
        self.assertEqual((self.throttle.failures, self.throttle.tracked), (0, 0))
        self.assertIsNotNone(resolve(self.db.apikeys.list())[0].last_seen)
