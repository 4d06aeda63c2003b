# -*- test-case-name: tests.oidc.test_signin_e2e -*-
"""
Our sign-in pages over HTTP against the real OpenID Provider, one or two instances.

Each :class:`_Instance` is what ``service.py`` mounts for ``oidc.*``: its own
:class:`~headscale_tw.oidc.client.RelyingParty`, :class:`~headscale_tw.oidc.signin.SignIn`
and pages on a loopback listener, over its own connection to the database, with
pending registrations in the real ``auth_requests`` table. The provider
(``oidc-provider`` over https with a throwaway CA) signs a test account in
through its own forms (:class:`~headscale_tw.testing.oidc_browser.FormBrowser`);
the test hands the callback to whichever instance it chooses.

- :class:`SharedLoginTests`: two instances on one PostgreSQL database; a login
  started on one is finished through the other, and a replayed callback fails
  on both.
- :class:`RefusalPageTests`: every way the real provider can make a login fail
  ends in a clear page with nothing registered, and the provider going away
  mid-login loses nothing: a retry once it is back registers the machine.

When Node, the provider's packages or PostgreSQL are missing the tests fail,
never skip.
"""

from __future__ import annotations

import base64
import hashlib
from datetime import timedelta
from http.cookiejar import CookieJar
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import treq
from twisted.internet import defer, reactor
from twisted.trial import unittest
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.resource import Resource
from twisted.web.server import Site

from headscale_tw.clock import utc_now
from headscale_tw.config.model import OIDCConfig
from headscale_tw.oidc.client import RelyingParty
from headscale_tw.oidc.refusals import Reason
from headscale_tw.oidc.signin import PendingLogins, SignIn
from headscale_tw.oidc.tokens import LEEWAY
from headscale_tw.testing.db import create_postgres_database, open_test_database, resolve, sqlite_config
from headscale_tw.testing.oidc_browser import FormBrowser, parse_forms
from headscale_tw.testing.oidc_provider import ClientRegistration, OIDCProvider
from headscale_tw.web.oidc_pages import OIDCCallbackPage, OIDCRegisterPage

__all__ = ["RefusalPageTests", "SharedLoginTests"]

SERVER_URL = "https://headscale.example.test"
REDIRECT_URI = SERVER_URL + "/oidc/callback"
SECRET = "signin-e2e-secret-0123456789"
SCOPES = ("openid", "profile", "email", "groups")
ID_TOKEN_TTL = 120


def _replace_query(url: str, **changes: str) -> str:
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    query.update(changes)
    return urlunsplit(parts._replace(query=urlencode(query)))


