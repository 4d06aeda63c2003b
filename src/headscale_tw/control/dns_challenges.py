# -*- test-case-name: tests.control.test_dns_challenges -*-
"""
ACME DNS-01 challenges for ``tailscale cert``: a node asks for its own TXT record.

The client (``ipn/ipnlocal/cert.go``) takes a name from the netmap's
``DNSConfig.CertDomains``, orders a certificate from its ACME server, and for
the ``dns-01`` challenge sends ``POST /machine/set-dns`` (tailcfg
``SetDNSRequest``: ``Version``, ``NodeKey``, ``Name``, ``Type`` ``"TXT"``,
``Value``); once that answers 200 (``SetDNSResponse``, ``{}``) it tells the
ACME server to validate, then finalizes the order itself.

:class:`DNSChallenges` checks the request and publishes the record through the
configured :class:`~headscale_tw.dnsprovider.interface.IDNSProvider`:

* the node key must be the Noise peer's own node;
* ``Name`` must be exactly ``_acme-challenge.`` + that node's certificate
  domain (its MagicDNS name), ``Type`` must be ``TXT`` and ``Value`` a
  bounded run of printable characters (an ACME value is 43 base64url
  characters);
* one update per node at a time; a second while one runs is refused.

An update that fails for a reason that may pass (the DNS server did not
answer, refused the connection, does not serve the record yet) is tried again
after :data:`RETRY_DELAYS` (1 s, 2 s, 4 s) on the injected clock, each failure
logged in one line; a refusal (rejected TSIG key, ``REFUSED``, a name outside
the zone) is answered at once, as a retry would only repeat it. Either way the
node's request then fails with the provider's reason.

With no provider configured every request is refused with
:class:`CertificatesUnavailable` (and the mapper does not offer HTTPS).
"""

from __future__ import annotations

import re

from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger

from headscale_tw.control._wire import parse_request_head
from headscale_tw.control.names import cert_domain
from headscale_tw.control.poll import Unauthorized
from headscale_tw.dnsprovider.interface import DNSUpdateFailed, IDNSProvider
from headscale_tw.errors import HeadscaleError, InvalidInput, NotFound

__all__ = [
    "DNSChallenges",
    "CertificatesUnavailable",
    "NotOwnName",
    "UpdateInProgress",
    "PublishFailed",
    "CHALLENGE_PREFIX",
    "MAX_VALUE",
    "MAX_NAME",
    "RETRY_DELAYS",
]

#: Waits before the second, third and fourth try of an update that failed transiently
#: (about 7 s in all, well inside the client's wait for its set-dns request).
RETRY_DELAYS = (1.0, 2.0, 4.0)

CHALLENGE_PREFIX = "_acme-challenge."

#: Longest ``Value`` accepted: one TXT character-string (an ACME value is 43 characters).
MAX_VALUE = 255

#: Longest ``Name`` accepted: a DNS name's limit.
MAX_NAME = 253

_VALUE = re.compile(r"[\x21-\x7e]+")  # printable ASCII, no spaces or quotes to escape


class CertificatesUnavailable(HeadscaleError):
    """No DNS provider is configured, so nodes cannot get certificates."""


class NotOwnName(HeadscaleError):
    """The request names a record other than the caller's own challenge name."""


class UpdateInProgress(HeadscaleError):
    """The node already has a DNS update running."""


class PublishFailed(HeadscaleError):
    """The DNS provider did not publish the record; the message says why."""


def _text(body: dict, field: str, limit: int) -> str:
    value = body.get(field)
    if not isinstance(value, str) or not value:
        raise InvalidInput(f"{field}: must be a non-empty string")
    if len(value) > limit:
        raise InvalidInput(f"{field}: {len(value)} characters is more than the limit of {limit}")
    return value


