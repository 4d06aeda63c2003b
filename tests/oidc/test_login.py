# -*- test-case-name: tests.oidc.test_login -*-
"""Tests for :mod:`headscale_tw.oidc.login`: the record of a started sign-in."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from twisted.trial import unittest

from headscale_tw.oidc.login import LOGIN_LIFETIME, code_challenge, new_login_record
from headscale_tw.oidc.refusals import LoginRefused, Reason

__all__ = ["CodeChallengeTests", "LoginRecordTests"]

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=timezone.utc)


class CodeChallengeTests(unittest.TestCase):
    """PKCE challenges (RFC 7636)."""

    def test_rfc7636_vector(self) -> None:
        """S256 of the RFC 7636 appendix B verifier is the appendix's challenge."""
        self.assertEqual(code_challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk", "S256"),
                         "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM")

    def test_plain(self) -> None:
        """The plain method's challenge is the verifier itself."""
        self.assertEqual(code_challenge("abc", "plain"), "abc")

    def test_unknown_method(self) -> None:
        """An unknown method is refused, naming the config key."""
        error = self.assertRaises(ValueError, code_challenge, "abc", "S512")
        self.assertIn("oidc.pkce.method", str(error))


class LoginRecordTests(unittest.TestCase):
    """Making and checking login records."""

    def test_fresh_random_values(self) -> None:
        """Each record has its own 43-character state, nonce and verifier."""
        a = new_login_record("auth-1", NOW, pkce_enabled=True)
        b = new_login_record("auth-1", NOW, pkce_enabled=True)
        self.assertEqual({len(a.state), len(a.nonce), len(a.code_verifier)}, {43})
        self.assertEqual(len({a.state, a.nonce, a.code_verifier, b.state, b.nonce, b.code_verifier}), 6)
        self.assertEqual(a.expires_at, NOW + LOGIN_LIFETIME)
        self.assertEqual(a.code_challenge, code_challenge(a.code_verifier, "S256"))

    def test_without_pkce(self) -> None:
        """With PKCE off there is no verifier and no challenge."""
        record = new_login_record("auth-1", NOW, pkce_enabled=False)
        self.assertIsNone(record.code_verifier)
        self.assertIsNone(record.code_challenge)

    def test_plain_pkce(self) -> None:
        """With the plain method the challenge equals the verifier."""
        record = new_login_record("auth-1", NOW, pkce_enabled=True, pkce_method="plain")
        self.assertEqual(record.code_challenge, record.code_verifier)

    def test_callback_state_checked(self) -> None:
        """The record's own state passes; any other state is refused as unknown."""
        record = new_login_record("auth-1", NOW, pkce_enabled=False)
        record.check_callback(record.state, NOW)
        for state in ("", record.state + "x", record.state[:-1], "é"):
            with self.assertRaises(LoginRefused) as caught:
                record.check_callback(state, NOW)
            self.assertEqual(caught.exception.reason, Reason.UNKNOWN_STATE)

    def test_callback_after_expiry(self) -> None:
        """A callback at or after the record's expiry is refused as expired."""
        record = new_login_record("auth-1", NOW, pkce_enabled=False, lifetime=timedelta(minutes=1))
        record.check_callback(record.state, NOW + timedelta(seconds=59))
        with self.assertRaises(LoginRefused) as caught:
            record.check_callback(record.state, NOW + timedelta(minutes=1))
        self.assertEqual(caught.exception.reason, Reason.LOGIN_EXPIRED)

    def test_unknown_method_refused(self) -> None:
        """A record cannot be made with an unknown PKCE method."""
        self.assertRaises(ValueError, new_login_record, "auth-1", NOW, True, "S512")
