# -*- test-case-name: tests.config.test_loader -*-
"""Checks of ``dns``: MagicDNS's base domain against the server URL, resolvers, extra records."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from headscale_tw.config._durations import _q
from headscale_tw.config.checks._report import Report, check_url, is_resolver
from headscale_tw.config.model import Config

__all__ = ["check"]

_DOMAIN = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*")


def check(c: Config, report: Report) -> Config:
    """The base domain is a domain outside the server's host; resolvers and records are usable."""
    dns = c.dns
    if dns.magic_dns and not dns.base_domain:
        report.problem("dns.base_domain", "must be set when dns.magic_dns is true")
    if dns.base_domain:
        _check_base_domain(dns.base_domain, c.server_url, report)
    # Headscale refuses override_local_dns without global resolvers; the embedded
    # defaults rely on it meaning "MagicDNS only, clients keep their resolvers".
    for where, servers in [("dns.nameservers.global", dns.nameservers.global_)] + [
        (f"dns.nameservers.split.{dom}", srv) for dom, srv in dns.nameservers.split
    ]:
        for s in servers:
            if not is_resolver(s):
                report.warn(f"{where}: {_q(s)} is neither an IP address nor a DoH URL, ignored")
    if report.given("dns.extra_records") and dns.extra_records_path:
        report.problem("dns.extra_records", "and dns.extra_records_path are mutually exclusive; keep one")
    for r in dns.extra_records:
        if r.type not in ("A", "AAAA"):
            report.warn(f"dns.extra_records: {r.name} has type {_q(r.type)}; Tailscale clients only use A and AAAA")
    return c


def _check_base_domain(base_domain: str, server_url: str, report: Report) -> None:
    if base_domain.endswith(".") or not _DOMAIN.fullmatch(base_domain):
        report.problem("dns.base_domain", f"{_q(base_domain)} is not a domain name (no trailing dot)")
    host = (urlsplit(server_url).hostname or "") if not check_url(server_url) else ""
    base = base_domain.lower()
    if host == base:
        report.problem("dns.base_domain", f"{_q(base_domain)} is the server_url host; clients would resolve "
                       "the server through MagicDNS and lose it, so they must differ")
    elif host.endswith("." + base):
        report.problem("dns.base_domain", f"server_url host {_q(host)} is inside base_domain {_q(base_domain)}; "
                       "clients would lose the server and DERP, so server_url must be outside it")
