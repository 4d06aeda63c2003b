"""
Two instances on one real PostgreSQL database share one ACME account and certificate from real pebble.

Each instance has its own pool, cache folder, challenge answers and listeners,
as two servers would; they meet only in the database. pebble sends every
validation to the listener of the instance that did *not* order, so a
certificate is issued only if that instance answers a challenge the other
one started.
"""

import datetime
import os
from dataclasses import replace

from twisted.internet import reactor
from twisted.internet.defer import ensureDeferred
from twisted.internet.endpoints import SSL4ServerEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.threads import deferToThread
from twisted.trial import unittest
from twisted.web.server import Site

from headscale_tw.certs.cache import CertificateCache
from headscale_tw.certs.challenges import ChallengeResponses, self_signed_certificate
from headscale_tw.certs.http01 import AcmeHTTPResource
from headscale_tw.certs.manager import CertificateManager
from headscale_tw.certs.ordering import AcmeOrdering
from headscale_tw.certs.storage import CertificateStorage
from headscale_tw.certs.tls import SwappableServerTLS
from headscale_tw.storage.database import Database, make_pool
from headscale_tw.storage.prepare import prepare_database
from headscale_tw.testing.db import create_postgres_database
from headscale_tw.testing.pebble import PebbleACME, free_tcp_port

HOSTNAME = "hs.example.com"
WAIT = 90
POLL = 0.2


class _Instance:
    """One server's certificate side: its own pool, cache, answers, TLS listener and manager."""

    def __init__(self, test, name, config, pebble, challenge_type):
        self.test, self.name, self.pebble = test, name, pebble
        self.config = replace(config, postgres=replace(config.postgres, max_open_conns=2))
        self.cache = CertificateCache(os.path.abspath(test.mktemp()), pebble.directory_url)
        self.responses = ChallengeResponses()
        placeholder = self_signed_certificate(HOSTNAME, datetime.datetime.now(datetime.timezone.utc))
        self.tls = SwappableServerTLS(*placeholder, validation=self.responses.tls_alpn01)
        self.challenge_type = challenge_type
        self.served = []

    async def open(self) -> None:
        pool = make_pool(self.config, reactor)
        self.test.addCleanup(lambda: ensureDeferred(pool.close()))
        await prepare_database(pool)
        self.db = Database(pool, reactor)

    async def listen(self, http_port=None, tls_port=None) -> None:
        """Listen where pebble validates (only the instance that is meant to answer does)."""
        if http_port is not None:
            port = reactor.listenTCP(http_port, Site(AcmeHTTPResource(self.responses, f"https://{HOSTNAME}")),
                                     interface="127.0.0.1")
            self.test.addCleanup(port.stopListening)
        if tls_port is not None:
            endpoint = SSL4ServerEndpoint(reactor, tls_port, self.tls, interface="127.0.0.1")
            port = await endpoint.listen(Factory.forProtocol(Protocol))
            self.test.addCleanup(port.stopListening)

    def start(self) -> CertificateManager:
        pebble = self.pebble

        def open_account(key: bytes) -> AcmeOrdering:
            return AcmeOrdering(pebble.directory_url, key, "ops@example.com", ca_bundle=pebble.ca_pem)

        def on_certificate(issued) -> None:
            self.tls.swap(issued.chain_pem, issued.key_pem)
            self.served.append(issued)

        storage = CertificateStorage(HOSTNAME, pebble.directory_url, self.db.acme, self.cache, reactor)
        self.manager = CertificateManager(HOSTNAME, self.challenge_type, storage, self.responses, reactor,
                                          open_account, deferToThread, on_certificate, leases=self.db.leases,
                                          instance_id=self.name, poll_interval=POLL)
        self.manager.startService()
        self.test.addCleanup(self.manager.stopService)  # before the pool closes: cleanups run last-in first
        return self.manager


class SharedCertificateTests(unittest.TestCase):
    """One order for two instances; the other instance answers its challenges and serves the same certificate."""

    timeout = 240

    async def two_instances(self, challenge_type):
        http_port, tls_port = free_tcp_port(), free_tcp_port()
        pebble = PebbleACME(os.path.abspath(self.mktemp()), http_port, tls_port)
        os.makedirs(pebble.directory, exist_ok=True)
        pebble.start()
        self.addCleanup(pebble.remove)
        config = create_postgres_database(self)
        first, second = _Instance(self, "first", config, pebble, challenge_type), \
            _Instance(self, "second", config, pebble, challenge_type)
        await first.open()
        await second.open()
        # Only the second instance listens where pebble validates.
        await second.listen(http_port=http_port, tls_port=tls_port)
        ordering = first.start()
        await ordering.keeper.attempting.addTimeout(WAIT, reactor)
        self.assertIsNotNone(ordering.keeper.lease)  # the first holds the lease: it orders
        second.start()
        issued = await ordering.ready.addTimeout(WAIT, reactor)
        shared = await second.manager.ready.addTimeout(WAIT, reactor)
        return first, second, issued, shared

    def assert_shared(self, first, second, issued, shared):
        self.assertEqual(shared.chain_pem, issued.chain_pem)
        self.assertEqual((first.manager.orders, second.manager.orders), (1, 0))
        self.assertIsNone(second.manager.keeper.lease)
        self.assertEqual([s.chain_pem for s in second.served], [issued.chain_pem])
        self.assertEqual(second.tls.swaps, 1)

    async def test_http01_answered_by_other_instance(self):
        """HTTP-01: one order, validated through the instance that did not order; both serve its certificate."""
        self.assert_shared(*await self.two_instances("HTTP-01"))

    async def test_tls_alpn01_answered_by_other_instance(self):
        """TLS-ALPN-01: one order, validated on the other instance's TLS listener; both serve its certificate."""
        self.assert_shared(*await self.two_instances("TLS-ALPN-01"))

    async def test_account_key_shared(self):
        """Both instances use the one account key in the database, not their own cache folders'."""
        first, second, issued, shared = await self.two_instances("HTTP-01")
        one = await first.manager.storage.account_key()
        two = await second.manager.storage.account_key()
        self.assertEqual(one, two)
