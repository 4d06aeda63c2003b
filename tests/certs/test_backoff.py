"""
The certificate manager under bad conditions, on a Clock: backoff, ``rateLimited`` and ``Retry-After``.

The ACME account here is a stand-in scripted to refuse or issue (a unit test;
the real ACME server's refusals are in ``test_manager`` and ``test_acme_e2e``),
and the database is the real schema on threadless SQLite. The ``Retry-After``
header itself is read from a real HTTP response by :class:`AcmeOrdering`.
"""

import datetime
import json
import os

from twisted.internet import reactor
from twisted.internet.defer import maybeDeferred
from twisted.internet.task import Clock
from twisted.internet.threads import deferToThread
from twisted.logger import Logger, formatEvent
from twisted.trial import unittest
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from headscale_tw.certs.cache import CertificateCache
from headscale_tw.certs.challenges import ChallengeResponses, self_signed_certificate
from headscale_tw.certs.manager import (
    FIRST_RETRY,
    LAST_RETRY,
    MAX_RETRY_AFTER,
    RATE_LIMITED_RETRY,
    CertificateManager,
)
from headscale_tw.certs.ordering import AcmeOrdering, AcmeProblem, IssuedCertificate, PendingOrder, retry_after_seconds
from headscale_tw.certs.storage import CertificateStorage
from headscale_tw.testing.db import open_test_database, resolve

HOSTNAME = "hs.example.com"
NOW = datetime.datetime(2026, 12, 4, 3, 0, tzinfo=datetime.timezone.utc)


class _ScriptedAccount:
    """An ACME account whose orders fail with the queued problems, then succeed."""

    def __init__(self, clock):
        self.clock = clock
        self.problems: list[AcmeProblem] = []
        self.orders = 0

    def begin(self, domain, challenge_type):
        self.orders += 1
        if self.problems:
            raise self.problems.pop(0)
        return PendingOrder(order=None, key_pem=b"")

    def complete(self, pending, timeout):
        now = datetime.datetime.fromtimestamp(self.clock.seconds(), datetime.timezone.utc)
        return IssuedCertificate(*self_signed_certificate(HOSTNAME, now))


