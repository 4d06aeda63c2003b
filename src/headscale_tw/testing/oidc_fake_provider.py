# -*- test-case-name: tests.oidc.test_client -*-
"""
A stand-in OpenID provider as a ``twisted.web`` resource, for ``StubTreq`` tests.

:class:`FakeProvider` serves discovery, JWKS, token and userinfo endpoints whose
answers each test sets, and records the token requests it got. Tokens come from
:class:`~headscale_tw.testing.oidc_tokens.TokenIssuer`. For the real thing, see
:mod:`headscale_tw.testing.oidc_provider`.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.web.resource import Resource
from twisted.web.server import Request

from headscale_tw.testing.oidc_tokens import TokenIssuer

__all__ = ["FAKE_ISSUER", "FakeProvider", "shared_signers"]

FAKE_ISSUER = "https://idp.example.test"
"""The fake provider's issuer (StubTreq ignores the host; only paths matter)."""

_signers: list[TokenIssuer] = []


def shared_signers() -> tuple[TokenIssuer, TokenIssuer]:
    """The fake provider's signing side and its next (rotated) keys, made once per test run (RSA is slow)."""
    if not _signers:
        _signers.extend([TokenIssuer(FAKE_ISSUER), TokenIssuer(FAKE_ISSUER, prefix="rotated")])
    return _signers[0], _signers[1]


class FakeProvider(Resource):
    """Discovery, JWKS, token and userinfo endpoints whose answers each test sets."""

    isLeaf = True

    def __init__(self, signer: TokenIssuer) -> None:
        super().__init__()
        self.signer = signer
        self.jwks = signer.jwks()
        self.discovery: dict[str, Any] = {
            "issuer": FAKE_ISSUER, "authorization_endpoint": FAKE_ISSUER + "/auth", "token_endpoint": FAKE_ISSUER + "/token",
            "jwks_uri": FAKE_ISSUER + "/jwks", "userinfo_endpoint": FAKE_ISSUER + "/me",
            "id_token_signing_alg_values_supported": ["RS256", "ES256"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
        }
        self.id_token = ""
        self.userinfo: dict[str, Any] = {"sub": "user-1"}
        self.token_requests: list[tuple[dict[str, str], str | None]] = []
        self.jwks_requests = 0
        self.basic_refused = False
        self.raw: dict[bytes, bytes] = {}

    def render(self, request: Request) -> bytes:
        """Answer one endpoint by path."""
        path = request.path
        if path in self.raw:
            return self.raw[path]
        request.setHeader(b"content-type", b"application/json")
        if path == b"/.well-known/openid-configuration":
            return json.dumps(self.discovery).encode()
        if path == b"/jwks":
            self.jwks_requests += 1
            return json.dumps(self.jwks).encode()
        if path == b"/me":
            return json.dumps(self.userinfo).encode()
        if path == b"/token":
            form = {k.decode(): v[0].decode() for k, v in request.args.items()}
            auth = request.getHeader(b"authorization")
            self.token_requests.append((form, auth.decode() if auth else None))
            if auth and self.basic_refused:
                request.setResponseCode(401)
                return json.dumps({"error": "invalid_client"}).encode()
            if form.get("code") != "good-code":
                request.setResponseCode(400)
                return json.dumps({"error": "invalid_grant", "error_description": "code unknown"}).encode()
            return json.dumps({"id_token": self.id_token, "access_token": "at-1", "token_type": "Bearer"}).encode()
        request.setResponseCode(404)
        return b"{}"
