# -*- test-case-name: tests.dnsprovider.test_build -*-
"""Makes the DNS provider ``dns.acme_provider`` names, or ``None`` when there is none."""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet import threads
from twisted.internet.defer import Deferred

from headscale_tw.dnsprovider.interface import IDNSProvider
from headscale_tw.hostport import parse_hostport

__all__ = ["build_provider", "ProviderUnusable"]


class ProviderUnusable(ValueError):
    """The configured provider cannot be made (for example its secret file is unreadable)."""


def build_provider(config, reactor, in_thread: Callable[..., Deferred] | None = None,
                   read_file: Callable[[str], str] | None = None) -> IDNSProvider | None:
    """The provider for ``config.dns.acme_provider`` (checked by ``config/checks/acme_provider.py``).

    :raises ProviderUnusable: naming the key, when the secret cannot be read or used.
    """
    p = config.dns.acme_provider
    if not p.type:
        return None
    if in_thread is None:
        def in_thread(fn, *args):
            return threads.deferToThreadPool(reactor, reactor.getThreadPool(), fn, *args)
    if read_file is None:
        def read_file(path: str) -> str:
            with open(path, encoding="ascii") as f:
                return f.read()
    if p.type == "rfc2136":
        from headscale_tw.dnsprovider.rfc2136 import RFC2136Provider

        try:
            secret = read_file(p.tsig_secret_path).strip()
        except (OSError, ValueError) as e:
            raise ProviderUnusable(f"dns.acme_provider.tsig_secret_path: cannot read the TSIG secret: {e}") from None
        host, port = parse_hostport(p.server)
        try:
            return RFC2136Provider(host, int(port), p.zone or config.dns.base_domain, p.tsig_key_name,
                                   p.tsig_algorithm, secret, p.timeout, p.ttl, in_thread, reactor)
        except ValueError as e:
            raise ProviderUnusable(f"dns.acme_provider.tsig_secret_path: {e}") from None
    raise ProviderUnusable(f"dns.acme_provider.type: {p.type!r} is not a known provider")
