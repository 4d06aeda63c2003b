# -*- test-case-name: tests.oidc.test_metadata -*-
"""
Why a sign-in did not succeed, and what the person and the log are told.

Every way a login can end without a user is one :class:`Reason`. A reason
knows its HTTP status (403 for a person the policy refuses, 400 for a callback
that does not hold together, 502 when the provider misbehaves or is away) and
the sentence shown on the page. :class:`LoginRefused` carries a reason plus a
``detail`` for the log; the page never shows the detail, because it may name
internals (a key id, a provider's error text).

No Twisted and no HTTP here: the web layer turns a :class:`LoginRefused` into a
page, tests check the reason.
"""

from __future__ import annotations

import enum

__all__ = ["LoginRefused", "Reason"]


class Reason(enum.Enum):
    """One way a sign-in ends without a user: ``(status, sentence for the person)``."""

    # The person is who they say, but the configured policy does not let them in.
    DOMAIN_NOT_ALLOWED = (403, "Your email domain is not allowed to sign in here.")
    USER_NOT_ALLOWED = (403, "Your account is not allowed to sign in here.")
    GROUP_NOT_ALLOWED = (403, "None of your groups is allowed to sign in here.")
    EMAIL_NOT_VERIFIED = (403, "Your email address is not verified by your identity provider.")
    # The callback does not belong to a login we started, or does not match it.
    MISSING_PARAMETER = (400, "The sign-in response is missing a required parameter.")
    UNKNOWN_STATE = (400, "This sign-in link is unknown, already used or expired. Start again.")
    LOGIN_EXPIRED = (400, "This sign-in took too long. Start again.")
    REGISTRATION_UNKNOWN = (404, "This machine's registration request is unknown or has expired. "
                                 "Run `tailscale up` again.")
    PROVIDER_DENIED = (400, "Your identity provider did not complete the sign-in.")
    CODE_REJECTED = (400, "Your identity provider did not accept the sign-in code. Start again.")
    # The ID token is not one we may trust.
    TOKEN_INVALID = (400, "The identity token could not be verified.")
    TOKEN_EXPIRED = (400, "The identity token has expired. Start again.")
    WRONG_ISSUER = (400, "The identity token comes from an unexpected provider.")
    WRONG_AUDIENCE = (400, "The identity token was issued for another application.")
    NONCE_MISMATCH = (400, "The identity token does not belong to this sign-in.")
    UNKNOWN_SIGNING_KEY = (400, "The identity token is signed with an unknown key.")
    CLAIMS_INVALID = (400, "The identity token lacks the information needed to sign you in.")
    # SSH check mode (``/auth/<auth_id>``).
    CHECK_UNKNOWN = (404, "This SSH check is unknown, already answered or expired. Connect again.")
    NOT_SOURCE_OWNER = (403, "Only the owner of the machine the SSH connection comes from can approve it.")
    # The provider is away or answers nonsense.
    PROVIDER_UNAVAILABLE = (502, "The identity provider cannot be reached right now. Try again later.")
    PROVIDER_INVALID = (502, "The identity provider answered something unexpected.")

    @property
    def status(self) -> int:
        """The HTTP status of the page that reports this reason."""
        return self.value[0]

    @property
    def message(self) -> str:
        """The sentence shown to the person."""
        return self.value[1]

    @property
    def is_policy(self) -> bool:
        """True when the person was identified but the configured policy refuses them."""
        return self.status == 403


class LoginRefused(Exception):
    """A sign-in ended without a user; ``reason`` says why, ``detail`` is for the log only."""

    def __init__(self, reason: Reason, detail: str = "") -> None:
        super().__init__(f"{reason.name}: {detail}" if detail else reason.name)
        self.reason = reason
        self.detail = detail
