# -*- test-case-name: tests.dnsprovider.test_rfc2136 -*-
"""The DNS provider seam: publish and remove one TXT record, each within a bounded time."""

from __future__ import annotations

from zope.interface import Attribute, Interface

__all__ = ["IDNSProvider", "DNSUpdateFailed"]


class DNSUpdateFailed(Exception):
    """The DNS provider did not publish (or remove) a record; ``str()`` says why in one line.

    ``transient`` is true when trying again may succeed (no answer, connection
    refused, the record not served yet), false for a refusal (a rejected TSIG
    key, ``REFUSED``, a name outside the zone) that a retry would only repeat.
    """

    def __init__(self, message: str, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


class IDNSProvider(Interface):
    """Publishes TXT records in one zone for ACME DNS-01 challenges.

    Each method finishes, or fails with :class:`DNSUpdateFailed`, within
    :attr:`timeout` seconds (plus scheduling slack); none ever waits forever.
    Names are absolute domain names without the trailing dot, inside :attr:`zone`.
    """

    zone = Attribute("The zone records are published in (no trailing dot).")
    timeout = Attribute("Seconds one call may take before it fails.")

    async def set_txt(name, value):
        """Make ``value`` the only TXT record at ``name``; return once the DNS server serves it."""

    async def remove_txt(name):
        """Remove every TXT record at ``name`` (no error when there is none)."""
