# -*- test-case-name: tests.oidc.test_claims -*-
"""Tests for :mod:`headscale_tw.oidc.claims`: identities and the sign-in policy."""

from __future__ import annotations

from twisted.trial import unittest

from headscale_tw.config.model import OIDCConfig
from headscale_tw.oidc.claims import (
    MAX_GROUP_NAME,
    MAX_GROUPS,
    Identity,
    LoginPolicy,
    check_policy,
    identity_from_claims,
    merge_userinfo,
)
from headscale_tw.oidc.refusals import LoginRefused, Reason

__all__ = ["CheckPolicyTests", "IdentityFromClaimsTests", "MergeUserinfoTests"]

ALICE = Identity("https://idp", "alice", "alice@Example.com", True, "Alice", "alice", "", ("engineering",))
BOB = Identity("https://idp", "bob", "bob@other.org", True, "Bob", "bob", "", ("sales",))
CAROL = Identity("https://idp", "carol", "carol@example.com", False, "Carol", "carol", "", ("engineering",))


class CheckPolicyTests(unittest.TestCase):
    """Headscale's allowed_domains / allowed_users / allowed_groups / email_verified_required."""

    def assertRefused(self, reason: Reason, identity: Identity, policy: LoginPolicy) -> None:
        """Assert ``policy`` refuses ``identity`` for ``reason``."""
        with self.assertRaises(LoginRefused) as caught:
            check_policy(identity, policy)
        self.assertEqual(caught.exception.reason, reason)
        self.assertEqual(caught.exception.reason.status, 403)

    def test_open_policy(self) -> None:
        """Without any rule everyone, verified or not, may sign in."""
        for person in (ALICE, BOB, CAROL):
            check_policy(person, LoginPolicy())

    def test_domains(self) -> None:
        """Only emails in an allowed domain pass; the domain compares without case."""
        policy = LoginPolicy(allowed_domains=("example.com",))
        check_policy(ALICE, policy)
        self.assertRefused(Reason.DOMAIN_NOT_ALLOWED, BOB, policy)
        no_email = Identity("https://idp", "x", "", True)
        self.assertRefused(Reason.DOMAIN_NOT_ALLOWED, no_email, policy)

    def test_domain_is_after_the_last_at(self) -> None:
        """An email like ``a@example.com@evil.org`` is judged by ``evil.org``."""
        tricky = Identity("https://idp", "x", "a@example.com@evil.org", True)
        self.assertRefused(Reason.DOMAIN_NOT_ALLOWED, tricky, LoginPolicy(allowed_domains=("example.com",)))

    def test_users(self) -> None:
        """Only listed emails pass."""
        policy = LoginPolicy(allowed_users=("bob@other.org",))
        check_policy(BOB, policy)
        self.assertRefused(Reason.USER_NOT_ALLOWED, ALICE, policy)

    def test_groups(self) -> None:
        """At least one group must be listed."""
        policy = LoginPolicy(allowed_groups=("engineering", "ops"))
        check_policy(ALICE, policy)
        self.assertRefused(Reason.GROUP_NOT_ALLOWED, BOB, policy)
        self.assertRefused(Reason.GROUP_NOT_ALLOWED, Identity("https://idp", "x"), policy)

    def test_unverified_email(self) -> None:
        """An unverified email is refused for email rules, unless verification is not required."""
        self.assertRefused(Reason.EMAIL_NOT_VERIFIED, CAROL, LoginPolicy(allowed_domains=("example.com",)))
        self.assertRefused(Reason.EMAIL_NOT_VERIFIED, CAROL, LoginPolicy(allowed_users=("carol@example.com",)))
        check_policy(CAROL, LoginPolicy(allowed_domains=("example.com",), email_verified_required=False))
        check_policy(CAROL, LoginPolicy(allowed_groups=("engineering",)))

    def test_from_config(self) -> None:
        """The policy is read from the ``oidc`` config section."""
        policy = LoginPolicy.from_config(OIDCConfig(allowed_domains=("a.org",), allowed_users=("u@a.org",),
                                                    allowed_groups=("g",), email_verified_required=False))
        self.assertEqual(policy, LoginPolicy(("a.org",), ("u@a.org",), ("g",), False))


