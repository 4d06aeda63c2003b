# -*- test-case-name: tests.certs.test_manager -*-
"""
One certificate order with an ACME server, in blocking steps for a worker thread.

The ``acme`` package (the certbot project's RFC 8555 client) does the JWS,
nonces and polling; its network calls block, so :class:`AcmeOrdering` is only
ever used from a thread (the manager runs each step with ``deferToThread``).
The steps are split where the reactor must act in between::

    ordering = AcmeOrdering(directory_url, account_key_pem, email)   # thread
    pending = ordering.begin(domain, challenge_type)                  # thread
    ... the reactor publishes pending.http01 / pending.tls_alpn01 ...
    issued = ordering.complete(pending, deadline)                    # thread
    ... the reactor withdraws them and serves issued.chain_pem ...

Nothing here touches the reactor or shared state, so no lock is needed.
"""

from __future__ import annotations

import datetime
import email.utils
from dataclasses import dataclass, field
from typing import Any

import josepy as jose
from acme import challenges, client, errors, messages
from acme import crypto_util as acme_crypto
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from headscale_tw.certs.challenges import alpn_validation_certificate

__all__ = ["AcmeOrdering", "AcmeProblem", "IssuedCertificate", "PendingOrder", "new_private_key_pem",
           "certificate_dates", "retry_after_seconds"]

HTTP01 = "HTTP-01"
TLS_ALPN01 = "TLS-ALPN-01"
_WIRE_TYPES = {HTTP01: "http-01", TLS_ALPN01: "tls-alpn-01"}


