# -*- test-case-name: tests.noise.test_keys -*-
"""
Tailscale key types, their text forms, and the server's Noise key file.

Every key travels as ``<prefix><lower-case hex>``: ``mkey:`` (machine),
``nodekey:`` (node/WireGuard), ``discokey:`` (disco), ``chalpub:`` (early
noise challenge) and ``privkey:`` (any private key, only in files). Parsing
wants the exact prefix and exactly 64 hex digits (either case); an empty
string is an error, never "the zero key".

The server's Noise private key file uses Headscale's format, one line
``privkey:<64 hex>``; :func:`load_or_generate_private_key` creates it (mode
0600, parent directories as needed) on first start, so an existing Headscale
key file keeps working and clients keep their trust in the server.
"""

from __future__ import annotations

import re
from typing import ClassVar, TypeVar

import attrs

from headscale_tw.errors import InvalidInput
from headscale_tw.keyfile import KeyFileError, read_key_file
from headscale_tw.noise._codec import generate_private, x25519_public

__all__ = [
    "KeyParseError",
    "KeyFileError",
    "MachinePublic",
    "NodePublic",
    "DiscoPublic",
    "ChallengePublic",
    "MachinePrivate",
    "NodePrivate",
    "ChallengePrivate",
    "load_or_generate_private_key",
]

_HEX64 = re.compile(r"[0-9a-fA-F]{64}")

_K = TypeVar("_K", bound="_Key")


class KeyParseError(InvalidInput):
    """A key's text form is wrong; the message says which key type and why."""


def _check_raw(instance: object, attribute: object, value: bytes) -> None:
    if not isinstance(value, bytes) or len(value) != 32:
        raise ValueError(f"{type(instance).__name__} needs 32 raw bytes")


@attrs.frozen
class _Key:
    """A 32-byte Curve25519 key with a text prefix."""

    PREFIX: ClassVar[str] = ""

    raw: bytes = attrs.field(validator=_check_raw)

    @classmethod
    def parse(cls: type[_K], text: str | bytes) -> _K:
        """Parse ``<prefix><64 hex>``; raise :class:`KeyParseError` naming the problem."""
        if isinstance(text, bytes):
            try:
                text = text.decode("ascii")
            except UnicodeDecodeError:
                raise KeyParseError(f"{cls.__name__}: key is not ASCII text") from None
        if not isinstance(text, str):
            raise KeyParseError(f"{cls.__name__}: expected a string, got {type(text).__name__}")
        if not text.startswith(cls.PREFIX):
            shown = text[:16] + ("…" if len(text) > 16 else "")
            raise KeyParseError(f"{cls.__name__}: key {shown!r} does not start with {cls.PREFIX!r}")
        digits = text[len(cls.PREFIX) :]
        if not _HEX64.fullmatch(digits):
            raise KeyParseError(
                f"{cls.__name__}: expected {cls.PREFIX!r} followed by 64 hex digits,"
                f" got {len(digits)} characters"
            )
        return cls(bytes.fromhex(digits))

    @classmethod
    def zero(cls: type[_K]) -> _K:
        """The all-zero key (e.g. ``/key``'s legacy key)."""
        return cls(bytes(32))

    def is_zero(self) -> bool:
        """True for the all-zero key."""
        return self.raw == bytes(32)

    @property
    def text(self) -> str:
        """The wire form, ``<prefix><lower-case hex>``."""
        return self.PREFIX + self.raw.hex()

    def __str__(self) -> str:
        return self.text


@attrs.frozen
class MachinePublic(_Key):
    """A machine (Noise static) public key, ``mkey:``."""

    PREFIX: ClassVar[str] = "mkey:"


@attrs.frozen
class NodePublic(_Key):
    """A node (WireGuard) public key, ``nodekey:``."""

    PREFIX: ClassVar[str] = "nodekey:"


@attrs.frozen
class DiscoPublic(_Key):
    """A disco public key, ``discokey:``."""

    PREFIX: ClassVar[str] = "discokey:"


@attrs.frozen
class ChallengePublic(_Key):
    """An early-noise challenge public key, ``chalpub:``."""

    PREFIX: ClassVar[str] = "chalpub:"


@attrs.frozen(repr=False)
class _Private(_Key):
    """A private key, ``privkey:``; its repr never shows the bytes."""

    PREFIX: ClassVar[str] = "privkey:"
    PUBLIC: ClassVar[type[_Key]] = _Key

    @classmethod
    def generate(cls: type[_K]) -> _K:
        """A fresh random (clamped) key."""
        return cls(generate_private())

    def public(self) -> _Key:
        """The matching public key."""
        return self.PUBLIC(x25519_public(self.raw))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(<secret>)"


@attrs.frozen(repr=False)
class MachinePrivate(_Private):
    """A machine private key (the server's Noise key, or a client's)."""

    PUBLIC: ClassVar[type[_Key]] = MachinePublic

    def public(self) -> MachinePublic:
        return MachinePublic(x25519_public(self.raw))


@attrs.frozen(repr=False)
class NodePrivate(_Private):
    """A node private key (fake clients)."""

    PUBLIC: ClassVar[type[_Key]] = NodePublic

    def public(self) -> NodePublic:
        return NodePublic(x25519_public(self.raw))


@attrs.frozen(repr=False)
class ChallengePrivate(_Private):
    """An early-noise challenge private key."""

    PUBLIC: ClassVar[type[_Key]] = ChallengePublic

    def public(self) -> ChallengePublic:
        return ChallengePublic(x25519_public(self.raw))


def load_or_generate_private_key(path: str) -> MachinePrivate:
    """
    Read the server's Noise key from ``path``, or create it there.

    A missing file is created with a new key (mode 0600; missing parent
    directories are created with mode 0700). An existing file must hold
    ``privkey:<64 hex>`` (surrounding whitespace ignored; a bare 64-hex key as
    written by old Headscale versions is accepted too); anything else raises
    :class:`KeyFileError` naming the file, and the file is left untouched.
    """
    text = read_key_file(path, "Noise private key file", create=lambda: MachinePrivate.generate().text)
    if _HEX64.fullmatch(text):
        text = MachinePrivate.PREFIX + text
    try:
        return MachinePrivate.parse(text)
    except KeyParseError:
        raise KeyFileError(
            f"Noise private key file {path!r} does not hold a key:"
            " expected one line 'privkey:<64 hex digits>'"
            " (move the file away to have a new key generated; clients will then re-fetch /key)"
        ) from None
