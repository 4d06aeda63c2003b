"""
Tests for headscale_tw.secrets.
"""

import base64
import sys
from unittest import mock

from twisted.trial import unittest

from headscale_tw import secrets
from headscale_tw.errors import InvalidInput
from headscale_tw.secrets import (
    BcryptUnavailable,
    generate_key,
    hash_secret,
    legacy_prefix,
    parse_key,
    verify_secret,
)

PEPPER = b"p" * 32


class GenerateKeyTests(unittest.TestCase):
    """The text form of new keys."""

    def test_layout(self):
        """Keys are hskey-<kind>-<12 alphanumerics>-<43 url-safe chars for 256 bits>."""
        for kind in ("auth", "api"):
            text, prefix, secret = generate_key(kind)
            self.assertEqual(text, f"hskey-{kind}-{prefix}-{secret}")
            self.assertRegex(prefix, r"^[A-Za-z0-9]{12}$")
            self.assertRegex(secret, r"^[A-Za-z0-9_-]{43}$")
            self.assertEqual(len(base64.urlsafe_b64decode(secret + "=")), 32)

    def test_unique(self):
        """Two keys never share a prefix or a secret."""
        keys = [generate_key("auth") for _ in range(50)]
        self.assertEqual(len({k[1] for k in keys}), 50)
        self.assertEqual(len({k[2] for k in keys}), 50)

    def test_never_tailnet_lock_marker(self):
        """A key containing --TL is thrown away and another is drawn."""
        draws = iter([b"\xfb\xe4\xcb" + b"\x00" * 29, b"\x01" * 32])
        with mock.patch.object(secrets.os, "urandom", lambda n: next(draws)):
            text, _, secret = generate_key("api")
        self.assertNotIn("--TL", text)
        self.assertEqual(secret, base64.urlsafe_b64encode(b"\x01" * 32).rstrip(b"=").decode())
        self.assertFalse(text.startswith("tskey-client-"))

    def test_bad_kind(self):
        """Only auth and api keys exist."""
        self.assertRaises(InvalidInput, generate_key, "client")


class ParseKeyTests(unittest.TestCase):
    """Reading keys back."""

    def test_roundtrip(self):
        """parse_key inverts generate_key."""
        for kind in ("auth", "api"):
            text, prefix, secret = generate_key(kind)
            self.assertEqual(parse_key(text), (kind, prefix, secret))

    def test_secret_with_dashes(self):
        """A secret may itself contain dashes; the prefix is positional."""
        self.assertEqual(parse_key("hskey-auth-abcdefghijkl--x-y" + "z" * 20), ("auth", "abcdefghijkl", "-x-y" + "z" * 20))

    def test_headscale_key(self):
        """Headscale's own 64-character secrets parse too (imported keys)."""
        text = "hskey-api-ABCDEFGHIJKL-" + "a1" * 32
        self.assertEqual(parse_key(text), ("api", "ABCDEFGHIJKL", "a1" * 32))

    def test_legacy(self):
        """A 48-hex legacy pre-auth key parses with a derived prefix and the whole key as secret."""
        key = "0123456789abcdef" * 3
        kind, prefix, secret = parse_key(key)
        self.assertEqual((kind, secret), ("auth", key))
        self.assertEqual(prefix, legacy_prefix(key))
        self.assertRegex(prefix, r"^legacy-[0-9a-f]{16}$")

    def test_garbage(self):
        """Anything else is InvalidInput with a message saying what a key looks like."""
        for bad in ("", "hskey-auth-short-x", "hskey-foo-abcdefghijkl-" + "a" * 43, "tskey-auth-abc",
                    "hskey-auth-abcdefghijkl-" + "a" * 43 + "\n", "ABCDEF" * 8, b"hskey", None):
            error = self.assertRaises(InvalidInput, parse_key, bad)
            self.assertTrue(str(error))


class HashTests(unittest.TestCase):
    """Hashing and verifying secrets."""

    def test_hmac(self):
        """The hash is HMAC-SHA256 under the pepper: 32 bytes, pepper-dependent."""
        h = hash_secret("secret", PEPPER)
        self.assertEqual(len(h), 32)
        self.assertNotEqual(h, hash_secret("secret", b"q" * 32))
        self.assertEqual(h, hash_secret(b"secret", PEPPER))
        self.assertRaises(ValueError, hash_secret, "secret", b"")

    def test_verify(self):
        """verify_secret accepts the right secret only."""
        h = hash_secret("secret", PEPPER)
        self.assertTrue(verify_secret("secret", h, PEPPER))
        self.assertFalse(verify_secret("secreT", h, PEPPER))
        self.assertFalse(verify_secret("secret", h, b"q" * 32))
        self.assertFalse(verify_secret("secret", h[:-1], PEPPER))

    def test_constant_time(self):
        """Comparison goes through hmac.compare_digest."""
        with mock.patch.object(secrets.hmac, "compare_digest", return_value=True) as compare:
            self.assertTrue(verify_secret("x", b"y", PEPPER))
        compare.assert_called_once()

    def test_bcrypt_missing(self):
        """A bcrypt hash without the bcrypt package is a clear BcryptUnavailable error."""
        with mock.patch.dict(sys.modules, {"bcrypt": None}):
            error = self.assertRaises(BcryptUnavailable, verify_secret, "x", b"$2a$10$" + b"a" * 53, PEPPER)
        self.assertIn("bcrypt", str(error))

    def test_bcrypt_present(self):
        """With a bcrypt module, bcrypt hashes are checked by it."""
        fake = mock.Mock()
        fake.checkpw.return_value = True
        with mock.patch.dict(sys.modules, {"bcrypt": fake}):
            self.assertTrue(verify_secret("x", b"$2b$10$abc", PEPPER))
        fake.checkpw.assert_called_once_with(b"x", b"$2b$10$abc")


class RealBcryptTests(unittest.TestCase):
    """Headscale's bcrypt hashes are checked with the real bcrypt package."""

    def test_headscale_hash_accepted(self):
        """A secret verifies against a bcrypt hash as Headscale stores it; a wrong one does not."""
        import bcrypt

        stored = bcrypt.hashpw(b"headscale-secret", bcrypt.gensalt(rounds=4))
        self.assertTrue(verify_secret("headscale-secret", stored, PEPPER))
        self.assertFalse(verify_secret("other-secret", stored, PEPPER))
