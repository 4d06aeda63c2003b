# -*- test-case-name: tests.oidc.test_claims -*-
"""
Who signed in (:class:`Identity`), and whether the configured policy lets them in.

:func:`identity_from_claims` reads the validated ID token's claims (completed by
the userinfo endpoint's, see :func:`merge_userinfo`) into an :class:`Identity`:
a person is identified by ``(issuer, subject)``; email, names, picture and
groups are kept current at each login. Groups are bounded: at most
:data:`MAX_GROUPS` names of at most :data:`MAX_GROUP_NAME` characters are
kept, and :attr:`Identity.groups_dropped` says what was cut (the sign-in logs it).

:func:`check_policy` applies Headscale's ``oidc.*`` rules, in Headscale's order:

- ``allowed_groups``: at least one of the person's groups is listed;
- ``email_verified_required`` (default true): the email is trusted for the two
  email rules below only when the provider says ``email_verified``; with
  either rule set and an unverified email, the login is refused;
- ``allowed_domains``: the part after the last ``@`` of the email is listed;
- ``allowed_users``: the email is listed.

Email domains compare without regard to case (DNS names are case-insensitive);
emails and groups compare exactly, as Headscale does. No Twisted, no HTTP.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from headscale_tw.clock import utc_from_seconds
from headscale_tw.config.model import OIDCConfig
from headscale_tw.oidc.refusals import LoginRefused, Reason
from headscale_tw.policy.model import IDP_GROUP_NAME_MAX

__all__ = [
    "MAX_GROUPS",
    "MAX_GROUP_NAME",
    "Identity",
    "LoginPolicy",
    "check_policy",
    "identity_from_claims",
    "merge_userinfo",
    "user_name_for",
]

MAX_GROUPS = 256
"""At most this many groups of one token are kept (the first ones, duplicates removed); the rest are dropped."""

MAX_GROUP_NAME = IDP_GROUP_NAME_MAX
"""A group name longer than this (in characters) is dropped (the policy cannot name it either)."""

_MAX_TEXT = 1024

_USER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@+-]{0,62}$")


@dataclass(frozen=True)
class Identity:
    """A person as the provider describes them at one login."""

    issuer: str
    subject: str
    email: str = ""
    email_verified: bool = False
    name: str = ""
    preferred_username: str = ""
    picture: str = ""
    groups: tuple[str, ...] = ()
    groups_dropped: str = field(default="", compare=False)
    """Why some of the token's groups were not kept (empty when all were): for the log, never compared."""
    token_expires_at: datetime | None = field(default=None, compare=False)
    """The ID token's ``exp`` (for ``oidc.use_expiry_from_token``); None when the claims had none."""

    @property
    def provider_identifier(self) -> str:
        """``<issuer>/<subject>``: how Headscale stores who a user is at the provider."""
        return f"{self.issuer.rstrip('/')}/{self.subject}"

    @property
    def trusted_email(self) -> str:
        """The email when the provider verified it, else empty (an unverified email is never stored)."""
        return self.email if self.email_verified else ""

    @property
    def email_domain(self) -> str:
        """The part of the email after its last ``@``, lower-cased; empty without one."""
        at = self.email.rfind("@")
        return self.email[at + 1:].lower() if at >= 0 else ""


@dataclass(frozen=True)
class LoginPolicy:
    """The ``oidc.*`` rules that decide who may sign in."""

    allowed_domains: tuple[str, ...] = ()
    allowed_users: tuple[str, ...] = ()
    allowed_groups: tuple[str, ...] = ()
    email_verified_required: bool = True

    @classmethod
    def from_config(cls, config: OIDCConfig) -> LoginPolicy:
        """The policy of an ``oidc`` config section."""
        return cls(
            allowed_domains=tuple(config.allowed_domains),
            allowed_users=tuple(config.allowed_users),
            allowed_groups=tuple(config.allowed_groups),
            email_verified_required=config.email_verified_required,
        )


def _flexible_bool(value: Any) -> bool:
    # Some providers (older AWS Cognito, some Azure setups) send "true"/"false" as strings.
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        return value.strip().lower() == "true"
    return False


def _text(claims: Mapping[str, Any], name: str) -> str:
    value = claims.get(name)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise LoginRefused(Reason.CLAIMS_INVALID, f"claim {name!r} is not a string")
    if len(value) > _MAX_TEXT:
        raise LoginRefused(Reason.CLAIMS_INVALID, f"claim {name!r} is longer than {_MAX_TEXT} characters")
    return value


