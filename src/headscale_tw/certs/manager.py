# -*- test-case-name: tests.certs.test_manager -*-
"""
The certificate manager: a certificate for ``tls_letsencrypt_hostname``, always.

At start it serves the stored certificate when there is one (the database's,
else the cache folder's), and orders one when none is or it is due;
afterwards it checks again when the certificate reaches its renewal point (two
thirds of its lifetime, so a 90-day Let's Encrypt certificate is renewed with
30 days left). A new certificate is stored and handed to ``on_certificate``
(the TLS listener swaps it in for new connections).

Several instances on one database share the account, the certificate and the
challenges (:mod:`headscale_tw.certs.storage`). Only the holder of the lease
``acme:<hostname>`` (:class:`~headscale_tw.control.lease.LeaseKeeper`) orders;
its writes are fenced by that lease. With ``poll_interval`` set (PostgreSQL)
every instance reads the certificate's serial and the live challenges that
often: a new certificate is loaded and swapped in, and the challenges are
mirrored into :class:`ChallengeResponses`, so a validation request reaching
any instance is answered. The orderer waits two poll intervals after
publishing its challenges before asking the ACME server to validate.

A failed order is logged in one line and tried again with exponential backoff
(:data:`FIRST_RETRY` doubling up to :data:`LAST_RETRY`; when the ACME server
says ``rateLimited``, no sooner than its ``Retry-After`` (capped at
:data:`MAX_RETRY_AFTER`) or :data:`RATE_LIMITED_RETRY` without one), while
the current certificate keeps being served. :attr:`CertificateManager.ready`
fires once a real certificate is being served, and fails when this instance's
first order fails with nothing stored: start-up then fails instead of serving
a certificate no client trusts.

The ACME steps block, so they run through ``in_thread`` (``deferToThread`` in
the daemon); the challenge answers are published between them on the reactor
thread, and the schedule runs on the injected clock.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable

from twisted.application import service
from twisted.internet.defer import CancelledError, Deferred, ensureDeferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger

from headscale_tw.certs.challenges import ChallengeResponses
from headscale_tw.certs.ordering import AcmeOrdering, AcmeProblem, IssuedCertificate, certificate_dates
from headscale_tw.certs.storage import CertificateStorage
from headscale_tw.clock import utc_now
from headscale_tw.control.lease import LeaseKeeper
from headscale_tw.interfaces import ILeaseStore
from headscale_tw.storage.stores.leases import Lease

__all__ = ["CertificateManager", "FIRST_RETRY", "LAST_RETRY", "RATE_LIMITED_RETRY", "MAX_RETRY_AFTER", "RENEW_AT"]

FIRST_RETRY = 60.0
LAST_RETRY = 6 * 3600.0
RATE_LIMITED_RETRY = 3600.0
#: The longest ``Retry-After`` honoured (a longer one is taken as this).
MAX_RETRY_AFTER = 7 * 24 * 3600.0
#: Renew once this share of the certificate's lifetime has passed.
RENEW_AT = 2 / 3
#: How long one order may take, validation and finalization included.
ORDER_DEADLINE = 180.0


class CertificateManager(service.Service):
    """
    Obtains, stores, shares and renews the server's certificate.

    :param hostname: the name to certify (``tls_letsencrypt_hostname``).
    :param challenge_type: ``"HTTP-01"`` or ``"TLS-ALPN-01"``.
    :param storage: the shared account key, certificate and challenges.
    :param responses: the challenge answers this instance's listeners give.
    :param open_account: makes the (blocking) ACME account, given the account key; called in a thread.
    :param in_thread: runs a blocking callable off the reactor thread and returns a Deferred.
    :param on_certificate: called on the reactor thread with each certificate to serve.
    :param leases: the lease store; only the holder of ``acme:<hostname>`` orders.
    :param instance_id: this instance's name as a lease holder.
    :param poll_interval: seconds between reads of the shared state (``None``: this is the only instance).
    """

    log = Logger()

    def __init__(self, hostname: str, challenge_type: str, storage: CertificateStorage,
                 responses: ChallengeResponses, clock: IReactorTime,
                 open_account: Callable[[bytes], AcmeOrdering],
                 in_thread: Callable[..., Deferred],
                 on_certificate: Callable[[IssuedCertificate], None],
                 leases: ILeaseStore, instance_id: str, poll_interval: float | None = None) -> None:
        self.hostname = hostname
        self.challenge_type = challenge_type
        self.storage = storage
        self.responses = responses
        self.clock = clock
        self.poll_interval = poll_interval
        self._open_account = open_account
        self._in_thread = in_thread
        self._on_certificate = on_certificate
        self.keeper = LeaseKeeper(leases, f"acme:{hostname}", instance_id, clock, on_change=self._lease_changed)
        self._account: AcmeOrdering | None = None
        self._check_timer: IDelayedCall | None = None
        self._poll_timer: IDelayedCall | None = None
        self._check_again = False
        self._retry = FIRST_RETRY
        #: Clock time before which no order is placed (the backoff after a failure).
        self._order_after = 0.0
        self._serial: int | None = None
        self.current: IssuedCertificate | None = None
        #: Fires with the first certificate served; fails if the first order fails with nothing stored.
        self.ready: Deferred[IssuedCertificate] = Deferred()
        #: Orders placed by this instance (a work counter: a restart with a valid certificate places none).
        self.orders = 0
        #: The check under way, or the last one (fires when it has finished, whatever its outcome).
        self.checking: Deferred | None = None
        #: The poll under way, or the last one.
        self.polling: Deferred | None = None
        self._propagating: Deferred | None = None

    @property
    def next_check_at(self) -> float | None:
        """The clock time of the next scheduled check, or ``None``."""
        timer = self._check_timer
        return timer.getTime() if timer is not None and timer.active() else None

    # -- service ---------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self.keeper.startService()
        self._check_now()
        if self.poll_interval is not None:
            self._poll()  # at once: a challenge another instance published may be validated here already

    def stopService(self) -> Deferred:
        super().stopService()
        for timer in (self._check_timer, self._poll_timer):
            if timer is not None and timer.active():
                timer.cancel()
        self._check_timer = self._poll_timer = None
        if self._propagating is not None:
            self._propagating.cancel()  # the order under way ends, its challenges withdrawn
        return self.keeper.stopService()

    def _lease_changed(self, lease: Lease | None) -> None:
        if lease is not None and self.running:
            self._check_now()

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

    def _due(self) -> bool:
        return self.current is None or self.renewal_time(self.current) <= utc_now(self.clock)

    def _check_now(self) -> None:
        if self._check_timer is not None and self._check_timer.active():
            self._check_timer.cancel()
        self._check_timer = None
        if self.checking is not None and not self.checking.called:
            self._check_again = True  # the running check goes round once more
            return
        self.checking = ensureDeferred(self._checks())

    async def _checks(self) -> None:
        while True:
            self._check_again = False
            try:
                await self._check()
            except CancelledError:
                return  # stopped while an order waited for the other instances
            except Exception as e:  # the database, most likely: try again after the backoff
                self.log.warn("certificate check for {hostname} failed: {error}; next try in {delay:.0f} s",
                              hostname=self.hostname, error=e, delay=self._retry)
                if self.running and not self._check_again:
                    self._check_timer = self.clock.callLater(self._retry, self._check_now)
                    self._retry = min(self._retry * 2, LAST_RETRY)
            if not (self._check_again and self.running):
                return

    def _schedule_check(self) -> None:
        if not self.running:
            return
        if self._check_timer is not None and self._check_timer.active():
            self._check_timer.cancel()
        self._check_timer = None
        now = self.clock.seconds()
        current = self.current
        if current is not None and not self._due():
            at = self.renewal_time(current).timestamp()
        elif self.keeper.lease is not None:
            at = self._order_after  # the holder orders now, or when the backoff ends
        else:
            return  # another instance orders: a poll or gaining the lease brings the next check
        self._check_timer = self.clock.callLater(max(0.0, at - now), self._check_now)

    async def _check(self) -> None:
        stored, serial = await self.storage.load()
        if stored is not None and (serial is None or serial != self._serial) and self._usable(stored):
            if self.current is None or stored.chain_pem != self.current.chain_pem:
                self._serve(stored)
            self._serial = serial
        lease = self.keeper.lease
        if stored is not None and serial is None and lease is not None and self._usable(stored):
            # Only in the cache folder (a release that kept it there alone): share it with the others.
            self._serial = await self.storage.save(stored, lease)
        if self._due() and lease is not None and self.clock.seconds() >= self._order_after:
            try:
                issued = await self._order(lease)
            except AcmeProblem as e:
                if self._failed(e):
                    return
            else:
                self._retry, self._order_after = FIRST_RETRY, 0.0
                serial = await self.storage.save(issued, lease)
                if serial is None:
                    self.log.warn("the acme:{hostname} lease passed to another instance during the order; "
                                  "serving the new certificate without storing it", hostname=self.hostname)
                self._serial = serial
                self._serve(issued)
        self._schedule_check()
        self._announce_ready()

    def _failed(self, problem: AcmeProblem) -> bool:
        """Schedule the next order after a failure; True when start-up was told to fail."""
        delay = self._retry
        if problem.retry_after is not None:
            delay = max(delay, min(problem.retry_after, MAX_RETRY_AFTER))
        elif problem.rate_limited:
            delay = max(delay, RATE_LIMITED_RETRY)
        self._retry = min(self._retry * 2, LAST_RETRY)
        self._order_after = self.clock.seconds() + delay
        if self.current is None and not self.ready.called:
            self.log.error("no certificate for {hostname}: {problem}", hostname=self.hostname, problem=problem)
            self.ready.errback(problem)
            return True
        if self.current is None:
            self.log.warn("no certificate for {hostname} yet: {problem}; next try in {delay:.0f} s",
                          hostname=self.hostname, problem=problem, delay=delay)
        else:
            self.log.warn("certificate for {hostname} not renewed: {problem}; serving the current one, "
                          "next try in {delay:.0f} s", hostname=self.hostname, problem=problem, delay=delay)
        return False

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

    # -- the shared state --------------------------------------------------------

    def _poll(self) -> None:
        self._poll_timer = None
        self.polling = ensureDeferred(self._poll_once())

    async def _poll_once(self) -> None:
        try:
            state = await self.storage.poll()
        except Exception as e:
            self.log.warn("could not read the shared ACME state: {error}", error=e)
        else:
            self.responses.set_shared(state.http01, state.tls_alpn01)
            if state.serial is not None and state.serial != self._serial:
                self._check_now()  # another instance stored a certificate: load and serve it
        if self.running and self.poll_interval is not None:
            self._poll_timer = self.clock.callLater(self.poll_interval, self._poll)

    # -- one order -------------------------------------------------------------

    async def _order(self, lease: Lease) -> IssuedCertificate:
        self.orders += 1
        if self._account is None:
            key = await self.storage.account_key()
            self._account = await self._in_thread(self._open_account, key)
        account = self._account
        pending = await self._in_thread(account.begin, self.hostname, self.challenge_type)
        for token, key_authorization in pending.http01.items():
            self.responses.add_http01(token, key_authorization)
        for domain, (cert_pem, key_pem) in pending.tls_alpn01.items():
            self.responses.add_tls_alpn01(domain, cert_pem, key_pem)
        try:
            if not await self.storage.publish(pending, lease, ORDER_DEADLINE + 60):
                raise AcmeProblem("the ordering lease passed to another instance before validation")
            if self.poll_interval is not None:
                # Every instance reads the challenges within one poll interval; allow two.
                self._propagating = deferLater(self.clock, 2 * self.poll_interval, lambda: None)
                try:
                    await self._propagating
                finally:
                    self._propagating = None
            return await self._in_thread(account.complete, pending, ORDER_DEADLINE)
        finally:
            for token in pending.http01:
                self.responses.remove_http01(token)
            for domain in pending.tls_alpn01:
                self.responses.remove_tls_alpn01(domain)
            try:
                await self.storage.withdraw(pending)
            except Exception as e:  # they expire by themselves
                self.log.warn("could not withdraw the ACME challenges: {error}", error=e)
