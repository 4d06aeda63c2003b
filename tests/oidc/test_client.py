# -*- test-case-name: tests.oidc.test_client -*-
"""Tests for :mod:`headscale_tw.oidc.client`: the HTTP layer, over ``StubTreq`` and a fake provider resource."""

from __future__ import annotations

import base64
import os
from typing import Any
from urllib.parse import parse_qs, urlsplit

from treq.testing import StubTreq
from twisted.internet import defer, task
from twisted.internet.error import ConnectionRefusedError
from twisted.trial import unittest

from headscale_tw.config.model import OIDCConfig
from headscale_tw.oidc.client import MAX_BODY, RelyingParty, read_client_secret, redirect_uri_for
from headscale_tw.oidc.refusals import LoginRefused, Reason
from headscale_tw.testing.oidc_fake_provider import FAKE_ISSUER, FakeProvider, shared_signers
from headscale_tw.testing.oidc_tokens import TokenIssuer

__all__ = ["ReadClientSecretTests", "RelyingPartyTests"]

ISSUER = FAKE_ISSUER
REDIRECT = "https://hs.example.test/oidc/callback"
NOW = 1_800_000_000.0


class _DownHTTP:
    """An HTTP client whose every connection is refused."""

    def get(self, url: str, **kwargs: Any) -> defer.Deferred:
        """Fail as a refused connection would."""
        return defer.fail(ConnectionRefusedError())

    post = get


class _SilentHTTP:
    """An HTTP client whose requests never answer."""

    def __init__(self) -> None:
        self.pending: list[defer.Deferred] = []

    def get(self, url: str, **kwargs: Any) -> defer.Deferred:
        """A Deferred that never fires by itself."""
        d: defer.Deferred = defer.Deferred()
        self.pending.append(d)
        return d

    post = get


