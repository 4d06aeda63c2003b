# -*- test-case-name: tests.test_redact -*-
"""
The one redaction helper: take secrets out of any text before it is logged.

Every log line of the server passes through :func:`redact` (the log observer
built in :mod:`headscale_tw.logs` applies it to the whole rendered event,
traceback included), and access or audit logs reuse it for the request line.
What it removes, keeping enough to tell keys apart:

- key texts: ``hskey-auth-<prefix>-<secret>`` and ``hskey-api-<prefix>-<secret>``
  become ``hskey-auth-<prefix>-***`` (the prefix is stored in clear and listed
  by the API anyway); Headscale's legacy 48-hex pre-auth keys, Tailscale
  ``tskey-...`` keys and ``privkey:<hex>`` private keys are replaced whole;
- query parameters that carry secrets (``?key=``, ``apikey=``, ``token=``,
  ``code=`` and the like, see :data:`SECRET_PARAMETERS`): the value becomes ``***``;
- ``Authorization`` header values and ``Bearer``/``Basic`` credentials.

It is a pure function of its input (no state, no I/O), linear in the text's length.
"""

from __future__ import annotations

import re

__all__ = ["SECRET_PARAMETERS", "REPLACEMENT", "redact", "redact_bytes"]

REPLACEMENT = "***"

#: Query (or form) parameters whose values are secrets, compared case-insensitively.
SECRET_PARAMETERS = (
    "key", "apikey", "api_key", "api-key", "authkey", "auth_key", "auth-key", "preauthkey",
    "token", "access_token", "id_token", "refresh_token", "code", "password", "passwd",
    "secret", "client_secret",
)

_PARAMETER = re.compile(
    r"(?P<head>(?:^|[?&;\s])(?:{})=)[^&;#\s\"'<>]+".format("|".join(re.escape(p) for p in SECRET_PARAMETERS)),
    re.IGNORECASE,
)
_HSKEY = re.compile(r"\b(?P<head>hskey-(?:auth|api)-[A-Za-z0-9]+-)[A-Za-z0-9_\-]+")
_TSKEY = re.compile(r"\b(?P<head>tskey-[a-z]+-)[A-Za-z0-9_\-]+")
_PRIVKEY = re.compile(r"\b(?P<head>privkey:)[0-9a-fA-F]+")
_LEGACY_PREAUTH = re.compile(r"(?P<head>(?<![0-9A-Za-z]))[0-9a-f]{48}(?![0-9A-Za-z])")
_AUTHORIZATION = re.compile(r"(?P<head>\bauthorization[\"']?\s*[:=]\s*[\"']?(?:(?:bearer|basic)\s+)?)[^\s\"',;]+",
                            re.IGNORECASE)
_CREDENTIALS = re.compile(r"(?P<head>\b(?:bearer|basic)\s+)[A-Za-z0-9._~+/=\-]{8,}", re.IGNORECASE)

_PATTERNS = (_HSKEY, _TSKEY, _PRIVKEY, _AUTHORIZATION, _CREDENTIALS, _PARAMETER, _LEGACY_PREAUTH)


def _keep_head(match: re.Match) -> str:
    return match.group("head") + REPLACEMENT


def redact(text: str) -> str:
    """``text`` with every secret it recognises replaced by ``***``."""
    for pattern in _PATTERNS:
        text = pattern.sub(_keep_head, text)
    return text


def redact_bytes(data: bytes) -> bytes:
    """:func:`redact` for bytes (a request URI, a header value), decoded as Latin-1 so no byte is lost."""
    return redact(data.decode("latin-1")).encode("latin-1")
