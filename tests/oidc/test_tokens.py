# -*- test-case-name: tests.oidc.test_tokens -*-
"""Tests for :mod:`headscale_tw.oidc.tokens`: ID token validation with keys the test makes."""

from __future__ import annotations

from joserfc import jwt
from joserfc.jwk import OctKey, RSAKey
from twisted.trial import unittest

from headscale_tw.oidc.refusals import LoginRefused, Reason
from headscale_tw.oidc.tokens import MAX_KEYS, UnknownSigningKey, parse_jwks, validate_id_token
from headscale_tw.testing.oidc_tokens import TokenIssuer, unsigned_token

__all__ = ["ParseJWKSTests", "ValidateIDTokenTests"]

NOW = 1_800_000_000
NONCE = "nonce-of-this-login"
ALGS = ("RS256", "ES256")


_made: list[TokenIssuer] = []


def _issuers() -> tuple[TokenIssuer, TokenIssuer]:
    """The provider's signing side, and a stranger whose keys have the same ids (made once per run)."""
    if not _made:
        _made.extend([TokenIssuer(), TokenIssuer(prefix="k")])
    return _made[0], _made[1]


class ValidateIDTokenTests(unittest.TestCase):
    """Every check of an ID token, one refusal per way it can be wrong."""

    def setUp(self) -> None:
        self.issuer, self.stranger = _issuers()
        self.keys = parse_jwks(self.issuer.jwks())

    def validate(self, token: str, now: float = NOW, nonce: str = NONCE, client_id: str = "headscale") -> dict:
        """Validate ``token`` as the relying party for ``headscale`` would."""
        return validate_id_token(token, self.keys, issuer=self.issuer.issuer, client_id=client_id,
                                 nonce=nonce, now=now, algorithms=ALGS)

    def assertRefused(self, reason: Reason, token: str, **kwargs) -> LoginRefused:
        """Assert that validating ``token`` is refused for ``reason``."""
        with self.assertRaises(LoginRefused) as caught:
            self.validate(token, **kwargs)
        self.assertEqual(caught.exception.reason, reason, caught.exception.detail)
        return caught.exception

    def test_valid_rsa_and_ec_tokens(self) -> None:
        """A token signed by either published key, with matching claims, yields its claims."""
        for alg in ALGS:
            claims = self.validate(self.issuer.token(NOW, NONCE, alg=alg))
            self.assertEqual((claims["sub"], claims["email"]), ("user-1", "alice@example.com"))

    def test_token_without_kid(self) -> None:
        """Without a ``kid`` the key of the algorithm's type is tried."""
        token = self.issuer.sign(self.issuer.claims(NOW, NONCE), alg="ES256", kid=None)
        self.assertEqual(self.validate(token)["sub"], "user-1")

    def test_signed_by_another_key(self) -> None:
        """A token whose ``kid`` is known but whose signature is another key's is refused."""
        self.assertRefused(Reason.TOKEN_INVALID, self.stranger.token(NOW, NONCE))

    def test_unknown_kid(self) -> None:
        """A ``kid`` the key set lacks raises :class:`UnknownSigningKey`, naming it."""
        token = self.issuer.sign(self.issuer.claims(NOW, NONCE), kid="rotated-key")
        error = self.assertRefused(Reason.UNKNOWN_SIGNING_KEY, token)
        self.assertIsInstance(error, UnknownSigningKey)
        self.assertEqual(error.kid, "rotated-key")

    def test_alg_none(self) -> None:
        """An unsigned (``alg: none``) token is refused."""
        self.assertRefused(Reason.TOKEN_INVALID, unsigned_token(self.issuer.claims(NOW, NONCE)))

    def test_algorithm_not_advertised(self) -> None:
        """A token signed with an algorithm outside the accepted list is refused."""
        other_rsa = RSAKey.generate_key(2048, parameters={"kid": "k-rsa"})
        token = self.issuer.sign(self.issuer.claims(NOW, NONCE), alg="PS256", key=other_rsa)
        self.assertRefused(Reason.TOKEN_INVALID, token)

    def test_hmac_token(self) -> None:
        """An HS256 token naming an RSA key's id (the key-confusion attack) is refused by algorithm."""
        secret = OctKey.import_key(b"a shared secret of thirty-two bytes!")
        token = jwt.encode({"alg": "HS256", "kid": "k-rsa"}, self.issuer.claims(NOW, NONCE), secret,
                           algorithms=["HS256"])
        self.assertRefused(Reason.TOKEN_INVALID, token)

    def test_garbage(self) -> None:
        """Text that is not a compact JWS is refused."""
        for token in ("", "abc", "a.b.c", "é.é.é"):
            with self.assertRaises(LoginRefused):
                self.validate(token)

    def test_oversized_token(self) -> None:
        """A token longer than the limit is refused before parsing."""
        self.assertRefused(Reason.TOKEN_INVALID, "a" * (64 * 1024 + 1))

    def test_wrong_issuer(self) -> None:
        """A token from another issuer is refused."""
        self.assertRefused(Reason.WRONG_ISSUER, self.issuer.token(NOW, NONCE, iss="https://evil.example"))

    def test_wrong_audience(self) -> None:
        """A token for another client is refused, as is one with several audiences and no matching azp."""
        self.assertRefused(Reason.WRONG_AUDIENCE, self.issuer.token(NOW, NONCE, aud="other-app"))
        self.assertRefused(Reason.WRONG_AUDIENCE, self.issuer.token(NOW, NONCE, aud=["headscale", "other-app"]))
        both = self.issuer.token(NOW, NONCE, aud=["headscale", "other-app"], azp="headscale")
        self.assertEqual(self.validate(both)["azp"], "headscale")

    def test_missing_audience(self) -> None:
        """A token without ``aud`` is refused."""
        self.assertRefused(Reason.WRONG_AUDIENCE, self.issuer.token(NOW, NONCE, aud=None))

    def test_expired(self) -> None:
        """A token is accepted up to ``exp`` plus the leeway and refused after it."""
        token = self.issuer.token(NOW, NONCE)
        self.validate(token, now=NOW + 300 + 59)
        self.assertRefused(Reason.TOKEN_EXPIRED, token, now=NOW + 300 + 60)

    def test_issued_in_the_future(self) -> None:
        """A token whose ``iat`` is beyond the leeway is refused."""
        self.assertRefused(Reason.TOKEN_INVALID, self.issuer.token(NOW + 3600, NONCE), now=NOW)

    def test_missing_exp_or_sub(self) -> None:
        """``exp``, ``iat`` and ``sub`` are required."""
        for claim in ("exp", "iat", "sub"):
            self.assertRefused(Reason.TOKEN_INVALID, self.issuer.token(NOW, NONCE, **{claim: None}))

    def test_wrong_nonce(self) -> None:
        """A token for another login's nonce, or with none, is refused."""
        self.assertRefused(Reason.NONCE_MISMATCH, self.issuer.token(NOW, "another-nonce"))
        self.assertRefused(Reason.NONCE_MISMATCH, self.issuer.token(NOW, NONCE, nonce=None))


