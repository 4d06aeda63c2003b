# -*- test-case-name: tests.certs.test_listeners -*-
"""
The listeners of a server whose certificate comes from ACME (``tls_letsencrypt_hostname``).

:func:`acme_listeners` builds, as child services in start order: the plain-HTTP
listener of ``tls_letsencrypt_listen`` (HTTP-01 answers, a redirect to https
for everything else), the certificate manager, and the main TLS listener of
``listen_addr`` serving the site. The TLS listener starts with the cached
certificate, or with a one-day self-signed one while the first order runs
(TLS-ALPN-01 needs the listener up to be validated); it never serves plain
HTTP. ``ready`` fires once a real certificate is served and fails when the
first order fails with nothing cached, so start-up can refuse to go on.

The account key, the certificate and the challenges live in the database
(:mod:`headscale_tw.certs.storage`); on PostgreSQL, where several instances may
share it, each instance polls that state every :data:`SHARED_POLL_INTERVAL`
seconds and only the lease holder orders.

The ACME server's own certificate is checked against the system's trust store,
or the CA file named by ``REQUESTS_CA_BUNDLE`` or ``SSL_CERT_FILE``.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import IService
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import SSL4ServerEndpoint, TCP4ServerEndpoint, TCP6ServerEndpoint
from twisted.internet.threads import deferToThread
from twisted.web.server import Site

from headscale_tw.certs.cache import CertificateCache
from headscale_tw.certs.challenges import ChallengeResponses, self_signed_certificate
from headscale_tw.certs.http01 import AcmeHTTPResource
from headscale_tw.certs.manager import CertificateManager
from headscale_tw.certs.ordering import AcmeOrdering, IssuedCertificate
from headscale_tw.certs.storage import CertificateStorage
from headscale_tw.certs.tls import SwappableServerTLS
from headscale_tw.config.model import Config
from headscale_tw.hostport import parse_hostport, port_number
from headscale_tw.web.access_log import AccessLoggedSite

__all__ = ["AcmeListeners", "acme_listeners", "SHARED_POLL_INTERVAL"]

#: Seconds between reads of the shared ACME state when several instances may share the database.
SHARED_POLL_INTERVAL = 2.0


@dataclass
class AcmeListeners:
    """What :func:`acme_listeners` built."""

    services: list[IService]
    manager: CertificateManager
    tls: SwappableServerTLS
    ready: Deferred


def _endpoint(reactor: Any, hostport: str, tls: SwappableServerTLS | None = None, backlog: int = 50) -> Any:
    host, port = parse_hostport(hostport, named_port=True)
    interface = host or "0.0.0.0"
    if tls is not None:
        return SSL4ServerEndpoint(reactor, port_number(port), tls, backlog=backlog, interface=interface)
    if ":" in interface:
        return TCP6ServerEndpoint(reactor, port_number(port), backlog=backlog, interface=interface)
    return TCP4ServerEndpoint(reactor, port_number(port), backlog=backlog, interface=interface)


def acme_listeners(config: Config, reactor: Any, site: Site, backlog: int, db: Any, instance_id: str,
                   in_thread: Any = deferToThread, access_log: Any = None) -> AcmeListeners:
    """The HTTP-01 listener, the certificate manager and the main TLS listener for ``config``.

    ``db`` is the open database (its ``acme`` and ``leases`` stores are used);
    ``instance_id`` names this instance as a lease holder. ``access_log`` (a
    :class:`~headscale_tw.web.access_log.AccessLog`) counts and logs the HTTP-01
    listener's requests as every other listener's are.
    """
    t = config.tls
    hostname = t.letsencrypt_hostname
    responses = ChallengeResponses()
    cache = CertificateCache(t.letsencrypt_cache_dir, t.acme_url)
    ca_bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("SSL_CERT_FILE") or None
    first = self_signed_certificate(hostname, datetime.datetime.now(datetime.timezone.utc))
    tls = SwappableServerTLS(*first, validation=responses.tls_alpn01)

    def open_account(key: bytes) -> AcmeOrdering:
        return AcmeOrdering(t.acme_url, key, t.acme_email, ca_bundle=ca_bundle)

    def serve(issued: IssuedCertificate) -> None:
        tls.swap(issued.chain_pem, issued.key_pem)

    storage = CertificateStorage(hostname, t.acme_url, db.acme, cache, reactor)
    shared = db.engine == "postgres"
    manager = CertificateManager(hostname, t.letsencrypt_challenge_type, storage, responses, reactor,
                                 open_account, in_thread, serve, leases=db.leases, instance_id=instance_id,
                                 poll_interval=SHARED_POLL_INTERVAL if shared else None)
    http01_root = AcmeHTTPResource(responses, config.server_url)
    http01_site = Site(http01_root) if access_log is None else AccessLoggedSite(http01_root, access_log)
    http01 = StreamServerEndpointService(_endpoint(reactor, t.letsencrypt_listen), http01_site)
    main = StreamServerEndpointService(_endpoint(reactor, config.listen_addr, tls, backlog), site)
    return AcmeListeners(services=[http01, manager, main], manager=manager, tls=tls, ready=manager.ready)
