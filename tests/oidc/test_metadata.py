# -*- test-case-name: tests.oidc.test_metadata -*-
"""Tests for :mod:`headscale_tw.oidc.metadata` and :mod:`headscale_tw.oidc.refusals`."""

from __future__ import annotations

from datetime import datetime, timezone
from urllib.parse import parse_qs, urlsplit

from twisted.trial import unittest

from headscale_tw.oidc.login import new_login_record
from headscale_tw.oidc.metadata import authorization_url, discovery_url, parse_metadata
from headscale_tw.oidc.refusals import LoginRefused, Reason

__all__ = ["AuthorizationURLTests", "ParseMetadataTests", "ReasonTests"]

ISSUER = "https://idp.example.test/realms/main"
DOC = {
    "issuer": ISSUER,
    "authorization_endpoint": ISSUER + "/auth",
    "token_endpoint": ISSUER + "/token",
    "jwks_uri": ISSUER + "/jwks",
    "userinfo_endpoint": ISSUER + "/me",
    "id_token_signing_alg_values_supported": ["RS256", "HS256", "none"],
    "code_challenge_methods_supported": ["S256"],
    "token_endpoint_auth_methods_supported": ["client_secret_post"],
}
NOW = datetime(2026, 12, 3, 12, 0, tzinfo=timezone.utc)


class ParseMetadataTests(unittest.TestCase):
    """Reading a discovery document."""

    def test_discovery_url(self) -> None:
        """The well-known path is appended to the issuer, with or without a trailing slash."""
        self.assertEqual(discovery_url(ISSUER + "/"), ISSUER + "/.well-known/openid-configuration")

    def test_reads_what_we_use(self) -> None:
        """Endpoints are read; only asymmetric algorithms are kept; a post-only provider gets post."""
        metadata = parse_metadata(DOC, ISSUER)
        self.assertEqual(metadata.token_endpoint, ISSUER + "/token")
        self.assertEqual(metadata.signing_algorithms, ("RS256",))
        self.assertEqual(metadata.token_auth_method, "client_secret_post")

    def test_defaults(self) -> None:
        """Without the optional lists, RS256 and client_secret_basic are assumed."""
        doc = {k: v for k, v in DOC.items() if not k.endswith("_supported") and k != "userinfo_endpoint"}
        metadata = parse_metadata(doc, ISSUER)
        self.assertEqual((metadata.signing_algorithms, metadata.token_auth_method, metadata.userinfo_endpoint),
                         (("RS256",), "client_secret_basic", ""))

    def test_issuer_must_match_exactly(self) -> None:
        """A document naming another issuer (even by a trailing slash) is refused."""
        for issuer in (ISSUER + "/", "https://evil.example", None):
            with self.assertRaises(LoginRefused) as caught:
                parse_metadata(dict(DOC, issuer=issuer), ISSUER)
            self.assertEqual(caught.exception.reason, Reason.PROVIDER_INVALID)

    def test_bad_documents(self) -> None:
        """Missing endpoints, non-URLs, wrong types and only-unsafe algorithms are refused."""
        for doc in ([], dict(DOC, token_endpoint=None), dict(DOC, jwks_uri="ftp://x/jwks"),
                    dict(DOC, authorization_endpoint=5), dict(DOC, id_token_signing_alg_values_supported=["none"]),
                    dict(DOC, id_token_signing_alg_values_supported="RS256")):
            with self.assertRaises(LoginRefused):
                parse_metadata(doc, ISSUER)


class AuthorizationURLTests(unittest.TestCase):
    """The URL a person is sent to."""

    def query(self, **kwargs) -> dict[str, list[str]]:
        """Build an authorization URL and return its parsed query."""
        record = kwargs.pop("record")
        url = authorization_url(parse_metadata(DOC, ISSUER), "headscale", "https://hs/oidc/callback",
                                ("openid", "email"), kwargs.pop("extra", ()), record)
        self.assertTrue(url.startswith(ISSUER + "/auth?"))
        return parse_qs(urlsplit(url).query)

    def test_parameters(self) -> None:
        """The URL carries the code flow, our client, scope, state, nonce and S256 challenge."""
        record = new_login_record("a1", NOW, pkce_enabled=True)
        q = self.query(record=record)
        self.assertEqual({k: v[0] for k, v in q.items()}, {
            "response_type": "code", "client_id": "headscale", "redirect_uri": "https://hs/oidc/callback",
            "scope": "openid email", "state": record.state, "nonce": record.nonce,
            "code_challenge": record.code_challenge, "code_challenge_method": "S256"})

    def test_no_pkce(self) -> None:
        """Without PKCE no challenge is sent."""
        q = self.query(record=new_login_record("a1", NOW, pkce_enabled=False))
        self.assertNotIn("code_challenge", q)

    def test_extra_params_cannot_override(self) -> None:
        """Extra parameters are added, but never replace a protocol parameter."""
        record = new_login_record("a1", NOW, pkce_enabled=False)
        q = self.query(record=record, extra=(("domain_hint", "example.com"), ("nonce", "x"), ("state", "y")))
        self.assertEqual((q["domain_hint"], q["nonce"], q["state"]), (["example.com"], [record.nonce], [record.state]))

    def test_endpoint_with_query(self) -> None:
        """An authorization endpoint that already has a query gets ours appended with ``&``."""
        doc = dict(DOC, authorization_endpoint=ISSUER + "/auth?tenant=7")
        url = authorization_url(parse_metadata(doc, ISSUER), "c", "https://hs/cb", ("openid",), (),
                                new_login_record("a1", NOW, pkce_enabled=False))
        self.assertEqual(parse_qs(urlsplit(url).query)["tenant"], ["7"])


class ReasonTests(unittest.TestCase):
    """What each refusal tells the person."""

    def test_every_reason_has_a_status_and_sentence(self) -> None:
        """Policy refusals are 403, bad callbacks 400 (404 for a gone registration), provider trouble 502."""
        self.assertEqual({r.status for r in Reason}, {400, 403, 404, 502})
        self.assertEqual(len({r.message for r in Reason}), len(Reason))
        self.assertTrue(Reason.GROUP_NOT_ALLOWED.is_policy)
        self.assertFalse(Reason.NONCE_MISMATCH.is_policy)

    def test_detail_is_kept_apart(self) -> None:
        """The detail is in the exception text for the log, not in the reason's message."""
        error = LoginRefused(Reason.UNKNOWN_SIGNING_KEY, "kid 'abc'")
        self.assertIn("kid 'abc'", str(error))
        self.assertNotIn("abc", error.reason.message)
