# -*- test-case-name: tests.config.test_checks -*-
"""What a section check reports to, and the value checks several sections share."""

from __future__ import annotations

import ipaddress
from typing import Protocol
from urllib.parse import urlsplit

from headscale_tw.config._durations import _q

__all__ = ["Report", "check_url", "is_resolver"]


class Report(Protocol):
    """Where a section check sends what it finds."""

    def problem(self, key: str, text: str) -> None:
        """Record that ``key`` is invalid; ``text`` says why (start-up is refused)."""

    def warn(self, text: str) -> None:
        """Record a warning (start-up goes on); ``text`` names the key."""

    def given(self, key: str) -> bool:
        """Whether ``key`` was set explicitly (file or environment), not left at its default."""


def check_url(value: str) -> str | None:
    """Return a problem with an http(s) URL, or ``None``."""
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError as e:
        return f"{_q(value)} is not a valid URL ({e})"
    if parts.scheme not in ("http", "https"):
        return f"{_q(value)} must start with http:// or https://"
    if not parts.hostname:
        return f"{_q(value)} has no host name"
    return None


def is_resolver(text: str) -> bool:
    """Whether ``text`` is a DNS resolver Tailscale clients accept: an IP address or a DoH URL."""
    try:
        ipaddress.ip_address(text)
        return True
    except ValueError:
        pass
    return check_url(text) is None