class ManagerBackoffTests(unittest.TestCase):
    """Failed renewals keep the current certificate and back off on the injected clock."""

    def setUp(self):
        self.clock = Clock()
        self.clock.advance(NOW.timestamp())
        self.db = open_test_database(self)
        cache = CertificateCache(os.path.abspath(self.mktemp()), "https://acme.example/dir")
        # A one-day certificate in the cache folder, issued now: due for renewal after 16 hours.
        self.cached = IssuedCertificate(*self_signed_certificate(HOSTNAME, NOW))
        cache.store(HOSTNAME, self.cached)
        self.account = _ScriptedAccount(self.clock)
        self.served = []
        storage = CertificateStorage(HOSTNAME, "https://acme.example/dir", self.db.acme, cache, self.clock)
        self.manager = CertificateManager(HOSTNAME, "HTTP-01", storage, ChallengeResponses(), self.clock,
                                          lambda key: self.account, maybeDeferred, self.served.append,
                                          leases=self.db.leases, instance_id="one")
        self.addCleanup(lambda: resolve(self.manager.stopService()))
        self.manager.startService()
        self.assertEqual(self.served, [self.cached])
        self.due = self.manager.renewal_time(self.cached).timestamp()
        self.assertEqual(self.manager.next_check_at, self.due)

    def run_until_check(self):
        """Move the clock to the next scheduled check; return the delay that check scheduled after it."""
        self.clock.advance(self.manager.next_check_at - self.clock.seconds())
        return self.manager.next_check_at - self.clock.seconds()

    def test_cache_folder_certificate_shared(self):
        """A certificate found only in the cache folder (an upgrade) is stored in the database for the others."""
        stored = resolve(self.db.acme.certificate(HOSTNAME))
        self.assertEqual((stored.chain_pem, stored.key_pem, stored.serial), (self.cached.chain_pem,
                                                                              self.cached.key_pem, 1))
        self.assertEqual(self.account.orders, 0)

    def test_backoff_doubles_to_cap_and_keeps_serving(self):
        """Each failed renewal doubles the wait from 60 s up to 6 h, while the cached certificate is served."""
        self.account.problems = [AcmeProblem("ordering: connection refused") for _ in range(12)]
        delays = [self.run_until_check() for _ in range(12)]
        expected = [min(FIRST_RETRY * 2 ** n, LAST_RETRY) for n in range(12)]
        self.assertEqual(delays, expected)
        self.assertEqual(self.served, [self.cached])
        self.assertEqual(self.manager.current, self.cached)

    def test_success_resets_backoff(self):
        """After failures, a successful order is served and the next check is its renewal point."""
        self.account.problems = [AcmeProblem("down"), AcmeProblem("down")]
        self.assertEqual(self.run_until_check(), FIRST_RETRY)
        self.assertEqual(self.run_until_check(), 2 * FIRST_RETRY)
        self.run_until_check()
        self.assertEqual(len(self.served), 2)
        new = self.served[-1]
        self.assertEqual(self.manager.next_check_at, self.manager.renewal_time(new).timestamp())
        self.account.problems = [AcmeProblem("down again")]
        self.assertEqual(self.run_until_check(), FIRST_RETRY)

    def test_rate_limited_honours_retry_after(self):
        """A rateLimited refusal with Retry-After waits that long, and the log line names both."""
        logged = []
        self.manager.log = Logger(observer=logged.append)
        self.account.problems = [AcmeProblem("ordering: urn:ietf:params:acme:error:rateLimited: too many",
                                             rate_limited=True, retry_after=5000.0)]
        self.assertEqual(self.run_until_check(), 5000.0)
        self.assertEqual(self.account.orders, 1)
        (line,) = [formatEvent(e) for e in logged if "not renewed" in formatEvent(e)]
        self.assertIn(HOSTNAME, line)
        self.assertIn("rateLimited", line)
        self.assertIn("next try in 5000 s", line)

    def test_rate_limited_without_retry_after(self):
        """A rateLimited refusal without Retry-After waits at least an hour."""
        self.account.problems = [AcmeProblem("rateLimited", rate_limited=True)]
        self.assertEqual(self.run_until_check(), RATE_LIMITED_RETRY)

    def test_retry_after_capped(self):
        """A Retry-After beyond seven days is taken as seven days."""
        self.account.problems = [AcmeProblem("rateLimited", rate_limited=True, retry_after=10 ** 9)]
        self.assertEqual(self.run_until_check(), MAX_RETRY_AFTER)


class _PublishingAccount(_ScriptedAccount):
    """A scripted account whose order has one HTTP-01 challenge to publish."""

    def begin(self, domain, challenge_type):
        self.orders += 1
        return PendingOrder(order=None, key_pem=b"", http01={"tok": "tok.thumbprint"})


class SharedOrderTests(unittest.TestCase):
    """With other instances (a poll interval), the orderer publishes its challenges and waits before validation."""

    def setUp(self):
        self.clock = Clock()
        self.clock.advance(NOW.timestamp())
        self.db = open_test_database(self)
        self.account = _PublishingAccount(self.clock)
        self.served = []
        cache = CertificateCache(os.path.abspath(self.mktemp()), "https://acme.example/dir")
        storage = CertificateStorage(HOSTNAME, "https://acme.example/dir", self.db.acme, cache, self.clock)
        self.manager = CertificateManager(HOSTNAME, "HTTP-01", storage, ChallengeResponses(), self.clock,
                                          lambda key: self.account, maybeDeferred, self.served.append,
                                          leases=self.db.leases, instance_id="one", poll_interval=2.0)
        self.manager.startService()

    def published(self):
        return [c.name for c in resolve(self.db.acme.poll(HOSTNAME, now=NOW))[1]]

    def test_waits_two_poll_intervals(self):
        """The challenge is in the database for 4 s before validation; then the certificate is served."""
        self.addCleanup(lambda: resolve(self.manager.stopService()))
        self.assertEqual(self.published(), ["tok"])
        self.clock.advance(3.9)
        self.assertEqual(self.served, [])
        self.clock.advance(0.1)
        self.assertEqual(len(self.served), 1)
        self.assertEqual(self.published(), [])  # withdrawn after the order
        self.assertEqual(self.successResultOf(self.manager.ready), self.served[0])

    def test_stop_during_wait(self):
        """Stopping while the orderer waits ends the order, withdraws the challenge and leaves no timer."""
        resolve(self.manager.stopService())
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.published(), [])
        self.assertEqual(self.served, [])


