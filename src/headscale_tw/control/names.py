# -*- test-case-name: tests.control.test_names -*-
"""
MagicDNS given names, as Headscale derives them.

A new node's given name is its sanitised ``Hostinfo.Hostname``; on collision
with another node it becomes ``base-1``, ``base-2``, … (first free). Admin
renames must already be valid DNS labels and unique. ``Node.Name`` on the wire
is ``<given name>.<base domain>.`` with a trailing dot.
"""

from __future__ import annotations

import re
from collections.abc import Container

from headscale_tw.errors import InvalidInput

__all__ = ["sanitize_hostname", "unique_given_name", "validate_given_name", "fqdn", "cert_domain"]

_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_MAX_LABEL = 63


def sanitize_hostname(hostname: str) -> str:
    """Turn a client hostname into a DNS label (``node`` when nothing is left)."""
    name = hostname or ""
    for suffix in (".local", ".localdomain", ".lan"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
    name = name.encode("utf-8")[:_MAX_LABEL].decode("utf-8", "ignore")
    name = name.lower()
    out = []
    for char in name:
        if "a" <= char <= "z" or "0" <= char <= "9" or char == "-":
            out.append(char)
        elif char in " .@_":
            out.append("-")
    label = "".join(out).strip("-")
    return label or "node"


def unique_given_name(base: str, taken: Container[str]) -> str:
    """``base`` if free, else the first free ``base-N`` (N = 1, 2, …), kept within 63 bytes."""
    if base not in taken:
        return base
    n = 1
    while True:
        suffix = f"-{n}"
        candidate = base[: _MAX_LABEL - len(suffix)].rstrip("-") + suffix
        if candidate not in taken:
            return candidate
        n += 1


def validate_given_name(name: str) -> str:
    """Return ``name`` if it is a valid lower-case DNS label, else raise ``InvalidInput``."""
    if not isinstance(name, str) or not _LABEL.match(name):
        raise InvalidInput(
            f"invalid node name {name!r}: use 1-63 lower-case letters, digits or '-', "
            "not starting or ending with '-'"
        )
    return name


def fqdn(given_name: str, base_domain: str) -> str:
    """The MagicDNS name sent as ``Node.Name`` (trailing dot; bare label with no domain)."""
    domain = (base_domain or "").strip(".")
    if not domain:
        return given_name
    return f"{given_name}.{domain}."


def cert_domain(given_name: str, base_domain: str) -> str:
    """The name a node may get a TLS certificate for (``DNSConfig.CertDomains``): its MagicDNS name, no final dot."""
    return fqdn(given_name, base_domain).rstrip(".")
