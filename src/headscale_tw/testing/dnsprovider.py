# -*- test-case-name: tests.control.test_dns_challenges -*-
"""A DNS provider in memory, for tests of ``/machine/set-dns`` and of the netmap's HTTPS offer."""

from __future__ import annotations

from twisted.internet.defer import Deferred
from zope.interface import implementer

from headscale_tw.dnsprovider.interface import DNSUpdateFailed, IDNSProvider

__all__ = ["FakeDNSProvider"]


@implementer(IDNSProvider)
class FakeDNSProvider:
    """Keeps TXT records in :attr:`records`; can hold calls open or fail them.

    :ivar calls: every ``(method, name, value)`` received, in order.
    :ivar held: with ``hold = True``, the Deferreds calls are waiting on (fire one to finish it).
    :ivar failure: when set, every call fails with :class:`DNSUpdateFailed` and this text.
    :ivar transient: the failure's ``transient`` flag.
    :ivar failures_left: when not ``None``, only this many more calls fail (then ``failure`` is cleared).
    """

    def __init__(self, zone: str = "tail.example", timeout: float = 10.0) -> None:
        self.zone = zone
        self.timeout = timeout
        self.records: dict[str, str] = {}
        self.calls: list[tuple[str, str, str | None]] = []
        self.hold = False
        self.held: list[Deferred] = []
        self.failure: str | None = None
        self.transient = False
        self.failures_left: int | None = None

    async def _wait(self) -> None:
        if self.failure is not None:
            failure = DNSUpdateFailed(self.failure, transient=self.transient)
            if self.failures_left is not None:
                self.failures_left -= 1
                if self.failures_left <= 0:
                    self.failure = self.failures_left = None
            raise failure
        if self.hold:
            d: Deferred = Deferred()
            self.held.append(d)
            await d

    async def set_txt(self, name: str, value: str) -> None:
        """Record ``value`` as ``name``'s only TXT record."""
        self.calls.append(("set_txt", name, value))
        await self._wait()
        self.records[name] = value

    async def remove_txt(self, name: str) -> None:
        """Forget ``name``'s TXT record."""
        self.calls.append(("remove_txt", name, None))
        await self._wait()
        self.records.pop(name, None)