class RelyingPartyTests(unittest.TestCase):
    """Discovery, code exchange, key rotation and failures, against a fake provider."""

    def setUp(self) -> None:
        self.signer, self.rotated = shared_signers()
        self.provider = FakeProvider(self.signer)
        self.http = StubTreq(self.provider)
        self.clock = task.Clock()
        self.clock.advance(NOW)

    def relying_party(self, http: Any = None, **overrides: Any) -> RelyingParty:
        """A relying party for client ``headscale`` at the fake provider."""
        settings: dict[str, Any] = dict(issuer=ISSUER, client_id="headscale", client_secret="s3cr:t",
                                        pkce_enabled=True, scope=("openid", "email", "groups"))
        settings.update(overrides)
        return RelyingParty(OIDCConfig(**settings), REDIRECT, settings["client_secret"],
                            http or self.http, self.clock, jwks_refresh_interval=60)

    def resolve(self, coroutine: Any) -> Any:
        """Run ``coroutine`` to completion (the stub answers synchronously) and return its result."""
        d = defer.Deferred.fromCoroutine(coroutine)
        self.http.flush()
        return self.successResultOf(d)

    def refusal(self, coroutine: Any) -> Reason:
        """Run ``coroutine`` and return the reason of the :class:`LoginRefused` it ends with."""
        d = defer.Deferred.fromCoroutine(coroutine)
        self.http.flush()
        return self.failureResultOf(d, LoginRefused).value.reason

    def login(self, rp: RelyingParty, **token_claims: Any) -> tuple[Any, dict[str, str]]:
        """Start a login, make the provider's ID token for it; the record and the callback params."""
        record, url = self.resolve(rp.start_login("auth-1"))
        self.provider.id_token = self.signer.token(self.clock.seconds(), record.nonce, **token_claims)
        return record, {"state": record.state, "code": "good-code", "iss": ISSUER}

    # -- discovery -----------------------------------------------------------

    def test_discover(self) -> None:
        """Discovery reads the document and fetches the JWKS once."""
        rp = self.relying_party()
        metadata = self.resolve(rp.discover())
        self.assertEqual(metadata.jwks_uri, ISSUER + "/jwks")
        self.assertEqual((rp.jwks_fetches, self.provider.jwks_requests), (1, 1))
        self.assertEqual(len(rp.keys.keys), 2)

    def test_discovery_of_another_issuer(self) -> None:
        """A discovery document naming another issuer is refused."""
        self.provider.discovery["issuer"] = "https://evil.example"
        self.assertEqual(self.refusal(self.relying_party().discover()), Reason.PROVIDER_INVALID)

    def test_provider_down(self) -> None:
        """A refused connection ends discovery with PROVIDER_UNAVAILABLE."""
        self.assertEqual(self.refusal(self.relying_party(http=_DownHTTP()).discover()),
                         Reason.PROVIDER_UNAVAILABLE)

    def test_provider_silent(self) -> None:
        """A provider that never answers is given up after the timeout, and no timer is left."""
        silent = _SilentHTTP()
        d = defer.Deferred.fromCoroutine(self.relying_party(http=silent).discover())
        self.assertNoResult(d)
        self.clock.advance(10)
        self.assertEqual(self.failureResultOf(d, LoginRefused).value.reason, Reason.PROVIDER_UNAVAILABLE)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_oversized_answer(self) -> None:
        """A body larger than the limit is refused, not read whole."""
        self.provider.raw[b"/.well-known/openid-configuration"] = b" " * (MAX_BODY + 1)
        self.assertEqual(self.refusal(self.relying_party().discover()), Reason.PROVIDER_INVALID)

    def test_not_json(self) -> None:
        """A discovery answer that is not JSON is the provider's fault."""
        self.provider.raw[b"/.well-known/openid-configuration"] = b"<html>"
        self.assertEqual(self.refusal(self.relying_party().discover()), Reason.PROVIDER_INVALID)

    # -- a login ---------------------------------------------------------------

    def test_login(self) -> None:
        """A login sends the challenge, exchanges code and verifier with Basic auth and yields the person."""
        rp = self.relying_party()
        record, url = self.resolve(rp.start_login("auth-1"))
        query = {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
        self.assertEqual((query["code_challenge"], query["code_challenge_method"]), (record.code_challenge, "S256"))
        self.assertEqual(query["scope"], "openid email groups")
        self.provider.id_token = self.signer.token(NOW, record.nonce, groups=None)
        self.provider.userinfo = {"sub": "user-1", "groups": ["from-userinfo"], "email": "ignored@x"}
        identity = self.resolve(rp.finish_login(record, {"state": record.state, "code": "good-code"}))
        self.assertEqual((identity.subject, identity.email, identity.groups),
                         ("user-1", "alice@example.com", ("from-userinfo",)))
        [(form, auth)] = self.provider.token_requests
        self.assertEqual(form, {"grant_type": "authorization_code", "code": "good-code", "redirect_uri": REDIRECT,
                                "code_verifier": record.code_verifier})
        self.assertEqual(base64.b64decode(auth.split()[1]), b"headscale:s3cr%3At")

    def test_invalid_client_retried_with_post(self) -> None:
        """A provider refusing the Basic header gets the secret in the body once, and from then on."""
        self.provider.basic_refused = True
        rp = self.relying_party()
        for _ in range(2):
            record, params = self.login(rp)
            self.resolve(rp.finish_login(record, params))
        styles = [(form.get("client_secret"), auth is not None) for form, auth in self.provider.token_requests]
        self.assertEqual(styles, [(None, True), ("s3cr:t", False), ("s3cr:t", False)])

    def test_callback_refusals(self) -> None:
        """Provider errors, a foreign ``iss``, missing parameters and a bad code are each refused."""
        rp = self.relying_party()
        record, params = self.login(rp)
        cases = [
            ({"state": record.state, "error": "access_denied"}, Reason.PROVIDER_DENIED),
            (dict(params, iss="https://evil.example"), Reason.WRONG_ISSUER),
            ({"code": "good-code"}, Reason.MISSING_PARAMETER),
            ({"state": record.state}, Reason.MISSING_PARAMETER),
            (dict(params, state="forged"), Reason.UNKNOWN_STATE),
            (dict(params, code="bad-code"), Reason.CODE_REJECTED),
        ]
        for callback, reason in cases:
            self.assertEqual(self.refusal(rp.finish_login(record, callback)), reason, callback)
        self.assertEqual([f["code"] for f, _ in self.provider.token_requests], ["bad-code"])

    def test_policy_applies(self) -> None:
        """The configured policy refuses a person the provider vouched for."""
        rp = self.relying_party(allowed_groups=("sales",))
        record, params = self.login(rp)
        self.assertEqual(self.refusal(rp.finish_login(record, params)), Reason.GROUP_NOT_ALLOWED)

    def test_expired_login(self) -> None:
        """A callback after the login's lifetime is refused without a code exchange."""
        rp = self.relying_party()
        record, params = self.login(rp)
        self.clock.advance(15 * 60)
        self.assertEqual(self.refusal(rp.finish_login(record, params)), Reason.LOGIN_EXPIRED)
        self.assertEqual(self.provider.token_requests, [])

    # -- key rotation ----------------------------------------------------------

    def test_rotated_key_fetched_again(self) -> None:
        """After the provider rotates its keys, a token with the new kid makes one JWKS fetch and passes."""
        rp = self.relying_party()
        record, params = self.login(rp)
        self.clock.advance(61)
        self.provider.jwks = self.rotated.jwks()
        self.provider.id_token = self.rotated.token(self.clock.seconds(), record.nonce)
        identity = self.resolve(rp.finish_login(record, params))
        self.assertEqual(identity.subject, "user-1")
        self.assertEqual(rp.jwks_fetches, 2)

    def test_unknown_kids_fetch_at_most_once_per_interval(self) -> None:
        """Forged kids cause at most one JWKS fetch per interval: 40 tries in 4 minutes, 4 fetches."""
        rp = self.relying_party()
        self.resolve(rp.discover())
        for i in range(40):
            record, params = self.login(rp)
            self.provider.id_token = self.signer.sign(self.signer.claims(self.clock.seconds(), record.nonce),
                                                      kid=f"forged-{i}")
            self.assertEqual(self.refusal(rp.finish_login(record, params)), Reason.UNKNOWN_SIGNING_KEY)
            self.clock.advance(6.0)
        # Tries at t=0, 6, ..., 234: fetches at 0 (discovery), 60, 120 and 180.
        self.assertEqual(rp.jwks_fetches, 4)
        self.assertEqual(self.provider.jwks_requests, 4)

    def test_token_signed_by_a_stranger(self) -> None:
        """A token whose signature is not the provider's is refused."""
        rp = self.relying_party()
        record, params = self.login(rp)
        stranger = TokenIssuer(ISSUER, prefix="k")  # same kid as the provider's key
        self.provider.id_token = stranger.token(NOW, record.nonce)
        self.assertEqual(self.refusal(rp.finish_login(record, params)), Reason.TOKEN_INVALID)


class ReadClientSecretTests(unittest.TestCase):
    """``oidc.client_secret`` and ``oidc.client_secret_path``."""

    def test_inline_secret(self) -> None:
        """The inline secret is used as is."""
        self.assertEqual(read_client_secret(OIDCConfig(client_secret="abc")), "abc")

    def test_secret_file(self) -> None:
        """The file's content is used without surrounding whitespace."""
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("from-file\n")
        self.assertEqual(read_client_secret(OIDCConfig(client_secret_path=path)), "from-file")

    def test_missing_file(self) -> None:
        """An unreadable file is an error naming the config key."""
        error = self.assertRaises(ValueError, read_client_secret,
                                  OIDCConfig(client_secret_path=os.path.join(self.mktemp(), "nope")))
        self.assertIn("oidc.client_secret_path", str(error))

    def test_redirect_uri(self) -> None:
        """The redirect URI is the server URL plus ``/oidc/callback``, whatever its trailing slash."""
        self.assertEqual(redirect_uri_for("https://hs.example.com/"), "https://hs.example.com/oidc/callback")
