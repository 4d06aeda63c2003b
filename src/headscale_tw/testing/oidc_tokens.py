# -*- test-case-name: tests.oidc.test_tokens -*-
"""
Signing keys and ID tokens made by the test itself (for cases a real provider
will not produce: a forged signature, a wrong issuer, ``alg: none``).

:class:`TokenIssuer` holds an RSA and a P-256 key, publishes them as a JWKS and
signs ID tokens with chosen claims and headers, using joserfc like the code
under test does.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from joserfc import jwt
from joserfc.jwk import ECKey, KeySet, RSAKey

__all__ = ["TokenIssuer", "unsigned_token"]


class TokenIssuer:
    """A stand-in provider's signing side: keys, JWKS and tokens.

    :param issuer: the ``iss`` of the tokens it makes.
    :param client_id: their default ``aud``.
    :param prefix: starts each key id, so two issuers never share a ``kid``.
    """

    def __init__(self, issuer: str = "https://idp.example.test", client_id: str = "headscale",
                 prefix: str = "k") -> None:
        self.issuer = issuer
        self.client_id = client_id
        self.rsa = RSAKey.generate_key(2048, parameters={"kid": f"{prefix}-rsa", "alg": "RS256", "use": "sig"})
        self.ec = ECKey.generate_key("P-256", parameters={"kid": f"{prefix}-ec", "alg": "ES256", "use": "sig"})

    def jwks(self) -> dict[str, Any]:
        """The public JWKS document."""
        return dict(KeySet([self.rsa, self.ec]).as_dict(private=False))

    def claims(self, now: float, login_nonce: str, **overrides: Any) -> dict[str, Any]:
        """Claims of a valid ID token issued at ``now``; ``overrides`` replace (``None`` removes) any."""
        claims: dict[str, Any] = {
            "iss": self.issuer, "sub": "user-1", "aud": self.client_id, "iat": int(now), "exp": int(now) + 300,
            "nonce": login_nonce, "email": "alice@example.com", "email_verified": True, "name": "Alice",
            "groups": ["engineering"],
        }
        for name, value in overrides.items():
            if value is None:
                claims.pop(name, None)
            else:
                claims[name] = value
        return claims

    def sign(self, claims: dict[str, Any], alg: str = "RS256", kid: str | None = "default",
             key: Any = None) -> str:
        """A compact JWS of ``claims``; ``kid="default"`` names the signing key's own id, ``None`` omits it."""
        if key is None:
            key = self.rsa if alg.startswith(("RS", "PS")) else self.ec
        header: dict[str, Any] = {"alg": alg, "typ": "JWT"}
        if kid == "default":
            header["kid"] = key.kid
        elif kid is not None:
            header["kid"] = kid
        return jwt.encode(header, claims, key, algorithms=[alg])

    def token(self, now: float, login_nonce: str, alg: str = "RS256", **overrides: Any) -> str:
        """A valid ID token (see :meth:`claims`) signed with this issuer's key for ``alg``."""
        return self.sign(self.claims(now, login_nonce, **overrides), alg=alg)


def unsigned_token(claims: dict[str, Any]) -> str:
    """An ``alg: none`` token: what an attacker sends hoping the signature is not checked."""
    def part(obj: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims)}."
