"""Tests for :mod:`headscale_tw.certs.listeners`: TLS was asked for, so nothing is ever served in the clear."""

import os

from twisted.internet.defer import maybeDeferred
from twisted.internet.testing import MemoryReactorClock
from twisted.trial import unittest
from twisted.web.resource import Resource
from twisted.web.server import Site
from twisted.web.test.requesthelper import DummyRequest

from headscale_tw.certs.http01 import AcmeHTTPResource
from headscale_tw.certs.listeners import acme_listeners
from headscale_tw.certs.ordering import AcmeProblem
from headscale_tw.config.loader import parse_config
from headscale_tw.testing.db import open_test_database, resolve
from headscale_tw.testing.pebble import free_tcp_port


class AcmeListenersTests(unittest.TestCase):
    """The main listener is TLS from the first moment, and stays TLS when no certificate can be had."""

    def setUp(self):
        self.config = parse_config({
            "server_url": "https://hs.example.com",
            "listen_addr": "127.0.0.1:8443",
            "tls_letsencrypt_hostname": "hs.example.com",
            "tls_letsencrypt_listen": "127.0.0.1:8080",
            "tls_letsencrypt_cache_dir": os.path.abspath(self.mktemp()),
            "acme_url": f"https://127.0.0.1:{free_tcp_port()}/dir",  # nothing listens there
        }, environ={})
        self.reactor = MemoryReactorClock()
        self.db = open_test_database(self)
        self.site = Site(Resource())

    def build(self):
        # The blocking ACME steps run inline: a refused connection returns at once.
        return acme_listeners(self.config, self.reactor, self.site, 50, self.db, "one", in_thread=maybeDeferred)

    def test_no_plain_fallback_when_acme_fails(self):
        """With the ACME server down and nothing stored, ready fails and the site is only ever on TLS."""
        built = self.build()
        for service in built.services:
            service.startService()
        self.addCleanup(lambda: [resolve(s.stopService()) if s is built.manager else s.stopService()
                                 for s in reversed(built.services)])
        failure = self.failureResultOf(built.ready, AcmeProblem)
        self.assertIn("registering the ACME account", str(failure.value))
        (tls_port,) = [entry for entry in self.reactor.sslServers if entry[0] == 8443]
        self.assertIs(tls_port[1], self.site)
        self.assertIs(tls_port[2], built.tls)
        # The one plain listener is the ACME one: it never serves the site.
        self.assertEqual([entry[0] for entry in self.reactor.tcpServers], [8080])
        self.assertIsInstance(self.reactor.tcpServers[0][1].resource, AcmeHTTPResource)

    def test_plain_listener_redirects(self):
        """Anything but a challenge on the plain listener is a 301 to https, never an answer."""
        resource = AcmeHTTPResource(self.build().manager.responses, "https://hs.example.com")
        request = DummyRequest([b"api", b"v1", b"node"])
        request.uri = request.path = b"/api/v1/node"
        body = resource.render(request)
        self.assertEqual(request.responseCode, 301)
        self.assertEqual(request.responseHeaders.getRawHeaders(b"location"), [b"https://hs.example.com/api/v1/node"])
        self.assertEqual(body, b"")

    def test_no_poll_on_sqlite(self):
        """On SQLite (one instance) the manager does not poll the shared state."""
        self.assertIsNone(self.build().manager.poll_interval)