def _groups(claims: Mapping[str, Any]) -> tuple[tuple[str, ...], str]:
    """The token's groups, bounded, and a note naming what was dropped (empty when nothing was)."""
    value = claims.get("groups")
    if value is None:
        return (), ""
    if isinstance(value, str):  # a provider with a single group may send a bare string
        value = [value]
    if not isinstance(value, list) or not all(isinstance(g, str) for g in value):
        raise LoginRefused(Reason.CLAIMS_INVALID, "claim 'groups' is not a list of strings")
    unique = dict.fromkeys(value)
    named = [g for g in unique if g and len(g) <= MAX_GROUP_NAME]
    notes = []
    if len(named) != len(unique):
        notes.append(f"{len(unique) - len(named)} empty or longer than {MAX_GROUP_NAME} characters")
    if len(named) > MAX_GROUPS:
        notes.append(f"{len(named) - MAX_GROUPS} beyond the first {MAX_GROUPS}")
    return tuple(named[:MAX_GROUPS]), "; ".join(notes)


def _expiry(claims: Mapping[str, Any]) -> datetime | None:
    value = claims.get("exp")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        return utc_from_seconds(value)
    except (OverflowError, OSError, ValueError):
        raise LoginRefused(Reason.CLAIMS_INVALID, f"claim 'exp' {value!r} is not a time") from None


def merge_userinfo(id_claims: Mapping[str, Any], userinfo: Mapping[str, Any]) -> dict[str, Any]:
    """The ID token's claims, completed by userinfo's where the token lacks them.

    Userinfo is trusted only for the same subject (OpenID Connect Core 5.3.2);
    a claim the token already has is never replaced.
    """
    if userinfo.get("sub") != id_claims.get("sub"):
        raise LoginRefused(Reason.PROVIDER_INVALID, "the userinfo response names another subject")
    merged = dict(id_claims)
    for name, value in userinfo.items():
        merged.setdefault(name, value)
    return merged


def identity_from_claims(claims: Mapping[str, Any]) -> Identity:
    """Read validated claims into an :class:`Identity`; refuse malformed ones."""
    issuer = _text(claims, "iss")
    subject = _text(claims, "sub")
    if not issuer or not subject:
        raise LoginRefused(Reason.CLAIMS_INVALID, "the token has no 'iss' or no 'sub'")
    groups, dropped = _groups(claims)
    return Identity(
        issuer=issuer,
        subject=subject,
        email=_text(claims, "email"),
        email_verified=_flexible_bool(claims.get("email_verified")),
        name=_text(claims, "name"),
        preferred_username=_text(claims, "preferred_username"),
        picture=_text(claims, "picture"),
        groups=groups,
        groups_dropped=dropped,
        token_expires_at=_expiry(claims),
    )


def check_policy(identity: Identity, policy: LoginPolicy) -> None:
    """Raise :class:`LoginRefused` with the first rule of ``policy`` that ``identity`` breaks."""
    if policy.allowed_groups and not set(policy.allowed_groups).intersection(identity.groups):
        raise LoginRefused(Reason.GROUP_NOT_ALLOWED,
                           f"{identity.subject!r} has groups {list(identity.groups)}, none allowed")
    email_rules = bool(policy.allowed_domains or policy.allowed_users)
    if email_rules and policy.email_verified_required and not identity.email_verified:
        raise LoginRefused(Reason.EMAIL_NOT_VERIFIED, f"{identity.email!r} is not verified by the provider")
    if policy.allowed_domains:
        allowed = {d.lower() for d in policy.allowed_domains}
        if not identity.email_domain or identity.email_domain not in allowed:
            raise LoginRefused(Reason.DOMAIN_NOT_ALLOWED, f"{identity.email!r} is not in an allowed domain")
    if policy.allowed_users and identity.email not in policy.allowed_users:
        raise LoginRefused(Reason.USER_NOT_ALLOWED, f"{identity.email!r} is not an allowed user")


def user_name_for(identity: Identity) -> str:
    """The name a new user gets: ``preferred_username``, else the verified email, else one made from the subject.

    Only names of letters, digits and ``._@+-`` (up to 63 characters, starting
    with a letter or digit) are taken as they are.
    """
    for candidate in (identity.preferred_username, identity.trusted_email):
        if _USER_NAME.match(candidate):
            return candidate
    return "oidc-" + hashlib.sha256(identity.provider_identifier.encode()).hexdigest()[:12]
