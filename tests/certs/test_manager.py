# -*- test-case-name: tests.certs.test_manager -*-
"""
Tests for :mod:`headscale_tw.certs.manager` against a real ACME server (Debian's pebble).

Each test starts pebble and challtestsrv on loopback ports, a real HTTP-01
listener and a real TLS listener in the test's reactor, and a manager whose
schedule runs on a :class:`Clock` set to the wall clock (pebble's view of time).
"""

import datetime
import os
import stat
import time

from cryptography import x509
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import SSL4ServerEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.threads import deferToThread
from twisted.trial import unittest
from twisted.web.server import Site

from headscale_tw.certs.cache import CertificateCache
from headscale_tw.certs.challenges import ChallengeResponses, self_signed_certificate
from headscale_tw.certs.http01 import AcmeHTTPResource
from headscale_tw.certs.manager import FIRST_RETRY, CertificateManager
from headscale_tw.certs.ordering import AcmeOrdering, AcmeProblem, certificate_dates
from headscale_tw.certs.storage import CertificateStorage
from headscale_tw.certs.tls import SwappableServerTLS
from headscale_tw.testing.db import open_test_database
from headscale_tw.testing.pebble import PebbleACME, free_tcp_port

__all__ = ["CertificateManagerTests"]

HOSTNAME = "hs.example.com"
WAIT = 90


class _Setup:
    """pebble, the two listeners, a cache and a manager, torn down by the test's cleanups."""

    def __init__(self, test: unittest.TestCase, challenge_type: str, cache_dir: str | None = None,
                 directory_url: str | None = None) -> None:
        self.test = test
        scratch = os.path.abspath(test.mktemp())
        os.makedirs(scratch)
        self.http_port, self.tls_port = free_tcp_port(), free_tcp_port()
        self.pebble = PebbleACME(os.path.join(scratch, "pebble"), self.http_port, self.tls_port)
        os.makedirs(self.pebble.directory, exist_ok=True)
        self.pebble.start()
        test.addCleanup(self.pebble.remove)
        self.directory_url = directory_url or self.pebble.directory_url
        self.cache = CertificateCache(cache_dir or os.path.join(scratch, "cache"), self.directory_url)
        self.db = open_test_database(test)
        self.responses = ChallengeResponses()
        self.clock = Clock()
        self.clock.advance(time.time())
        placeholder = self_signed_certificate(HOSTNAME, datetime.datetime.now(datetime.timezone.utc))
        self.tls = SwappableServerTLS(*placeholder, validation=self.responses.tls_alpn01)
        self.served: list = []
        self.next_certificate: Deferred | None = None
        self.challenge_type = challenge_type

    async def listen(self) -> None:
        http = reactor.listenTCP(self.http_port, Site(AcmeHTTPResource(self.responses, f"https://{HOSTNAME}")),
                                 interface="127.0.0.1")
        self.test.addCleanup(http.stopListening)
        endpoint = SSL4ServerEndpoint(reactor, self.tls_port, self.tls, interface="127.0.0.1")
        tls_port = await endpoint.listen(Factory.forProtocol(Protocol))
        self.test.addCleanup(tls_port.stopListening)

    def manager(self) -> CertificateManager:
        def open_account(key: bytes) -> AcmeOrdering:
            return AcmeOrdering(self.directory_url, key, "ops@example.com", ca_bundle=self.pebble.ca_pem)

        def on_certificate(issued) -> None:
            self.tls.swap(issued.chain_pem, issued.key_pem)
            self.served.append(issued)
            waiting, self.next_certificate = self.next_certificate, None
            if waiting is not None:
                waiting.callback(issued)

        storage = CertificateStorage(HOSTNAME, self.directory_url, self.db.acme, self.cache, self.clock)
        manager = CertificateManager(HOSTNAME, self.challenge_type, storage, self.responses, self.clock,
                                     open_account, deferToThread, on_certificate, leases=self.db.leases,
                                     instance_id="one")
        self.test.addCleanup(manager.stopService)
        return manager


def _names(chain_pem: bytes) -> list[str]:
    leaf = x509.load_pem_x509_certificate(chain_pem)
    return leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)


def _issuer(chain_pem: bytes) -> x509.Name:
    return x509.load_pem_x509_certificate(chain_pem).issuer


