# -*- test-case-name: tests.oidc.test_metadata -*-
"""
The provider's discovery document, and the authorization URL built from it.

:func:`parse_metadata` reads ``/.well-known/openid-configuration`` (OpenID
Connect Discovery 1.0) into a :class:`ProviderMetadata`, refusing a document
whose ``issuer`` is not exactly the configured one (Discovery 4.3: this is what
stops one provider from posing as another) or that lacks an endpoint we use.

:func:`authorization_url` builds the URL a person is redirected to: the
configured ``scope`` and ``extra_params``, ``response_type=code``, our
``redirect_uri``, the login's ``state`` and ``nonce`` and, with PKCE, its
``code_challenge``. Extra parameters cannot override the ones the protocol
needs (a ``state`` in ``extra_params`` would break the callback check).

No Twisted, no HTTP.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit

from headscale_tw.oidc.login import LoginRecord
from headscale_tw.oidc.refusals import LoginRefused, Reason

__all__ = [
    "ALLOWED_SIGNING_ALGORITHMS",
    "PROTECTED_PARAMETERS",
    "ProviderMetadata",
    "authorization_url",
    "discovery_url",
    "parse_metadata",
]

ALLOWED_SIGNING_ALGORITHMS = frozenset({
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA", "Ed25519",
})
"""Asymmetric JWS algorithms we accept on an ID token; never ``none``, never an HMAC."""

PROTECTED_PARAMETERS = frozenset({
    "response_type", "client_id", "redirect_uri", "scope", "state", "nonce",
    "code_challenge", "code_challenge_method",
})
"""Authorization parameters that ``oidc.extra_params`` may not set."""


@dataclass(frozen=True)
class ProviderMetadata:
    """What we use of a provider's discovery document."""

    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str
    userinfo_endpoint: str = ""
    signing_algorithms: tuple[str, ...] = ("RS256",)
    token_auth_methods: tuple[str, ...] = ("client_secret_basic",)
    code_challenge_methods: tuple[str, ...] = ()

    @property
    def token_auth_method(self) -> str:
        """``client_secret_basic`` unless the provider offers only ``client_secret_post``."""
        if "client_secret_basic" not in self.token_auth_methods and "client_secret_post" in self.token_auth_methods:
            return "client_secret_post"
        return "client_secret_basic"


def discovery_url(issuer: str) -> str:
    """The discovery document's URL for ``issuer`` (Discovery 4: the path is appended)."""
    return issuer.rstrip("/") + "/.well-known/openid-configuration"


def _endpoint(doc: Mapping[str, Any], name: str, required: bool = True) -> str:
    value = doc.get(name)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or not value:
        raise LoginRefused(Reason.PROVIDER_INVALID, f"discovery document: {name!r} is missing or not a string")
    parts = urlsplit(value)
    if parts.scheme not in ("https", "http") or not parts.netloc:
        raise LoginRefused(Reason.PROVIDER_INVALID, f"discovery document: {name!r} is not an http(s) URL")
    return value


def _strings(doc: Mapping[str, Any], name: str, default: Iterable[str]) -> tuple[str, ...]:
    value = doc.get(name)
    if value is None:
        return tuple(default)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise LoginRefused(Reason.PROVIDER_INVALID, f"discovery document: {name!r} is not a list of strings")
    return tuple(value)


def parse_metadata(doc: Any, expected_issuer: str) -> ProviderMetadata:
    """Read a discovery document for ``expected_issuer``; :class:`LoginRefused` when it does not fit."""
    if not isinstance(doc, dict):
        raise LoginRefused(Reason.PROVIDER_INVALID, "discovery document is not a JSON object")
    issuer = doc.get("issuer")
    if issuer != expected_issuer:
        raise LoginRefused(Reason.PROVIDER_INVALID,
                           f"discovery document names issuer {issuer!r}, configured is {expected_issuer!r}")
    # The discovery default for id_token_signing_alg_values_supported is RS256 (it is REQUIRED).
    advertised = _strings(doc, "id_token_signing_alg_values_supported", ("RS256",))
    algorithms = tuple(a for a in advertised if a in ALLOWED_SIGNING_ALGORITHMS)
    if not algorithms:
        raise LoginRefused(Reason.PROVIDER_INVALID,
                           f"the provider signs ID tokens only with {list(advertised)}, none of which we accept")
    return ProviderMetadata(
        issuer=issuer,
        authorization_endpoint=_endpoint(doc, "authorization_endpoint"),
        token_endpoint=_endpoint(doc, "token_endpoint"),
        jwks_uri=_endpoint(doc, "jwks_uri"),
        userinfo_endpoint=_endpoint(doc, "userinfo_endpoint", required=False),
        signing_algorithms=algorithms,
        token_auth_methods=_strings(doc, "token_endpoint_auth_methods_supported", ("client_secret_basic",)),
        code_challenge_methods=_strings(doc, "code_challenge_methods_supported", ()),
    )


def authorization_url(metadata: ProviderMetadata, client_id: str, redirect_uri: str, scope: Iterable[str],
                      extra_params: Iterable[tuple[str, str]], login: LoginRecord) -> str:
    """The URL that sends a person to the provider for ``login``."""
    params: dict[str, str] = {}
    for name, value in extra_params:
        if name not in PROTECTED_PARAMETERS:
            params[name] = value
    params.update({
        "response_type": "code",
        "client_id": client_id,
        "redirect_uri": redirect_uri,
        "scope": " ".join(scope),
        "state": login.state,
        "nonce": login.nonce,
    })
    challenge = login.code_challenge
    if challenge is not None:
        params["code_challenge"] = challenge
        params["code_challenge_method"] = login.pkce_method
    separator = "&" if urlsplit(metadata.authorization_endpoint).query else "?"
    return metadata.authorization_endpoint + separator + urlencode(params)