class FailoverTests(unittest.TestCase):
    """Two managers on one database and one Clock: one orders, the other serves it, then takes over."""

    def setUp(self):
        self.clock = Clock()
        self.clock.advance(NOW.timestamp())
        self.db = open_test_database(self)

    def manager(self, name):
        account = _ScriptedAccount(self.clock)
        served = []
        cache = CertificateCache(os.path.abspath(self.mktemp()), "https://acme.example/dir")
        storage = CertificateStorage(HOSTNAME, "https://acme.example/dir", self.db.acme, cache, self.clock)
        manager = CertificateManager(HOSTNAME, "HTTP-01", storage, ChallengeResponses(), self.clock,
                                     lambda key: account, maybeDeferred, served.append,
                                     leases=self.db.leases, instance_id=name, poll_interval=2.0)
        self.addCleanup(lambda: resolve(manager.stopService()))
        return manager, account, served

    def test_other_instance_serves_then_takes_over_renewal(self):
        """B serves A's certificate within one poll; after A stops, B holds the lease and renews, once."""
        a, a_account, a_served = self.manager("a")
        b, b_account, b_served = self.manager("b")
        a.startService()
        b.startService()
        self.clock.advance(4.0)  # A's wait before validation
        self.assertEqual(len(a_served), 1)
        self.clock.advance(2.0)  # B's next poll
        self.assertEqual(b_served, a_served)
        self.assertEqual((a_account.orders, b_account.orders), (1, 0))

        resolve(a.stopService())  # releases the lease
        self.clock.advance(10.0)  # B's next lease attempt
        self.assertIsNotNone(b.keeper.lease)
        self.assertEqual(b_account.orders, 0)  # not due: nothing to order
        self.clock.advance(b.renewal_time(b.current).timestamp() - self.clock.seconds())
        self.clock.advance(4.0)
        self.assertEqual((a_account.orders, b_account.orders), (1, 1))
        self.assertEqual(len(b_served), 2)
        self.assertEqual(resolve(self.db.acme.certificate(HOSTNAME)).chain_pem, b_served[-1].chain_pem)


class RetryAfterTests(unittest.TestCase):
    """``Retry-After`` values in both forms of RFC 9110."""

    def test_forms(self):
        """Seconds and HTTP dates become seconds from now; past dates 0; garbage and absence None."""
        self.assertEqual(retry_after_seconds("120", NOW), 120.0)
        self.assertEqual(retry_after_seconds("Fri, 04 Dec 2026 04:00:00 GMT", NOW), 3600.0)
        self.assertEqual(retry_after_seconds("Fri, 04 Dec 2026 02:00:00 GMT", NOW), 0.0)
        self.assertIsNone(retry_after_seconds("soon", NOW))
        self.assertIsNone(retry_after_seconds(None, NOW))


class _RateLimitedDirectory(Resource):
    """An ACME directory URL answering every request with a rateLimited problem and Retry-After: 120."""

    isLeaf = True

    def render(self, request):
        request.setResponseCode(429)
        request.setHeader(b"content-type", b"application/problem+json")
        request.setHeader(b"retry-after", b"120")
        request.write(json.dumps({"type": "urn:ietf:params:acme:error:rateLimited",
                                  "detail": "too many new registrations"}).encode())
        transport = request.channel.transport
        request.finish()
        transport.loseConnection()  # no keep-alive connection left behind when the test ends
        return NOT_DONE_YET


class OrderingRetryAfterTests(unittest.TestCase):
    """AcmeOrdering carries a refusal's Retry-After header into its AcmeProblem."""

    async def test_rate_limited_response(self):
        """A 429 rateLimited answer becomes AcmeProblem(rate_limited, retry_after=120) with a clear message."""
        port = reactor.listenTCP(0, Site(_RateLimitedDirectory()), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        url = f"http://127.0.0.1:{port.getHost().port}/directory"
        key = self_signed_certificate(HOSTNAME, NOW)[1]
        failure = await self.assertFailure(deferToThread(AcmeOrdering, url, key), AcmeProblem)
        self.assertTrue(failure.rate_limited)
        self.assertEqual(failure.retry_after, 120.0)
        self.assertIn("rateLimited", str(failure))
        self.assertIn("retry after 120 s", str(failure))
