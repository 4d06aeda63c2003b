# -*- test-case-name: tests.test_keyfile -*-
"""
The one way a small secret file is read, or created on first start.

The Noise key, the DERP server key and the DERP mesh key each live in a file
of one line. :func:`read_key_file` reads at most :data:`MAX_KEY_FILE` bytes of
text, and, when given a ``create`` function and the file is missing, writes
what it returns with mode 0600 (missing parent directories 0700), refusing to
overwrite a file another process created meanwhile. Every failure is a
:class:`KeyFileError` naming what the file is and its path.
"""

from __future__ import annotations

import os
from collections.abc import Callable

__all__ = ["KeyFileError", "MAX_KEY_FILE", "read_key_file"]

#: Key files hold one short line; anything longer is not a key file.
MAX_KEY_FILE = 4096


class KeyFileError(ValueError):
    """A key file cannot be read, created or parsed; the message names the file."""


def read_key_file(path: str, what: str, *, create: Callable[[], str] | None = None,
                  missing_hint: str = "") -> str:
    """
    Return the text of the key file at ``path`` with surrounding white space removed.

    :param what: what the file is, for messages ("Noise private key file").
    :param create: called when the file is missing; its text is written to a new
        file (mode 0600) and returned. Without it a missing file is an error.
    :param missing_hint: added to the error for a missing file (how to make one).
    :raises KeyFileError: the file is missing (without ``create``), unreadable,
        not ASCII text, or cannot be created.
    """
    try:
        with open(path, "rb") as f:
            content = f.read(MAX_KEY_FILE)
    except FileNotFoundError:
        if create is None:
            hint = f" ({missing_hint})" if missing_hint else ""
            raise KeyFileError(f"{what} {path!r} does not exist{hint}") from None
        return _create(path, what, create())
    except OSError as e:
        raise KeyFileError(f"cannot read {what} {path!r}: {e.strerror}") from None
    try:
        return content.decode("ascii").strip()
    except UnicodeDecodeError:
        raise KeyFileError(f"{what} {path!r} is not text") from None


def _create(path: str, what: str, text: str) -> str:
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), mode=0o700, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as e:
        raise KeyFileError(f"cannot create {what} {path!r}: {e.strerror}") from None
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(text)
    return text.strip()