class IdentityFromClaimsTests(unittest.TestCase):
    """Reading claims into an identity."""

    def test_full_claims(self) -> None:
        """Every claim we keep is read."""
        identity = identity_from_claims({
            "iss": "https://idp", "sub": "s1", "email": "a@b.c", "email_verified": True, "name": "A",
            "preferred_username": "a", "picture": "https://p/a.png", "groups": ["g1", "g2", "g1"]})
        self.assertEqual(identity, Identity("https://idp", "s1", "a@b.c", True, "A", "a", "https://p/a.png",
                                            ("g1", "g2")))

    def test_flexible_email_verified(self) -> None:
        """``email_verified`` sent as the string "true" counts; anything else does not."""
        for value, expected in (("true", True), ("TRUE", True), ("false", False), (1, False), (None, False)):
            claims = {"iss": "i", "sub": "s", "email_verified": value}
            self.assertEqual(identity_from_claims(claims).email_verified, expected, value)

    def test_single_group_string(self) -> None:
        """A bare string as ``groups`` is one group."""
        self.assertEqual(identity_from_claims({"iss": "i", "sub": "s", "groups": "admins"}).groups, ("admins",))

    def test_groups_bounded(self) -> None:
        """Beyond ``MAX_GROUPS`` names, and names empty or longer than ``MAX_GROUP_NAME``, are dropped and said so."""
        many = [f"g{i}" for i in range(MAX_GROUPS + 5)]
        identity = identity_from_claims({"iss": "i", "sub": "s", "groups": many + many})
        self.assertEqual(identity.groups, tuple(many[:MAX_GROUPS]))
        self.assertEqual(identity.groups_dropped, f"5 beyond the first {MAX_GROUPS}")
        long = "x" * (MAX_GROUP_NAME + 1)
        identity = identity_from_claims({"iss": "i", "sub": "s", "groups": ["a", long, "", "x" * MAX_GROUP_NAME]})
        self.assertEqual(identity.groups, ("a", "x" * MAX_GROUP_NAME))
        self.assertEqual(identity.groups_dropped, f"2 empty or longer than {MAX_GROUP_NAME} characters")
        self.assertEqual(identity_from_claims({"iss": "i", "sub": "s", "groups": ["a"]}).groups_dropped, "")

    def test_malformed_claims(self) -> None:
        """Missing subject, non-string fields and a non-list ``groups`` are refused."""
        for claims in ({"iss": "i"}, {"iss": "i", "sub": 5}, {"iss": "i", "sub": "s", "email": ["x"]},
                       {"iss": "i", "sub": "s", "groups": [1]},
                       {"iss": "i", "sub": "s", "groups": {"a": 1}},
                       {"iss": "i", "sub": "s", "name": "n" * 2000}):
            with self.assertRaises(LoginRefused) as caught:
                identity_from_claims(claims)
            self.assertEqual(caught.exception.reason, Reason.CLAIMS_INVALID, claims)


class MergeUserinfoTests(unittest.TestCase):
    """Completing the ID token's claims from the userinfo endpoint."""

    def test_fills_only_missing_claims(self) -> None:
        """Userinfo adds claims the token lacks and never replaces the token's."""
        merged = merge_userinfo({"sub": "s", "email": "token@x"}, {"sub": "s", "email": "ui@x", "groups": ["g"]})
        self.assertEqual(merged, {"sub": "s", "email": "token@x", "groups": ["g"]})

    def test_other_subject_refused(self) -> None:
        """Userinfo about another subject is refused."""
        with self.assertRaises(LoginRefused):
            merge_userinfo({"sub": "s"}, {"sub": "t"})
