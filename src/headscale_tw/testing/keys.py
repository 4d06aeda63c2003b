"""Key texts for tests."""

from __future__ import annotations

from headscale_tw.secrets import parse_key

__all__ = ["with_wrong_secret"]


def with_wrong_secret(key: str) -> str:
    """``key`` with its prefix kept and its secret replaced by 43 ``A``: found by prefix, refused by hash.

    The secret is URL-safe base64 and may itself contain ``-``, so the split goes through
    :func:`headscale_tw.secrets.parse_key`, never through the last dash.
    """
    kind, prefix, _ = parse_key(key)
    return f"hskey-{kind}-{prefix}-" + "A" * 43
