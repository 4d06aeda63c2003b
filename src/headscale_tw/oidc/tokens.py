# -*- test-case-name: tests.oidc.test_tokens -*-
"""
Validating an ID token with joserfc (the JOSE half of authlib).

:func:`validate_id_token` checks, in this order (OpenID Connect Core 3.1.3.7):

1. the compact JWS parses and its ``alg`` is one the provider advertises and we
   accept (asymmetric only: never ``none``, never an HMAC);
2. the signing key: the JWKS key named by ``kid`` (:class:`UnknownSigningKey`
   when the set has no such key, so the caller may re-fetch the JWKS once), or
   without a ``kid`` each key of the algorithm's type in turn;
3. the signature;
4. ``iss`` equals the configured issuer, ``aud`` contains our client id (with
   several audiences, ``azp`` must be our client id), ``exp`` is in the future,
   ``iat`` and ``nbf`` are not, all with :data:`LEEWAY` seconds of clock skew;
5. ``nonce`` equals the login's.

``now`` is passed in (seconds since the epoch), so tests and the reactor's
clock decide the time. Every failure is a :class:`LoginRefused` naming the
check. No Twisted, no HTTP.
"""

from __future__ import annotations

import hmac
from collections.abc import Collection, Mapping
from typing import Any

from joserfc import jws, jwt
from joserfc.errors import (
    BadSignatureError,
    ExpiredTokenError,
    InvalidClaimError,
    JoseError,
    MissingClaimError,
)
from joserfc.jwk import KeySet

from headscale_tw.oidc.refusals import LoginRefused, Reason

__all__ = [
    "LEEWAY",
    "MAX_KEYS",
    "MAX_TOKEN_LENGTH",
    "UnknownSigningKey",
    "parse_jwks",
    "validate_id_token",
]

LEEWAY = 60
"""Seconds of clock skew allowed on ``exp``, ``iat`` and ``nbf``."""

MAX_TOKEN_LENGTH = 64 * 1024
"""A longer ID token is refused unparsed."""

MAX_KEYS = 50
"""A JWKS with more keys is refused: no provider needs more, and each may be tried."""

_KEY_TYPES = {"RS": "RSA", "PS": "RSA", "ES": "EC", "Ed": "OKP"}


class UnknownSigningKey(LoginRefused):
    """The token names a ``kid`` that the key set does not hold (the provider may have rotated keys)."""

    def __init__(self, kid: str) -> None:
        super().__init__(Reason.UNKNOWN_SIGNING_KEY, f"no key with kid {kid!r} in the provider's JWKS")
        self.kid = kid


def parse_jwks(doc: Any) -> KeySet:
    """Read a JWKS document (public signing keys only); :class:`LoginRefused` when it does not fit."""
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        raise LoginRefused(Reason.PROVIDER_INVALID, "the JWKS is not an object with a 'keys' list")
    keys = [k for k in doc["keys"] if isinstance(k, dict) and k.get("use", "sig") == "sig"]
    if len(keys) > MAX_KEYS:
        raise LoginRefused(Reason.PROVIDER_INVALID, f"the JWKS has more than {MAX_KEYS} signing keys")
    usable = []
    for key in keys:
        if any(name in key for name in ("d", "p", "q", "k")):
            continue  # private or symmetric material has no business in a public JWKS
        try:
            usable.append(KeySet.import_key_set({"keys": [key]}).keys[0])
        except (JoseError, ValueError, TypeError):
            continue  # a key type we do not know; the provider may still sign with another
    return KeySet(usable)


def _candidate_keys(keys: KeySet, header: Mapping[str, Any]) -> list[Any]:
    kid = header.get("kid")
    if kid is not None:
        if not isinstance(kid, str):
            raise LoginRefused(Reason.TOKEN_INVALID, "the token's 'kid' is not a string")
        found = [k for k in keys.keys if k.kid == kid]
        if not found:
            raise UnknownSigningKey(kid)
        return found
    wanted = _KEY_TYPES.get(str(header.get("alg", ""))[:2])
    found = [k for k in keys.keys if k.key_type == wanted]
    if not found:
        raise LoginRefused(Reason.UNKNOWN_SIGNING_KEY, "the token names no 'kid' and no key of its type exists")
    return found


def _verify_signature(token: str, keys: KeySet, algorithms: Collection[str]) -> dict[str, Any]:
    try:
        header = jws.extract_compact(token.encode("ascii")).headers()
    except (JoseError, ValueError, UnicodeError) as e:
        raise LoginRefused(Reason.TOKEN_INVALID, f"the ID token is not a compact JWS: {e}") from None
    alg = header.get("alg")
    if alg not in algorithms:
        raise LoginRefused(Reason.TOKEN_INVALID, f"the ID token's algorithm {alg!r} is not one of {sorted(algorithms)}")
    failure = "no key verified the signature"
    for key in _candidate_keys(keys, header):
        try:
            return jwt.decode(token, key, algorithms=list(algorithms)).claims
        except BadSignatureError:
            failure = "bad signature"
        except JoseError as e:
            failure = str(e)
    raise LoginRefused(Reason.TOKEN_INVALID, f"the ID token's signature does not verify: {failure}")


def validate_id_token(token: str, keys: KeySet, *, issuer: str, client_id: str, nonce: str, now: float,
                      algorithms: Collection[str] = ("RS256",), leeway: int = LEEWAY) -> dict[str, Any]:
    """Return the claims of ``token`` after every check above; raise :class:`LoginRefused` otherwise."""
    if not isinstance(token, str) or not token:
        raise LoginRefused(Reason.TOKEN_INVALID, "the token response has no 'id_token'")
    if len(token) > MAX_TOKEN_LENGTH:
        raise LoginRefused(Reason.TOKEN_INVALID, f"the ID token is longer than {MAX_TOKEN_LENGTH} characters")
    claims = _verify_signature(token, keys, algorithms)

    if claims.get("iss") != issuer:
        raise LoginRefused(Reason.WRONG_ISSUER, f"'iss' is {claims.get('iss')!r}, expected {issuer!r}")
    aud = claims.get("aud")
    audiences = [aud] if isinstance(aud, str) else aud
    if not isinstance(audiences, list) or client_id not in audiences:
        raise LoginRefused(Reason.WRONG_AUDIENCE, f"'aud' is {aud!r}, expected to contain {client_id!r}")
    if len(audiences) > 1 and claims.get("azp") != client_id:
        raise LoginRefused(Reason.WRONG_AUDIENCE, f"several audiences and 'azp' is {claims.get('azp')!r}")

    registry = jwt.JWTClaimsRegistry(now=int(now), leeway=leeway,
                                     sub={"essential": True}, exp={"essential": True}, iat={"essential": True})
    try:
        registry.validate(claims)
    except ExpiredTokenError:
        raise LoginRefused(Reason.TOKEN_EXPIRED, f"'exp' {claims.get('exp')!r} is past (now {int(now)})") from None
    except (InvalidClaimError, MissingClaimError) as e:
        raise LoginRefused(Reason.TOKEN_INVALID, f"claims: {e}") from None

    token_nonce = claims.get("nonce")
    if not isinstance(token_nonce, str) or not hmac.compare_digest(token_nonce.encode(), nonce.encode()):
        raise LoginRefused(Reason.NONCE_MISMATCH, "the token's 'nonce' is not the login's")
    return claims
