# -*- test-case-name: tests.oidc.test_provider_e2e -*-
"""
The relying party against a real OpenID Provider (``oidc-provider`` over https).

Each test starts the provider (``tools/oidc-provider/provider.mjs``) on a
loopback port with a throwaway CA, signs a test account in through the
provider's own login and consent forms with a cookie-keeping treq client, and
hands the callback to :class:`~headscale_tw.oidc.client.RelyingParty`.
When Node or the provider's packages are missing the tests fail, never skip.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable
from http.cookiejar import CookieJar
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from twisted.internet import defer, reactor
from twisted.trial import unittest
from twisted.web.client import HTTPConnectionPool

from headscale_tw.config.model import OIDCConfig
from headscale_tw.oidc.client import RelyingParty
from headscale_tw.oidc.login import LoginRecord
from headscale_tw.oidc.refusals import LoginRefused, Reason
from headscale_tw.oidc.tokens import validate_id_token
from headscale_tw.testing.oidc_browser import FormBrowser
from headscale_tw.testing.oidc_provider import ClientRegistration, OIDCProvider

__all__ = ["ProviderLoginTests"]

SERVER_URL = "https://headscale.example.test"
REDIRECT_URI = SERVER_URL + "/oidc/callback"
SECRET = "test-client-secret-0123456789"
OTHER_SECRET = "other-client-secret-9876543210"
SCOPES = ("openid", "profile", "email", "groups")


def _replace_query(url: str, **changes: str) -> str:
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    query.update(changes)
    return urlunsplit(parts._replace(query=urlencode(query)))


def _s256(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


class ProviderLoginTests(unittest.TestCase):
    """Discovery, a full code-flow login and every refusal, with the real provider."""

    timeout = 120

    def setUp(self) -> None:
        self.provider = OIDCProvider(self.mktemp(), [
            ClientRegistration("headscale", SECRET, (REDIRECT_URI,)),
            ClientRegistration("other-app", OTHER_SECRET, (REDIRECT_URI,)),
        ])
        self.addCleanup(self.provider.stop)
        self.provider.start()
        self.pool = HTTPConnectionPool(reactor, persistent=True)
        self.addCleanup(self.pool.closeCachedConnections)

    def relying_party(self, **overrides: Any) -> RelyingParty:
        settings: dict[str, Any] = dict(issuer=self.provider.issuer, client_id="headscale", client_secret=SECRET,
                                        scope=SCOPES, pkce_enabled=True, pkce_method="S256")
        settings.update(overrides)
        config = OIDCConfig(**settings)
        return RelyingParty(config, REDIRECT_URI, config.client_secret,
                            self.provider.treq_client(reactor, self.pool), reactor)

    async def sign_in(self, rp: RelyingParty, login: str,
                      tamper: Callable[[str], str] | None = None) -> tuple[LoginRecord, dict[str, str]]:
        """Start a login with ``rp``, pass the provider's forms as ``login``; the record and callback params."""
        record, url = await rp.start_login("auth-1")
        if tamper is not None:
            url = tamper(url)
        browser = FormBrowser(self.provider.treq_client(reactor, self.pool, cookiejar=CookieJar()), reactor)
        callback = await browser.sign_in(url, REDIRECT_URI, login)
        return record, dict(parse_qsl(urlsplit(callback).query))

    async def refused(self, rp: RelyingParty, login: str, tamper: Callable[[str], str] | None = None,
                      params_change: dict[str, str] | None = None) -> Reason:
        """Sign ``login`` in and return the reason the relying party refuses it."""
        record, params = await self.sign_in(rp, login, tamper)
        params.update(params_change or {})
        try:
            identity = await rp.finish_login(record, params)
        except LoginRefused as e:
            return e.reason
        self.fail(f"expected a refusal, got {identity}")

    # -- discovery ---------------------------------------------------------

    @defer.inlineCallbacks
    def test_discovery_and_jwks(self) -> Any:
        """Discovery names the provider's endpoints and the JWKS yields its two signing keys."""
        rp = self.relying_party()
        metadata = yield defer.Deferred.fromCoroutine(rp.discover())
        self.assertEqual(metadata.issuer, self.provider.issuer)
        self.assertEqual(metadata.token_endpoint, self.provider.issuer + "/token")
        self.assertIn("S256", metadata.code_challenge_methods)
        self.assertEqual(sorted(metadata.signing_algorithms), ["ES256", "RS256"])
        self.assertEqual(rp.jwks_fetches, 1)
        self.assertEqual(sorted(k.key_type for k in rp.keys.keys), ["EC", "RSA"])

    # -- a whole login -------------------------------------------------------

    @defer.inlineCallbacks
    def test_login_yields_validated_claims(self) -> Any:
        """A code-flow login with PKCE ends in alice's validated identity, groups included."""
        rp = self.relying_party()
        record, params = yield defer.Deferred.fromCoroutine(self.sign_in(rp, "alice"))
        self.assertEqual(params["state"], record.state)
        identity = yield defer.Deferred.fromCoroutine(rp.finish_login(record, params))
        self.assertEqual(identity.issuer, self.provider.issuer)
        self.assertEqual(identity.subject, "alice")
        self.assertEqual(identity.email, "alice@example.com")
        self.assertTrue(identity.email_verified)
        self.assertEqual(identity.name, "Alice Example")
        self.assertEqual(identity.picture, "https://pictures.example.com/alice.png")
        self.assertEqual(identity.groups, ("engineering",))

    @defer.inlineCallbacks
    def test_login_without_pkce(self) -> Any:
        """With PKCE off the URL carries no challenge and the login still succeeds."""
        rp = self.relying_party(pkce_enabled=False)
        record, params = yield defer.Deferred.fromCoroutine(self.sign_in(rp, "bob"))
        self.assertIsNone(record.code_verifier)
        identity = yield defer.Deferred.fromCoroutine(rp.finish_login(record, params))
        self.assertEqual((identity.email, identity.groups), ("bob@other.org", ("sales",)))

    @defer.inlineCallbacks
    def test_extra_params_reach_the_provider(self) -> Any:
        """``extra_params`` are added to the authorization URL; protected names are not overridden."""
        rp = self.relying_party(extra_params=(("login_hint", "alice"), ("state", "forged")))
        record, url = yield defer.Deferred.fromCoroutine(rp.start_login("auth-1"))
        query = dict(parse_qsl(urlsplit(url).query))
        self.assertEqual(query["login_hint"], "alice")
        self.assertEqual(query["state"], record.state)

    @defer.inlineCallbacks
    def test_client_secret_post(self) -> Any:
        """A client registered for ``client_secret_post`` signs in too (oidc-provider also takes the Basic header)."""
        self.provider.stop()
        self.provider = OIDCProvider(self.mktemp(), [
            ClientRegistration("headscale", SECRET, (REDIRECT_URI,), "client_secret_post")])
        self.provider.start()
        rp = self.relying_party()
        record, params = yield defer.Deferred.fromCoroutine(self.sign_in(rp, "alice"))
        identity = yield defer.Deferred.fromCoroutine(rp.finish_login(record, params))
        self.assertEqual(identity.email, "alice@example.com")

    # -- policy refusals -------------------------------------------------------

    @defer.inlineCallbacks
    def test_wrong_domain(self) -> Any:
        """bob@other.org is refused when only example.com may sign in."""
        reason = yield defer.Deferred.fromCoroutine(
            self.refused(self.relying_party(allowed_domains=("example.com",)), "bob"))
        self.assertEqual(reason, Reason.DOMAIN_NOT_ALLOWED)

    @defer.inlineCallbacks
    def test_user_not_allowed(self) -> Any:
        """bob is refused when only alice@example.com is an allowed user."""
        reason = yield defer.Deferred.fromCoroutine(
            self.refused(self.relying_party(allowed_users=("alice@example.com",)), "bob"))
        self.assertEqual(reason, Reason.USER_NOT_ALLOWED)

    @defer.inlineCallbacks
    def test_group_not_allowed(self) -> Any:
        """bob (sales) is refused when only engineering may sign in."""
        reason = yield defer.Deferred.fromCoroutine(
            self.refused(self.relying_party(allowed_groups=("engineering",)), "bob"))
        self.assertEqual(reason, Reason.GROUP_NOT_ALLOWED)

    @defer.inlineCallbacks
    def test_unverified_email(self) -> Any:
        """carol's unverified email is refused for a domain rule, and accepted when verification is not required."""
        reason = yield defer.Deferred.fromCoroutine(
            self.refused(self.relying_party(allowed_domains=("example.com",)), "carol"))
        self.assertEqual(reason, Reason.EMAIL_NOT_VERIFIED)
        rp = self.relying_party(allowed_domains=("example.com",), email_verified_required=False)
        record, params = yield defer.Deferred.fromCoroutine(self.sign_in(rp, "carol"))
        identity = yield defer.Deferred.fromCoroutine(rp.finish_login(record, params))
        self.assertEqual((identity.email, identity.email_verified), ("carol@example.com", False))

    # -- tampering -------------------------------------------------------------

    @defer.inlineCallbacks
    def test_tampered_state(self) -> Any:
        """A callback whose state was changed is refused before any code exchange."""
        reason = yield defer.Deferred.fromCoroutine(
            self.refused(self.relying_party(), "alice", params_change={"state": "forged-state"}))
        self.assertEqual(reason, Reason.UNKNOWN_STATE)

    @defer.inlineCallbacks
    def test_wrong_nonce(self) -> Any:
        """An authorization request whose nonce was swapped yields a token the login refuses."""
        reason = yield defer.Deferred.fromCoroutine(
            self.refused(self.relying_party(), "alice", tamper=lambda url: _replace_query(url, nonce="swapped")))
        self.assertEqual(reason, Reason.NONCE_MISMATCH)

    @defer.inlineCallbacks
    def test_pkce_mismatch(self) -> Any:
        """A code bound to another verifier's challenge is not exchanged by the provider."""
        tamper = lambda url: _replace_query(url, code_challenge=_s256("x" * 43))  # noqa: E731
        reason = yield defer.Deferred.fromCoroutine(self.refused(self.relying_party(), "alice", tamper=tamper))
        self.assertEqual(reason, Reason.CODE_REJECTED)

    @defer.inlineCallbacks
    def test_replayed_code(self) -> Any:
        """The same callback used twice: the provider refuses the second exchange."""
        rp = self.relying_party()
        record, params = yield defer.Deferred.fromCoroutine(self.sign_in(rp, "alice"))
        yield defer.Deferred.fromCoroutine(rp.finish_login(record, params))
        with self.assertRaises(LoginRefused) as caught:
            yield defer.Deferred.fromCoroutine(rp.finish_login(record, params))
        self.assertEqual(caught.exception.reason, Reason.CODE_REJECTED)

    @defer.inlineCallbacks
    def test_token_for_another_client(self) -> Any:
        """An ID token the provider issued to another client is refused for its audience."""
        other = self.relying_party(client_id="other-app", client_secret=OTHER_SECRET)
        record, params = yield defer.Deferred.fromCoroutine(self.sign_in(other, "alice"))
        tokens = yield defer.Deferred.fromCoroutine(other.redeem(record, params))
        rp = self.relying_party()
        with self.assertRaises(LoginRefused) as caught:
            yield defer.Deferred.fromCoroutine(rp.identify(tokens, record))
        self.assertEqual(caught.exception.reason, Reason.WRONG_AUDIENCE)

    @defer.inlineCallbacks
    def test_expired_token(self) -> Any:
        """The provider's real ID token is refused once its ``exp`` (plus leeway) has passed."""
        rp = self.relying_party()
        record, params = yield defer.Deferred.fromCoroutine(self.sign_in(rp, "alice"))
        tokens = yield defer.Deferred.fromCoroutine(rp.redeem(record, params))
        with self.assertRaises(LoginRefused) as caught:
            validate_id_token(tokens["id_token"], rp.keys, issuer=self.provider.issuer, client_id="headscale",
                              nonce=record.nonce, now=reactor.seconds() + 600 + 61,
                              algorithms=rp.metadata.signing_algorithms)
        self.assertEqual(caught.exception.reason, Reason.TOKEN_EXPIRED)

    @defer.inlineCallbacks
    def test_token_signed_by_another_provider(self) -> Any:
        """A real token from a second provider's keys is refused as signed by an unknown key."""
        second = OIDCProvider(self.mktemp(), [ClientRegistration("headscale", SECRET, (REDIRECT_URI,))])
        self.addCleanup(second.stop)
        second.start()
        rp_second = RelyingParty(OIDCConfig(issuer=second.issuer, client_id="headscale", client_secret=SECRET,
                                            scope=SCOPES), REDIRECT_URI, SECRET,
                                 second.treq_client(reactor, self.pool), reactor)
        record, url = yield defer.Deferred.fromCoroutine(rp_second.start_login("auth-1"))
        browser = FormBrowser(second.treq_client(reactor, self.pool, cookiejar=CookieJar()), reactor)
        callback = yield defer.Deferred.fromCoroutine(browser.sign_in(url, REDIRECT_URI, "alice"))
        tokens = yield defer.Deferred.fromCoroutine(rp_second.redeem(record, dict(parse_qsl(urlsplit(callback).query))))
        rp = self.relying_party()
        yield defer.Deferred.fromCoroutine(rp.discover())
        with self.assertRaises(LoginRefused) as caught:
            yield defer.Deferred.fromCoroutine(rp.identify(tokens, record))
        self.assertEqual(caught.exception.reason, Reason.UNKNOWN_SIGNING_KEY)
        self.assertEqual(rp.jwks_fetches, 1, "a fetch just made is not repeated for an unknown kid")

    @defer.inlineCallbacks
    def test_provider_down_during_login(self) -> Any:
        """The provider stopping between the person's sign-in and the code exchange ends the login as unavailable."""
        rp = self.relying_party()
        record, params = yield defer.Deferred.fromCoroutine(self.sign_in(rp, "alice"))
        yield self.pool.closeCachedConnections()
        self.provider.stop()
        with self.assertRaises(LoginRefused) as caught:
            yield defer.Deferred.fromCoroutine(rp.finish_login(record, params))
        self.assertEqual(caught.exception.reason, Reason.PROVIDER_UNAVAILABLE)
