# -*- test-case-name: tests.oidc.test_login -*-
"""
The record of one started sign-in: ``state``, ``nonce`` and the PKCE verifier.

When a person is sent to the provider we make a :class:`LoginRecord`: a random
``state`` (it comes back on the callback and finds the record), a random
``nonce`` (it comes back inside the ID token and ties the token to this
login) and, with PKCE on, a ``code_verifier`` whose challenge goes in the
authorization URL (RFC 7636). The record is plain data with named fields, so a
store can keep it in a table and any instance can finish the login.

Each random value is 32 bytes from :mod:`secrets`, URL-safe base64 (43
characters): within RFC 7636's 43 to 128 characters for a verifier. Callbacks
are matched in constant time. No Twisted, no HTTP.
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from authlib.oauth2.rfc7636 import create_s256_code_challenge

from headscale_tw.oidc.refusals import LoginRefused, Reason

__all__ = [
    "LOGIN_LIFETIME",
    "PKCE_METHODS",
    "LoginRecord",
    "code_challenge",
    "new_login_record",
]

LOGIN_LIFETIME = timedelta(minutes=15)
"""How long a started sign-in may take before its callback is refused (Headscale: 15 minutes)."""

PKCE_METHODS = ("S256", "plain")
"""The ``code_challenge_method`` values of RFC 7636 (Headscale's ``oidc.pkce.method``)."""

_RANDOM_BYTES = 32


@dataclass(frozen=True)
class LoginRecord:
    """One sign-in between the redirect to the provider and its callback.

    :ivar auth_id: the pending registration (``/register/<auth_id>``) this login finishes.
    :ivar state: echoed back on the callback; finds this record.
    :ivar nonce: must come back, unchanged, inside the ID token.
    :ivar code_verifier: the PKCE secret, or ``None`` when PKCE is off.
    :ivar pkce_method: ``"S256"`` or ``"plain"``; meaningless without a verifier.
    :ivar created_at: when the login started (aware UTC).
    :ivar expires_at: after this the callback is refused.
    """

    auth_id: str
    state: str
    nonce: str
    code_verifier: str | None
    pkce_method: str
    created_at: datetime
    expires_at: datetime

    @property
    def code_challenge(self) -> str | None:
        """The challenge to send in the authorization URL, or ``None`` without PKCE."""
        if self.code_verifier is None:
            return None
        return code_challenge(self.code_verifier, self.pkce_method)

    def check_callback(self, state: str, now: datetime) -> None:
        """Raise :class:`LoginRefused` unless ``state`` is this record's and it has not expired."""
        if not hmac.compare_digest(state.encode("utf-8"), self.state.encode("utf-8")):
            raise LoginRefused(Reason.UNKNOWN_STATE, "the callback's state does not match the login's")
        if now >= self.expires_at:
            raise LoginRefused(Reason.LOGIN_EXPIRED, f"the login expired at {self.expires_at.isoformat()}")


def code_challenge(verifier: str, method: str) -> str:
    """The RFC 7636 ``code_challenge`` for ``verifier`` with ``method`` (``S256`` or ``plain``)."""
    if method == "S256":
        return create_s256_code_challenge(verifier)
    if method == "plain":
        return verifier
    raise ValueError(f"oidc.pkce.method: {method!r} is not one of {', '.join(PKCE_METHODS)}")


def new_login_record(auth_id: str, now: datetime, pkce_enabled: bool, pkce_method: str = "S256",
                     lifetime: timedelta = LOGIN_LIFETIME) -> LoginRecord:
    """Start a login for ``auth_id`` at ``now``: fresh state, nonce and (with PKCE) verifier."""
    if pkce_method not in PKCE_METHODS:
        raise ValueError(f"oidc.pkce.method: {pkce_method!r} is not one of {', '.join(PKCE_METHODS)}")
    return LoginRecord(
        auth_id=auth_id,
        state=secrets.token_urlsafe(_RANDOM_BYTES),
        nonce=secrets.token_urlsafe(_RANDOM_BYTES),
        code_verifier=secrets.token_urlsafe(_RANDOM_BYTES) if pkce_enabled else None,
        pkce_method=pkce_method,
        created_at=now,
        expires_at=now + lifetime,
    )
