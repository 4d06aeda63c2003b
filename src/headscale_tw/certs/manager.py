# -*- test-case-name: tests.certs.test_manager -*-
"""
The certificate manager: a certificate for ``tls_letsencrypt_hostname``, always.

At start it serves the cached certificate when one is there, and orders one
when none is or it is due; afterwards it checks again when the certificate
reaches its renewal point (two thirds of its lifetime, so a 90-day Let's
Encrypt certificate is renewed with 30 days left). A new certificate is
stored in the cache and handed to ``on_certificate`` (the TLS listener swaps
it in for new connections).

A failed order is logged in one line and tried again with exponential backoff
(:data:`FIRST_RETRY` doubling up to :data:`LAST_RETRY`; at least
:data:`RATE_LIMITED_RETRY` when the ACME server said rate-limited), while the
cached certificate keeps being served. :attr:`CertificateManager.ready`
fires once a real certificate is being served, and fails when the first order
fails with nothing cached: start-up then fails instead of serving a
certificate no client trusts.

The ACME steps block, so they run through ``in_thread`` (``deferToThread`` in
the daemon); the challenge answers are published between them on the reactor
thread, and the schedule runs on the injected clock.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from typing import Any

from twisted.application import service
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from headscale_tw.certs.cache import CertificateCache
from headscale_tw.certs.challenges import ChallengeResponses
from headscale_tw.certs.ordering import AcmeOrdering, AcmeProblem, IssuedCertificate, certificate_dates
from headscale_tw.clock import utc_now

__all__ = ["CertificateManager", "FIRST_RETRY", "LAST_RETRY", "RATE_LIMITED_RETRY", "RENEW_AT"]

FIRST_RETRY = 60.0
LAST_RETRY = 6 * 3600.0
RATE_LIMITED_RETRY = 3600.0
#: Renew once this share of the certificate's lifetime has passed.
RENEW_AT = 2 / 3
#: How long one order may take, validation and finalization included.
ORDER_DEADLINE = 180.0


class CertificateManager(service.Service):
    """
    Obtains, caches and renews the server's certificate.

    :param hostname: the name to certify (``tls_letsencrypt_hostname``).
    :param challenge_type: ``"HTTP-01"`` or ``"TLS-ALPN-01"``.
    :param open_account: makes the (blocking) ACME account, given the account key; called in a thread.
    :param in_thread: runs a blocking callable off the reactor thread and returns a Deferred.
    :param on_certificate: called on the reactor thread with each certificate to serve.
    """

    log = Logger()

    def __init__(self, hostname: str, challenge_type: str, cache: CertificateCache,
                 responses: ChallengeResponses, clock: IReactorTime,
                 open_account: Callable[[bytes], AcmeOrdering],
                 in_thread: Callable[..., Deferred],
                 on_certificate: Callable[[IssuedCertificate], None]) -> None:
        self.hostname = hostname
        self.challenge_type = challenge_type
        self.cache = cache
        self.responses = responses
        self.clock = clock
        self._open_account = open_account
        self._in_thread = in_thread
        self._on_certificate = on_certificate
        self._account: AcmeOrdering | None = None
        self._timer: IDelayedCall | None = None
        self._retry = FIRST_RETRY
        self.current: IssuedCertificate | None = None
        #: Fires with the first certificate served; fails if the first order fails with nothing cached.
        self.ready: Deferred[IssuedCertificate] = Deferred()
        #: Orders placed (a work counter: a restart with a valid cache places none).
        self.orders = 0
        #: The check under way, or the last one (fires when it has finished, whatever its outcome).
        self.checking: Deferred | None = None

    # -- service ---------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        cached = self.cache.load(self.hostname)
        if cached is not None and self._usable(cached):
            self._serve(cached)
        self._check_now()
        self._announce_ready()

    def stopService(self) -> Deferred | None:
        super().stopService()
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        return None

    # -- schedule --------------------------------------------------------------

    def _usable(self, issued: IssuedCertificate) -> bool:
        try:
            not_before, not_after = certificate_dates(issued.chain_pem)
        except ValueError:
            return False
        return not_before <= utc_now(self.clock) < not_after

    def renewal_time(self, issued: IssuedCertificate) -> datetime.datetime:
        """When ``issued`` should be replaced."""
        not_before, not_after = certificate_dates(issued.chain_pem)
        return not_before + (not_after - not_before) * RENEW_AT

    def _check_now(self) -> None:
        self._timer = None
        self.checking = ensureDeferred(self._check())
        self.checking.addErrback(lambda f: self.log.failure("certificate check failed", f))

    def _schedule(self, delay: float) -> None:
        if not self.running:
            return
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = self.clock.callLater(max(0.0, delay), self._check_now)

    async def _check(self) -> None:
        if self.current is not None:
            due = self.renewal_time(self.current)
            wait = (due - utc_now(self.clock)).total_seconds()
            if wait > 0:
                self._schedule(wait)
                return
        try:
            issued = await self._order()
        except AcmeProblem as e:
            self._failed(e)
            return
        self.cache.store(self.hostname, issued)
        self._retry = FIRST_RETRY
        self._schedule((self.renewal_time(issued) - utc_now(self.clock)).total_seconds())
        self._serve(issued)
        self._announce_ready()

    def _failed(self, problem: AcmeProblem) -> None:
        delay = max(self._retry, RATE_LIMITED_RETRY) if problem.rate_limited else self._retry
        self._retry = min(self._retry * 2, LAST_RETRY)
        if self.current is None and not self.ready.called:
            self.log.error("no certificate for {hostname}: {problem}", hostname=self.hostname, problem=problem)
            self.ready.errback(problem)
            return
        self.log.warn("certificate for {hostname} not renewed: {problem}; serving the current one, "
                      "next try in {delay:.0f} s", hostname=self.hostname, problem=problem, delay=delay)
        self._schedule(delay)

    def _serve(self, issued: IssuedCertificate) -> None:
        self.current = issued
        self._on_certificate(issued)
        _, not_after = certificate_dates(issued.chain_pem)
        self.log.info("serving the certificate for {hostname}, valid until {until}",
                      hostname=self.hostname, until=not_after.isoformat())

    def _announce_ready(self) -> None:
        # Last, once the next check is scheduled: whoever waits on ``ready`` may act at once.
        if self.current is not None and not self.ready.called:
            self.ready.callback(self.current)

    # -- one order -------------------------------------------------------------

    async def _order(self) -> IssuedCertificate:
        self.orders += 1
        if self._account is None:
            key = self.cache.account_key()
            self._account = await self._in_thread(self._open_account, key)
        account = self._account
        pending = await self._in_thread(account.begin, self.hostname, self.challenge_type)
        published: list[tuple[str, Any]] = []
        try:
            for token, key_authorization in pending.http01.items():
                self.responses.add_http01(token, key_authorization)
                published.append(("http01", token))
            for domain, (cert_pem, key_pem) in pending.tls_alpn01.items():
                self.responses.add_tls_alpn01(domain, cert_pem, key_pem)
                published.append(("tls_alpn01", domain))
            return await self._in_thread(account.complete, pending, ORDER_DEADLINE)
        finally:
            for kind, name in published:
                if kind == "http01":
                    self.responses.remove_http01(name)
                else:
                    self.responses.remove_tls_alpn01(name)