class AcmeProblem(Exception):
    """The ACME server refused or could not be reached; ``rate_limited`` when it said so,
    ``retry_after`` the seconds its refusal's ``Retry-After`` asked for (or ``None``)."""

    def __init__(self, message: str, rate_limited: bool = False, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.rate_limited = rate_limited
        self.retry_after = retry_after


def retry_after_seconds(value: str | None, now: datetime.datetime) -> float | None:
    """A ``Retry-After`` header (seconds or an HTTP date, RFC 9110 10.2.3) as seconds from ``now``, or ``None``."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(int(value))
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.timezone.utc)
    return max(0.0, (when - now).total_seconds())


class _TLSALPN01Response(challenges.ChallengeResponse):
    """The (empty) answer to a TLS-ALPN-01 challenge, which the ``acme`` package no longer models."""

    typ = "tls-alpn-01"

    def __bool__(self) -> bool:
        # acme sends a falsy object as an empty payload (POST-as-GET, which only
        # reads the challenge); a response without fields must still be "{}".
        return True


def new_private_key_pem() -> bytes:
    """A new P-256 private key in PKCS#8 PEM (the certificate's and the account's)."""
    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def certificate_dates(chain_pem: bytes) -> tuple[datetime.datetime, datetime.datetime]:
    """The leaf certificate's not-before and not-after, as aware UTC datetimes."""
    leaf = x509.load_pem_x509_certificate(chain_pem)
    return leaf.not_valid_before_utc, leaf.not_valid_after_utc


@dataclass(frozen=True)
class IssuedCertificate:
    """A certificate chain (leaf first) and its private key, in PEM."""

    chain_pem: bytes
    key_pem: bytes


@dataclass
class PendingOrder:
    """An order whose challenges the reactor must publish before :meth:`AcmeOrdering.complete`."""

    order: Any
    key_pem: bytes
    challenges: list[tuple[Any, Any]] = field(default_factory=list)  # (challenge body, response)
    #: token -> key authorization, to answer on ``/.well-known/acme-challenge/``
    http01: dict[str, str] = field(default_factory=dict)
    #: domain -> (certificate PEM, key PEM), to show ``acme-tls/1`` handshakes
    tls_alpn01: dict[str, tuple[bytes, bytes]] = field(default_factory=dict)


class AcmeOrdering:
    """
    An ACME account and the orders made with it; every method blocks (use from a thread).

    :param directory_url: the ACME directory (``acme_url``).
    :param account_key_pem: the account's private key (PKCS#8 PEM, P-256).
    :param email: the contact address (``acme_email``), or empty.
    :param ca_bundle: a CA file to verify the ACME server with instead of the system's.
    """

    def __init__(self, directory_url: str, account_key_pem: bytes, email: str = "",
                 ca_bundle: str | None = None, timeout: int = 30) -> None:
        key = serialization.load_pem_private_key(account_key_pem, password=None)
        self.account_key = jose.JWKEC(key=key)
        net = client.ClientNetwork(self.account_key, alg=jose.ES256, user_agent="headscale-tw", timeout=timeout)
        #: The Retry-After of the last refused request (the acme package drops response headers from errors).
        self.last_retry_after: float | None = None
        net.session.hooks["response"].append(self._note_retry_after)
        if ca_bundle:
            net.verify_ssl = ca_bundle  # type: ignore[assignment]  # requests takes a CA path here
        try:
            directory = client.ClientV2.get_directory(directory_url, net)
            self.client = client.ClientV2(directory, net)
            registration = messages.NewRegistration.from_data(email=email or None, terms_of_service_agreed=True)
            try:
                self.client.new_account(registration)
            except errors.ConflictError as existing:  # the key already has an account: use it
                regr = messages.RegistrationResource(uri=existing.location, body=messages.Registration())
                self.client.net.account = self.client.query_registration(regr)
        except Exception as e:
            raise _problem("registering the ACME account", e, self.last_retry_after) from None

    def begin(self, domain: str, challenge_type: str) -> PendingOrder:
        """Order a certificate for ``domain``; return the challenges to publish."""
        now = datetime.datetime.now(datetime.timezone.utc)  # the ACME server's view of time: the wall clock
        key_pem = new_private_key_pem()
        csr = acme_crypto.make_csr(key_pem, [domain])
        try:
            order = self.client.new_order(csr)
        except Exception as e:
            raise _problem(f"ordering a certificate for {domain}", e, self.last_retry_after) from None
        pending = PendingOrder(order=order, key_pem=key_pem)
        wanted = _WIRE_TYPES[challenge_type]
        for authorization in order.authorizations:
            if authorization.body.status == messages.STATUS_VALID:
                continue
            name = authorization.body.identifier.value
            chosen = next((c for c in authorization.body.challenges if c.chall.typ == wanted
                           or getattr(c.chall, "jobj", {}).get("type") == wanted), None)
            if chosen is None:
                raise AcmeProblem(f"the ACME server offers no {challenge_type} challenge for {name}")
            if challenge_type == HTTP01:
                response, validation = chosen.chall.response_and_validation(self.account_key)
                pending.http01[chosen.chall.encode("token")] = validation
            else:
                key_authorization = f"{chosen.chall.jobj['token']}.{self._thumbprint()}"
                pending.tls_alpn01[name] = alpn_validation_certificate(name, key_authorization, now)
                response = _TLSALPN01Response()
            pending.challenges.append((chosen, response))
        return pending

    def complete(self, pending: PendingOrder, timeout: float) -> IssuedCertificate:
        """Ask for validation, wait up to ``timeout`` seconds for it and for the certificate.

        The challenges must be published before this is called.
        """
        try:
            for challenge, response in pending.challenges:
                self.client.answer_challenge(challenge, response)
            # acme polls against naive local wall-clock time
            deadline = datetime.datetime.now() + datetime.timedelta(seconds=timeout)
            done = self.client.poll_and_finalize(pending.order, deadline)
        except Exception as e:
            raise _problem("validating and finalizing the order", e, self.last_retry_after) from None
        return IssuedCertificate(chain_pem=done.fullchain_pem.encode("ascii"), key_pem=pending.key_pem)

    def _note_retry_after(self, response: Any, *args: Any, **kw: Any) -> None:
        # A requests response hook: runs in this (worker) thread for every response.
        if response.ok:
            self.last_retry_after = None
        else:
            now = datetime.datetime.now(datetime.timezone.utc)
            self.last_retry_after = retry_after_seconds(response.headers.get("Retry-After"), now)

    def _thumbprint(self) -> str:
        return jose.b64encode(self.account_key.thumbprint(hash_function=hashes.SHA256)).decode("ascii")


def _problem(doing: str, error: Exception, retry_after: float | None = None) -> AcmeProblem:
    rate_limited = False
    detail = str(error) or type(error).__name__
    if isinstance(error, messages.Error):
        rate_limited = (error.typ or "").endswith(":rateLimited")
        detail = f"{error.typ}: {error.detail}"
    elif isinstance(error, errors.ValidationError):
        failed = [a.body.identifier.value for a in error.failed_authzrs]
        detail = f"validation failed for {', '.join(failed)}"
    elif isinstance(error, errors.TimeoutError):
        detail = "timed out waiting for the ACME server"
    if retry_after is not None:
        detail += f" (the server asks to retry after {retry_after:.0f} s)"
    return AcmeProblem(f"{doing}: {detail}", rate_limited=rate_limited, retry_after=retry_after)