def _s256(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


class _AheadClock:
    """The reactor's clock, ``offset`` seconds ahead: a server whose clock is past a token's expiry."""

    def __init__(self, offset: float) -> None:
        self._offset = offset

    def seconds(self) -> float:
        """The reactor's time plus the offset."""
        return reactor.seconds() + self._offset

    def callLater(self, delay: float, f: Any, *args: Any, **kw: Any) -> Any:  # noqa: N802 (IReactorTime)
        """Delays are relative, so they go to the reactor unchanged."""
        return reactor.callLater(delay, f, *args, **kw)

    def getDelayedCalls(self) -> Any:  # noqa: N802 (IReactorTime)
        """The reactor's delayed calls."""
        return reactor.getDelayedCalls()


class _Instance:
    """One server's sign-in: database connection, relying party, pages on a loopback port."""

    def __init__(self, testcase: unittest.TestCase, db_config: Any, provider: OIDCProvider, pool: HTTPConnectionPool,
                 clock: Any = reactor, **oidc: Any) -> None:
        self.db = open_test_database(testcase, db_config)
        settings: dict[str, Any] = dict(issuer=provider.issuer, client_id="headscale", client_secret=SECRET,
                                        scope=SCOPES, pkce_enabled=True, pkce_method="S256")
        settings.update(oidc)
        config = OIDCConfig(**settings)
        # jwks_refresh_interval=0: a provider restarted with new keys is followed at once.
        self.relying_party = RelyingParty(config, REDIRECT_URI, SECRET, provider.treq_client(reactor, pool), clock,
                                          jwks_refresh_interval=0)
        self.sign_in = SignIn(self.relying_party, self.db.users, self.is_pending, self.finish, clock,
                              PendingLogins(self.db.oidc_logins))
        root = Resource()
        root.putChild(b"register", OIDCRegisterPage(self.sign_in))
        oidc_root = Resource()
        oidc_root.putChild(b"callback", OIDCCallbackPage(self.sign_in))
        root.putChild(b"oidc", oidc_root)
        self.port = reactor.listenTCP(0, Site(root), interface="127.0.0.1")
        testcase.addCleanup(self.port.stopListening)
        self.url = f"http://127.0.0.1:{self.port.getHost().port}"

    async def is_pending(self, auth_id: str) -> bool:
        """Whether ``auth_id`` is a pending, unexpired registration in the shared table."""
        request = await self.db.auth_requests.get(auth_id)
        return request is not None and request.state_at(utc_now(reactor)) == "pending"

    async def finish(self, auth_id: str, user: Any, expires_at: Any = None) -> Any:
        """Approve the registration for ``user``, as the registrar does (without a node)."""
        return await self.db.auth_requests.finish(auth_id, "approved", user_id=user.id)


class _SignInE2E(unittest.TestCase):
    """The provider, an HTTP client for our pages and the steps of one login."""

    timeout = 180

    def setUp(self) -> None:
        self.provider = OIDCProvider(self.mktemp(), [ClientRegistration("headscale", SECRET, (REDIRECT_URI,))],
                                     id_token_ttl=ID_TOKEN_TTL)
        self.addCleanup(self.provider.stop)
        self.provider.start()
        self.pool = HTTPConnectionPool(reactor, persistent=True)
        self.addCleanup(self.pool.closeCachedConnections)
        self.web = treq.client.HTTPClient(Agent(reactor, pool=self.pool))
        self.serial = 0

    def instance(self, db_config: Any, **kw: Any) -> _Instance:
        """A new instance on ``db_config``."""
        return _Instance(self, db_config, self.provider, self.pool, **kw)

    def pending_registration(self, instance: _Instance) -> str:
        """A pending registration (as ``tailscale up`` without a key leaves), by its auth id."""
        self.serial += 1
        auth_id = f"auth{self.serial:04d}"
        now = utc_now(reactor)
        resolve(instance.db.auth_requests.create(
            auth_id=auth_id, kind="register", source="192.0.2.1", machine_key=f"mkey:{self.serial:064x}",
            node_key=f"nodekey:{self.serial:064x}", hostname="laptop", expires_at=now + timedelta(minutes=15),
            max_per_source=10, max_total=100, now=now))
        return auth_id

    async def get(self, url: str) -> tuple[int, Any, str]:
        """GET one of our pages without following redirects; ``(status, headers, body)``."""
        response = await self.web.get(url, allow_redirects=False).addTimeout(30, reactor)
        body = await treq.content(response).addTimeout(30, reactor)
        return response.code, response.headers, body.decode("utf-8")

    async def begin(self, instance: _Instance, auth_id: str) -> str:
        """Open ``/register/<auth_id>`` on ``instance``; the provider URL it redirects to."""
        status, headers, body = await self.get(f"{instance.url}/register/{auth_id}")
        self.assertEqual(status, 302, body)
        return headers.getRawHeaders("location")[0]

    async def at_provider(self, url: str, login: str) -> str:
        """Sign ``login`` in through the provider's forms; the callback's query string."""
        browser = FormBrowser(self.provider.treq_client(reactor, self.pool, cookiejar=CookieJar()), reactor)
        return urlsplit(await browser.sign_in(url, REDIRECT_URI, login)).query

    async def callback(self, instance: _Instance, query: str) -> tuple[int, str]:
        """Hand the callback to ``instance``; ``(status, page)``."""
        status, _, body = await self.get(f"{instance.url}/oidc/callback?{query}")
        return status, body

    async def confirm(self, instance: _Instance, page: str) -> tuple[int, str]:
        """Post the confirmation form of ``page`` to ``instance``; ``(status, page)``."""
        [form] = parse_forms(page)
        response = await self.web.post(instance.url + form.action, allow_redirects=False).addTimeout(30, reactor)
        body = await treq.content(response).addTimeout(30, reactor)
        return response.code, body.decode("utf-8")

    async def login(self, instance: _Instance, login: str, tamper: Any = None, change: Any = None) -> tuple[int, str]:
        """A new registration, ``login`` at the provider, the callback to ``instance``; ``(status, page)``."""
        url = await self.begin(instance, self.pending_registration(instance))
        query = await self.at_provider(tamper(url) if tamper else url, login)
        return await self.callback(instance, change(query) if change else query)

    def assertNothingRegistered(self, instance: _Instance) -> None:  # noqa: N802 (assert style)
        """No user exists, no registration is approved, no login or confirmation is left over."""
        self.assertEqual(resolve(instance.db.users.list()), [])
        for n in range(1, self.serial + 1):
            self.assertEqual(resolve(instance.db.auth_requests.get(f"auth{n:04d}")).state, "pending")
        self.assertEqual(resolve(instance.db.oidc_logins.count("confirmation")), 0)


class SharedLoginTests(_SignInE2E):
    """Two instances on one PostgreSQL database share the logins in progress."""

    @defer.inlineCallbacks
    def test_callback_on_the_other_instance(self) -> Any:
        """Started on one, called back on two, confirmed on one: registered once; the replayed callback fails on both."""
        config = create_postgres_database(self)
        one, two = self.instance(config), self.instance(config)
        auth_id = self.pending_registration(one)
        url = yield defer.Deferred.fromCoroutine(self.begin(one, auth_id))
        self.assertEqual(resolve(two.db.oidc_logins.count("login")), 1, "the started login is in the shared table")
        query = yield defer.Deferred.fromCoroutine(self.at_provider(url, "alice"))

        status, page = yield defer.Deferred.fromCoroutine(self.callback(two, query))
        self.assertEqual(status, 200, page)
        self.assertIn("alice@example.com", page)
        for instance in (one, two):
            status, replay = yield defer.Deferred.fromCoroutine(self.callback(instance, query))
            self.assertEqual(status, 400, replay)
            self.assertIn(Reason.UNKNOWN_STATE.message, replay)

        status, done = yield defer.Deferred.fromCoroutine(self.confirm(one, page))
        self.assertEqual(status, 200, done)
        self.assertIn("Machine registered", done)
        [user] = resolve(two.db.users.list())
        self.assertEqual((user.name, user.provider_identifier), ("alice", f"{self.provider.issuer}/alice"))
        request = resolve(two.db.auth_requests.get(auth_id))
        self.assertEqual((request.state, request.user_id), ("approved", user.id))
        status, again = yield defer.Deferred.fromCoroutine(self.confirm(two, page))
        self.assertEqual(status, 400, "a confirmation is used once, whichever instance it reaches")
        self.assertEqual(resolve(one.db.oidc_logins.count()), 0)


class RefusalPageTests(_SignInE2E):
    """Each refusal the real provider can cause is a clear page, and nothing is registered."""

    def refused(self, reason: Reason, login: str, instance: _Instance | None = None, **kw: Any) -> defer.Deferred:
        """Sign ``login`` in (with ``tamper``/``change``) and check the page names ``reason``; nothing registered."""
        instance = instance or self.instance(sqlite_config())

        async def run() -> None:
            status, page = await self.login(instance, login, **kw)
            self.assertEqual(status, reason.status, page)
            self.assertIn(reason.message, page)
            self.assertNotIn("<form", page)
            self.assertNothingRegistered(instance)

        return defer.Deferred.fromCoroutine(run())

    def test_wrong_domain(self) -> defer.Deferred:
        """bob@other.org where only example.com may sign in: 403, domain not allowed."""
        return self.refused(Reason.DOMAIN_NOT_ALLOWED, "bob",
                            self.instance(sqlite_config(), allowed_domains=("example.com",)))

    def test_user_not_allowed(self) -> defer.Deferred:
        """bob where only alice@example.com may sign in: 403, account not allowed."""
        return self.refused(Reason.USER_NOT_ALLOWED, "bob",
                            self.instance(sqlite_config(), allowed_users=("alice@example.com",)))

    def test_group_not_allowed(self) -> defer.Deferred:
        """bob (sales) where only engineering may sign in: 403, no allowed group."""
        return self.refused(Reason.GROUP_NOT_ALLOWED, "bob",
                            self.instance(sqlite_config(), allowed_groups=("engineering",)))

    def test_unverified_email(self) -> defer.Deferred:
        """carol's unverified email under a domain rule: 403, email not verified."""
        return self.refused(Reason.EMAIL_NOT_VERIFIED, "carol",
                            self.instance(sqlite_config(), allowed_domains=("example.com",)))

    def test_wrong_state(self) -> defer.Deferred:
        """A callback with a state we never issued: 400, unknown sign-in."""
        return self.refused(Reason.UNKNOWN_STATE, "alice",
                            change=lambda q: _replace_query("?" + q, state="forged-state")[1:])

    def test_tampered_code(self) -> defer.Deferred:
        """A callback whose code was altered: the provider refuses it, 400."""
        return self.refused(Reason.CODE_REJECTED, "alice",
                            change=lambda q: urlencode({k: (v + "x" if k == "code" else v)
                                                        for k, v in parse_qsl(q)}))

    def test_wrong_nonce(self) -> defer.Deferred:
        """An authorization request whose nonce was swapped: the real token's nonce is refused, 400."""
        return self.refused(Reason.NONCE_MISMATCH, "alice", tamper=lambda url: _replace_query(url, nonce="swapped"))

    def test_pkce_mismatch(self) -> defer.Deferred:
        """A code bound to another verifier's challenge: the provider refuses the exchange, 400."""
        return self.refused(Reason.CODE_REJECTED, "alice",
                            tamper=lambda url: _replace_query(url, code_challenge=_s256("x" * 43)))

    def test_provider_denied(self) -> defer.Deferred:
        """A callback carrying the provider's error instead of a code: 400, not completed."""
        return self.refused(Reason.PROVIDER_DENIED, "alice",
                            change=lambda q: urlencode({"state": dict(parse_qsl(q))["state"],
                                                        "error": "access_denied"}))

    def test_expired_token(self) -> defer.Deferred:
        """A server whose clock is past the real token's expiry (plus leeway): 400, token expired."""
        ahead = self.instance(sqlite_config(), clock=_AheadClock(ID_TOKEN_TTL + LEEWAY + 5))
        return self.refused(Reason.TOKEN_EXPIRED, "alice", ahead)

    @defer.inlineCallbacks
    def test_replayed_callback(self) -> Any:
        """The same callback twice: the second is refused before any code exchange, one confirmation only."""
        instance = self.instance(sqlite_config())
        url = yield defer.Deferred.fromCoroutine(self.begin(instance, self.pending_registration(instance)))
        query = yield defer.Deferred.fromCoroutine(self.at_provider(url, "alice"))
        status, _ = yield defer.Deferred.fromCoroutine(self.callback(instance, query))
        self.assertEqual(status, 200)
        status, page = yield defer.Deferred.fromCoroutine(self.callback(instance, query))
        self.assertEqual(status, 400, page)
        self.assertIn(Reason.UNKNOWN_STATE.message, page)
        self.assertEqual(resolve(instance.db.oidc_logins.count("confirmation")), 1)
        self.assertEqual(resolve(instance.db.users.list()), [])

    @defer.inlineCallbacks
    def test_provider_down_during_login(self) -> Any:
        """The provider stops between sign-in and callback: 502 page, registration kept; after it is back a retry registers."""
        instance = self.instance(sqlite_config())
        auth_id = self.pending_registration(instance)
        url = yield defer.Deferred.fromCoroutine(self.begin(instance, auth_id))
        query = yield defer.Deferred.fromCoroutine(self.at_provider(url, "alice"))
        yield self.pool.closeCachedConnections()
        self.provider.stop()
        status, page = yield defer.Deferred.fromCoroutine(self.callback(instance, query))
        self.assertEqual(status, 502, page)
        self.assertIn(Reason.PROVIDER_UNAVAILABLE.message, page)
        self.assertNothingRegistered(instance)

        self.provider.restart()  # same issuer, new signing keys
        url = yield defer.Deferred.fromCoroutine(self.begin(instance, auth_id))
        query = yield defer.Deferred.fromCoroutine(self.at_provider(url, "alice"))
        status, page = yield defer.Deferred.fromCoroutine(self.callback(instance, query))
        self.assertEqual(status, 200, page)
        status, done = yield defer.Deferred.fromCoroutine(self.confirm(instance, page))
        self.assertEqual(status, 200, done)
        self.assertEqual(resolve(instance.db.auth_requests.get(auth_id)).state, "approved")