class ParseJWKSTests(unittest.TestCase):
    """Reading a provider's JWKS document."""

    def test_public_keys_read(self) -> None:
        """Both keys of a JWKS are read with their ids."""
        keys = parse_jwks(TokenIssuer().jwks())
        self.assertEqual(sorted(k.kid for k in keys.keys), ["k-ec", "k-rsa"])

    def test_private_and_symmetric_material_skipped(self) -> None:
        """Keys carrying private or symmetric material, and encryption keys, are not used."""
        issuer = TokenIssuer()
        private = issuer.rsa.as_dict(private=True)
        doc = {"keys": [private, {"kty": "oct", "k": "c2VjcmV0", "kid": "h"},
                        dict(issuer.ec.as_dict(private=False), use="enc")]}
        self.assertEqual(parse_jwks(doc).keys, [])

    def test_unknown_key_types_skipped(self) -> None:
        """A key of an unknown type does not stop the others from being read."""
        doc = issuer_doc = TokenIssuer().jwks()
        issuer_doc["keys"].append({"kty": "XYZ", "kid": "odd"})
        self.assertEqual(len(parse_jwks(doc).keys), 2)

    def test_malformed(self) -> None:
        """A document that is not a key set is refused as the provider's fault."""
        for doc in (None, [], {"keys": "x"}, {}):
            with self.assertRaises(LoginRefused) as caught:
                parse_jwks(doc)
            self.assertEqual(caught.exception.reason, Reason.PROVIDER_INVALID)

    def test_too_many_keys(self) -> None:
        """More signing keys than the limit is refused."""
        key = TokenIssuer().jwks()["keys"][0]
        with self.assertRaises(LoginRefused):
            parse_jwks({"keys": [key] * (MAX_KEYS + 1)})