class CertificateManagerTests(unittest.TestCase):
    """The manager obtains, caches, reuses and renews certificates from a real ACME server."""

    timeout = 240

    async def test_http01_obtain_then_cache(self) -> None:
        """HTTP-01 yields a certificate for the name, cached 0600; a restart serves it without a new order."""
        setup = _Setup(self, "HTTP-01")
        await setup.listen()
        manager = setup.manager()
        manager.startService()
        issued = await manager.ready.addTimeout(WAIT, reactor)
        self.assertEqual(_names(issued.chain_pem), [HOSTNAME])
        self.assertEqual(manager.orders, 1)
        self.assertEqual(setup.tls.swaps, 1)
        key_file = os.path.join(setup.cache.directory, f"{HOSTNAME}.key")
        self.assertEqual(stat.S_IMODE(os.stat(key_file).st_mode), 0o600)
        manager.stopService()

        setup.clock.advance(time.time() - setup.clock.seconds())  # the reactor's clock moves on too
        again = setup.manager()
        again.startService()
        reused = await again.ready.addTimeout(WAIT, reactor)
        self.assertEqual(reused.chain_pem, issued.chain_pem)
        self.assertEqual(again.orders, 0)
        # the next check waits for the renewal point, on the injected clock
        due = again.renewal_time(reused).timestamp()
        self.assertLess(abs(again.next_check_at - due), 1)

    async def test_tls_alpn01(self) -> None:
        """TLS-ALPN-01 is answered on the running TLS listener and its certificate is swapped in."""
        setup = _Setup(self, "TLS-ALPN-01")
        await setup.listen()
        manager = setup.manager()
        manager.startService()
        issued = await manager.ready.addTimeout(WAIT, reactor)
        self.assertEqual(_names(issued.chain_pem), [HOSTNAME])
        self.assertEqual(setup.tls.swaps, 1)
        self.assertIsNone(setup.responses.tls_alpn01(HOSTNAME))  # withdrawn after the order

    async def test_renewal_swaps(self) -> None:
        """At the renewal point a new certificate is ordered, cached and swapped in."""
        setup = _Setup(self, "HTTP-01")
        await setup.listen()
        manager = setup.manager()
        manager.startService()
        first = await manager.ready.addTimeout(WAIT, reactor)
        setup.next_certificate = Deferred()
        setup.clock.advance(manager.renewal_time(first).timestamp() - setup.clock.seconds() + 1)
        second = await setup.next_certificate.addTimeout(WAIT, reactor)
        self.assertNotEqual(second.chain_pem, first.chain_pem)
        self.assertEqual(manager.orders, 2)
        self.assertEqual(setup.tls.swaps, 2)
        self.assertEqual(setup.cache.load(HOSTNAME).chain_pem, second.chain_pem)

    async def test_acme_down_at_start(self) -> None:
        """With nothing cached and the ACME server unreachable, ``ready`` fails naming the problem."""
        closed = f"https://127.0.0.1:{free_tcp_port()}/dir"
        setup = _Setup(self, "HTTP-01", directory_url=closed)
        await setup.listen()
        manager = setup.manager()
        manager.startService()
        failure = await self.assertFailure(manager.ready.addTimeout(WAIT, reactor), AcmeProblem)
        self.assertIn("registering the ACME account", str(failure))
        self.assertEqual(setup.served, [])
        self.assertEqual(setup.tls.swaps, 0)

    async def test_failed_renewal_keeps_serving_and_backs_off(self) -> None:
        """A renewal that fails keeps the cached certificate and retries after 60 s, then 120 s."""
        setup = _Setup(self, "HTTP-01")
        await setup.listen()
        manager = setup.manager()
        manager.startService()
        first = await manager.ready.addTimeout(WAIT, reactor)
        manager.stopService()
        setup.pebble.stop()  # the ACME server goes away

        again = setup.manager()
        _, not_after = certificate_dates(first.chain_pem)
        setup.clock.advance(again.renewal_time(first).timestamp() - setup.clock.seconds() + 1)
        again.startService()
        await again.ready.addTimeout(WAIT, reactor)  # the cached one is served at once
        await again.checking.addTimeout(WAIT, reactor)
        self.assertLess(abs(again.next_check_at - setup.clock.seconds() - FIRST_RETRY), 1)
        setup.clock.advance(FIRST_RETRY)
        await again.checking.addTimeout(WAIT, reactor)
        self.assertLess(abs(again.next_check_at - setup.clock.seconds() - 2 * FIRST_RETRY), 1)
        self.assertEqual(again.current, first)
        self.assertLess(setup.clock.seconds(), not_after.timestamp())

    async def test_failing_challenge_at_start(self):
        """With nothing stored, a failed validation fails ``ready`` naming the validation and the name."""
        setup = _Setup(self, "HTTP-01")  # no listener: pebble's HTTP-01 request is refused
        manager = setup.manager()
        manager.startService()
        failure = await self.assertFailure(manager.ready.addTimeout(WAIT, reactor), AcmeProblem)
        self.assertIn(f"validation failed for {HOSTNAME}", str(failure))
        self.assertEqual(setup.served, [])
