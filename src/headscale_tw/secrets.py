# -*- test-case-name: tests.storage.test_secrets -*-
"""
Pre-auth keys and API keys: their text form, and how their secrets are hashed.

Text form (Headscale's layout)::

    hskey-auth-<prefix>-<secret>     pre-auth key
    hskey-api-<prefix>-<secret>      API key

``prefix`` is 12 letters and digits, stored in clear and used to find the row;
``secret`` is 256 random bits in URL-safe base64 without padding (43 characters).
Only ``hash_secret(secret, pepper)`` is stored. Generated keys never contain
``--TL`` (the Tailscale client treats that as a tailnet-lock wrapped key) and
never start with ``tskey-client-`` (an OAuth client secret to the client).

Hashing is HMAC-SHA256 keyed with a server-side *pepper*: 32 random bytes kept in
``server_state`` under ``key_pepper``, created on first use (:func:`get_pepper`).
The secrets are 256-bit random values, so no password-style slow hash is needed:
nobody can guess them, and a keyed hash keeps key checks fast. A stolen table of
hashes is useless without the pepper.

Imported from Headscale:

- keys whose stored hash is bcrypt (``$2a$``/``$2b$``/``$2y$``) are verified with
  the optional ``bcrypt`` package (:class:`BcryptUnavailable` when it is missing);
- Headscale's legacy pre-auth keys (48 lowercase hex characters, no prefix) parse
  as kind ``auth`` with prefix ``legacy-<first 16 hex of SHA-256(key)>`` and the
  whole key as the secret; the stored hash is ``hash_secret(whole key, pepper)``.
  The derived prefix reveals nothing usable (the key has 192 random bits) and
  cannot collide with a 12-character prefix.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import string
from collections.abc import Coroutine
from typing import Any

from headscale_tw.errors import InvalidInput
from headscale_tw.interfaces import IServerStateStore

__all__ = [
    "KINDS",
    "PEPPER_NAME",
    "BcryptUnavailable",
    "generate_key",
    "parse_key",
    "hash_secret",
    "verify_secret",
    "new_pepper",
    "get_pepper",
    "legacy_prefix",
]

KINDS = ("auth", "api")
PEPPER_NAME = "key_pepper"
PREFIX_LENGTH = 12
SECRET_BYTES = 32

_PREFIX_ALPHABET = string.ascii_letters + string.digits
_KEY = re.compile(r"^hskey-(?P<kind>auth|api)-(?P<prefix>[A-Za-z0-9]{12})-(?P<secret>[A-Za-z0-9_-]{16,128})$")
_LEGACY = re.compile(r"^[0-9a-f]{48}$")
_BCRYPT_MARKS = (b"$2a$", b"$2b$", b"$2y$")


class BcryptUnavailable(RuntimeError):
    """A key imported from Headscale carries a bcrypt hash, and ``bcrypt`` is not installed."""


def _random_prefix() -> str:
    import secrets as _stdlib_secrets

    return "".join(_stdlib_secrets.choice(_PREFIX_ALPHABET) for _ in range(PREFIX_LENGTH))


def generate_key(kind: str) -> tuple[str, str, str]:
    """Make a new key of ``kind`` (``"auth"`` or ``"api"``); return ``(full_text, prefix, secret)``."""
    if kind not in KINDS:
        raise InvalidInput(f"key kind must be one of {', '.join(KINDS)}, not {kind!r}")
    while True:
        prefix = _random_prefix()
        secret = base64.urlsafe_b64encode(os.urandom(SECRET_BYTES)).rstrip(b"=").decode("ascii")
        text = f"hskey-{kind}-{prefix}-{secret}"
        if "--TL" not in text and not text.startswith("tskey-client-"):
            return text, prefix, secret


def parse_key(text: Any) -> tuple[str, str, str]:
    """Split a key's text into ``(kind, prefix, secret)``; ``InvalidInput`` if it is not a key."""
    if not isinstance(text, str):
        raise InvalidInput("a key must be text")
    match = _KEY.fullmatch(text)
    if match:
        return match.group("kind"), match.group("prefix"), match.group("secret")
    if _LEGACY.fullmatch(text):
        return "auth", legacy_prefix(text), text
    if text.startswith("hskey-"):
        raise InvalidInput("malformed key: expected hskey-<auth|api>-<12-character prefix>-<secret>")
    raise InvalidInput("not a headscale key (expected hskey-auth-..., hskey-api-... or a 48-hex legacy key)")


def legacy_prefix(key: str) -> str:
    """The lookup prefix stored for a legacy 48-hex pre-auth key."""
    return "legacy-" + hashlib.sha256(key.encode("ascii")).hexdigest()[:16]


def _as_bytes(value: str | bytes) -> bytes:
    return value.encode("utf-8") if isinstance(value, str) else bytes(value)


def hash_secret(secret: str | bytes, pepper: bytes) -> bytes:
    """HMAC-SHA256 of the secret keyed with the server's pepper (32 bytes)."""
    if not pepper:
        raise ValueError("the pepper must not be empty")
    return hmac.new(bytes(pepper), _as_bytes(secret), hashlib.sha256).digest()


def verify_secret(secret: str | bytes, stored_hash: bytes, pepper: bytes) -> bool:
    """Whether ``secret`` matches ``stored_hash``, compared in constant time.

    A bcrypt ``stored_hash`` (imported from Headscale) is checked with ``bcrypt``;
    :class:`BcryptUnavailable` if that package is not installed.
    """
    stored_hash = bytes(stored_hash)
    if stored_hash.startswith(_BCRYPT_MARKS):
        try:
            import bcrypt
        except ImportError:
            raise BcryptUnavailable(
                "this key was imported from Headscale and has a bcrypt hash; "
                "install the 'bcrypt' Python package to accept it, or create a new key"
            ) from None
        try:
            return bool(bcrypt.checkpw(_as_bytes(secret), stored_hash))
        except ValueError:
            return False
    return hmac.compare_digest(hash_secret(secret, pepper), stored_hash)


def new_pepper() -> bytes:
    """32 fresh random bytes."""
    return os.urandom(32)


def get_pepper(server_state: IServerStateStore) -> Coroutine[Any, Any, bytes]:
    """The server's pepper from an ``IServerStateStore``, created race-safely on first use."""
    return server_state.get_or_create(PEPPER_NAME, new_pepper)
