# -*- test-case-name: tests.dnsprovider.test_rfc2136 -*-
"""
The RFC 2136 DNS provider: TSIG-signed dynamic updates to an authoritative server.

One update message per call, sent over TCP with ``dnspython``: it deletes the
name's TXT records and, for :meth:`RFC2136Provider.set_txt`, adds the new one,
so a name holds at most one challenge value. After the server answers
``NOERROR``, the provider asks the same server for the name's TXT records and
returns only when the new value is among them ("published" means served).

dnspython blocks, so each call runs through ``in_thread`` (``deferToThreadPool``
in the daemon); its socket operations end after ``timeout`` seconds, and the
Deferred on the reactor side has its own timeout on the injected clock as a
second bound.
"""

from __future__ import annotations

import socket
from collections.abc import Callable

import dns.exception
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.TXT
import dns.tsig
import dns.tsigkeyring
import dns.update
from twisted.internet.defer import Deferred, TimeoutError
from twisted.internet.interfaces import IReactorTime
from zope.interface import implementer

from headscale_tw.dnsprovider.interface import DNSUpdateFailed, IDNSProvider

__all__ = ["RFC2136Provider", "TSIG_ALGORITHMS"]

#: Config names of the TSIG algorithms → dnspython's algorithm names.
TSIG_ALGORITHMS = {
    "hmac-sha256": dns.tsig.HMAC_SHA256,
    "hmac-sha384": dns.tsig.HMAC_SHA384,
    "hmac-sha512": dns.tsig.HMAC_SHA512,
    "hmac-sha224": dns.tsig.HMAC_SHA224,
    "hmac-sha1": dns.tsig.HMAC_SHA1,
}


@implementer(IDNSProvider)
class RFC2136Provider:
    """
    Publishes TXT records in ``zone`` on the server at ``host``/``port``.

    :param secret: the TSIG secret in base64, as ``tsig-keygen``/``keymgr`` print it.
    :param in_thread: runs a blocking callable off the reactor thread; returns a Deferred.
    :param clock: the injected clock for the reactor-side timeout.
    """

    def __init__(self, host: str, port: int, zone: str, key_name: str, algorithm: str, secret: str,
                 timeout: float, ttl: int, in_thread: Callable[..., Deferred], clock: IReactorTime) -> None:
        self.host = host
        self.port = port
        self.zone = zone.strip(".").lower()
        self.timeout = timeout
        self.ttl = ttl
        self._origin = dns.name.from_text(self.zone)
        self._key_name = dns.name.from_text(key_name)
        self._algorithm = TSIG_ALGORITHMS[algorithm.lower().rstrip(".")]
        try:
            self._keyring = dns.tsigkeyring.from_text({key_name: (self._algorithm, secret.strip())})
        except (ValueError, TypeError) as e:
            raise ValueError(f"the TSIG secret is not valid base64: {e}") from None
        self._in_thread = in_thread
        self._clock = clock

    def _absolute(self, name: str) -> dns.name.Name:
        absolute = dns.name.from_text(name.strip("."))
        if not absolute.is_subdomain(self._origin):
            raise DNSUpdateFailed(f"{name} is outside the zone {self.zone}")
        return absolute

    async def set_txt(self, name: str, value: str) -> None:
        """Make ``value`` the only TXT record at ``name``; return once the server serves it."""
        await self._call(self._update, self._absolute(name), value)

    async def remove_txt(self, name: str) -> None:
        """Remove every TXT record at ``name``."""
        await self._call(self._update, self._absolute(name), None)

    async def _call(self, fn: Callable, *args) -> None:
        d = self._in_thread(fn, *args)
        # The socket timeout bounds the thread; this bounds the caller if the pool is busy.
        d.addTimeout(2 * self.timeout + 1, self._clock)
        try:
            await d
        except TimeoutError:
            raise DNSUpdateFailed(f"the DNS server {self.host}:{self.port} did not answer "
                                  f"within {self.timeout:g}s", transient=True) from None

    # -- in the worker thread ------------------------------------------

    def _address(self) -> str:
        try:
            return str(socket.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM)[0][4][0])
        except OSError as e:
            raise DNSUpdateFailed(f"the DNS server name {self.host} does not resolve: {e}",
                                  transient=True) from None

    def _update(self, name: dns.name.Name, value: str | None) -> None:
        """Send the update, then check what the server serves (blocking)."""
        address = self._address()
        update = dns.update.UpdateMessage(self._origin, keyring=self._keyring, keyname=self._key_name,
                                          keyalgorithm=self._algorithm)
        update.delete(name, dns.rdatatype.TXT)
        if value is not None:
            rdata = dns.rdtypes.ANY.TXT.TXT(dns.rdataclass.IN, dns.rdatatype.TXT, [value.encode("ascii")])
            update.add(name, self.ttl, rdata)
        where = f"the DNS server {self.host}:{self.port}"
        try:
            answer = dns.query.tcp(update, address, timeout=self.timeout, port=self.port)
        except dns.exception.Timeout:
            raise DNSUpdateFailed(f"{where} did not answer the update within {self.timeout:g}s",
                                  transient=True) from None
        except dns.tsig.PeerError as e:
            raise DNSUpdateFailed(f"{where} rejected the TSIG key {self._key_name}: {e}") from None
        except OSError as e:  # refused, reset, unreachable: the server may be back soon
            raise DNSUpdateFailed(f"{where}: the update failed: {e}", transient=True) from None
        except dns.exception.DNSException as e:
            raise DNSUpdateFailed(f"{where}: the update failed: {e}") from None
        rcode = answer.rcode()
        if rcode != dns.rcode.NOERROR:
            raise DNSUpdateFailed(f"{where} refused the update of {name}: {dns.rcode.to_text(rcode)}")
        served = self._served(address, name)
        if value is not None and value not in served:
            raise DNSUpdateFailed(f"{where} accepted the update but does not serve {name} TXT {value!r}",
                                  transient=True)
        if value is None and served:
            raise DNSUpdateFailed(f"{where} accepted the removal but still serves {name} TXT")

    def _served(self, address: str, name: dns.name.Name) -> list[str]:
        query = dns.message.make_query(name, dns.rdatatype.TXT)
        try:
            answer = dns.query.tcp(query, address, timeout=self.timeout, port=self.port)
        except (OSError, dns.exception.DNSException) as e:
            raise DNSUpdateFailed(f"checking {name} TXT at {self.host}:{self.port} failed: {e}",
                                  transient=True) from None
        values: list[str] = []
        for rrset in answer.answer:
            if rrset.rdtype == dns.rdatatype.TXT:
                values.extend(b"".join(rdata.strings).decode("ascii", "replace") for rdata in rrset)
        return values