class DNSChallenges:
    """Publishes each node's own ``_acme-challenge`` TXT record through a DNS provider.

    :param state: the control state (nodes by node key).
    :param provider: the DNS provider, or ``None`` when none is configured.
    :param base_domain: MagicDNS's base domain (certificate domains are ``<given name>.<base>``).
    :param clock: the injected clock the retries wait on.
    """

    log = Logger()

    def __init__(self, state, provider: IDNSProvider | None, base_domain: str, clock: IReactorTime) -> None:
        self.state = state
        self.provider = provider
        self.base_domain = base_domain.strip(".")
        self.clock = clock
        self._running: set[int] = set()

    @property
    def available(self) -> bool:
        """Whether nodes may get certificates (a provider and a MagicDNS domain)."""
        return self.provider is not None and bool(self.base_domain)

    def cert_domain(self, node) -> str:
        """The name a node may get a certificate for: its MagicDNS name, without the final dot."""
        return cert_domain(node.given_name, self.base_domain)

    def parse(self, machine_key: str, body: object):
        """The node and the ``(name, value)`` a ``SetDNSRequest`` from ``machine_key`` may publish.

        :raises InvalidInput: a malformed request (the message names the field).
        :raises NotFound: the node key is not registered.
        :raises Unauthorized: the node key belongs to another machine.
        :raises NotOwnName: the name is not the node's own challenge name.
        """
        _version, node_key = parse_request_head(body, "set-dns request")
        assert isinstance(body, dict)  # parse_request_head refuses anything else
        rtype = _text(body, "Type", 16)
        if rtype != "TXT":
            raise InvalidInput(f"Type: only TXT records may be set, not {rtype!r}")
        name = _text(body, "Name", MAX_NAME).rstrip(".").lower()
        value = _text(body, "Value", MAX_VALUE)
        if not _VALUE.fullmatch(value) or '"' in value or "\\" in value:
            raise InvalidInput("Value: must be printable ASCII without spaces, quotes or backslashes")
        node = self.state.by_node_key(node_key)
        if node is None:
            raise NotFound("node key not registered")
        if node.machine_key != machine_key:
            raise Unauthorized("node key does not belong to this machine key")
        own = CHALLENGE_PREFIX + self.cert_domain(node).lower()
        if name != own:
            raise NotOwnName(f"Name: a node may only set its own challenge record {own}, not {name}")
        return node, own, value

    async def publish(self, machine_key: str, body: object) -> dict:
        """Check a ``SetDNSRequest`` and publish its TXT record; return the ``SetDNSResponse``.

        :raises CertificatesUnavailable: when no provider is configured (checked first).
        :raises UpdateInProgress: when this node's previous request is still running.
        :raises PublishFailed: when the provider did not publish the record.
        """
        if not self.available:
            raise CertificatesUnavailable(
                "HTTPS certificates are not available from this server: no DNS provider is configured "
                "(dns.acme_provider)")
        node, name, value = self.parse(machine_key, body)
        if node.id in self._running:
            raise UpdateInProgress(f"a DNS update for {name} is already running; retry when it has finished")
        self._running.add(node.id)
        try:
            await self._set_txt(node.id, name, value)
        except DNSUpdateFailed as e:
            self.log.warn("set-dns for node {node_id}: {name} TXT not published: {reason}",
                          node_id=node.id, name=name, reason=str(e))
            raise PublishFailed(f"the DNS provider did not publish {name}: {e}") from None
        finally:
            self._running.discard(node.id)
        self.log.info("set-dns for node {node_id}: {name} TXT published", node_id=node.id, name=name)
        return {}

    async def _set_txt(self, node_id: int, name: str, value: str) -> None:
        provider = self.provider
        assert provider is not None  # only called when enabled
        for delay in (*RETRY_DELAYS, None):
            try:
                await provider.set_txt(name, value)
                return
            except DNSUpdateFailed as e:
                if not e.transient or delay is None:
                    raise
                self.log.warn("set-dns for node {node_id}: {name} TXT not published yet: {reason}; "
                              "trying again in {delay:g} s", node_id=node_id, name=name, reason=str(e), delay=delay)
                await deferLater(self.clock, delay, lambda: None)
