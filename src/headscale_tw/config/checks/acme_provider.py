# -*- test-case-name: tests.config.test_acme_provider -*-
"""
Checks of ``dns.acme_provider``: the DNS provider that publishes ``tailscale cert`` challenges.

Left unset (``type`` empty), nodes are not offered certificates and the other
keys must stay unset. With ``type: rfc2136`` the server, the TSIG key and the
zone must make sense together: the zone is ``dns.base_domain`` or a parent of
it (the challenge names ``_acme-challenge.<node>.<base_domain>`` must be in
it), and MagicDNS must be on (the certificate names are MagicDNS names).
"""

from __future__ import annotations

import re

from headscale_tw.config._durations import _q
from headscale_tw.config.checks._report import Report
from headscale_tw.config.model import Config
from headscale_tw.hostport import parse_hostport

__all__ = ["check", "PROVIDER_TYPES", "TSIG_ALGORITHMS", "MAX_TIMEOUT"]

#: Provider types this build knows (see docs/certificates.md to add one).
PROVIDER_TYPES = ("rfc2136",)

#: TSIG algorithms accepted for ``tsig_algorithm`` (RFC 8945 names without the trailing dot).
TSIG_ALGORITHMS = ("hmac-sha256", "hmac-sha384", "hmac-sha512", "hmac-sha224", "hmac-sha1")

#: The longest ``timeout`` allowed: the client waits for set-dns with this pending.
MAX_TIMEOUT = 120.0

_KEY_NAME = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(\.(?!-)[A-Za-z0-9_-]{1,63})*\.?")

_P = "dns.acme_provider"


def check(c: Config, report: Report) -> Config:
    """A configured provider is complete and its zone holds the MagicDNS names."""
    p = c.dns.acme_provider
    if not p.type:
        for key in ("server", "zone", "tsig_key_name", "tsig_secret_path"):
            if getattr(p, key):
                report.problem(f"{_P}.{key}", f"is set but {_P}.type is empty; set type (e.g. rfc2136) or remove it")
        return c
    if p.type not in PROVIDER_TYPES:
        report.problem(f"{_P}.type", f"{_q(p.type)} is not one of {', '.join(PROVIDER_TYPES)}")
        return c
    if not c.dns.magic_dns:
        report.problem(f"{_P}.type", "needs dns.magic_dns: true (certificates are for MagicDNS names)")
    if not p.server:
        report.problem(f"{_P}.server", "is required (host:port of the DNS server that takes updates)")
    else:
        try:
            host, _port = parse_hostport(p.server)
        except ValueError as e:
            report.problem(f"{_P}.server", str(e))
        else:
            if not host:
                report.problem(f"{_P}.server", f"{_q(p.server)} has no host")
    if not p.tsig_key_name:
        report.problem(f"{_P}.tsig_key_name", "is required: updates are TSIG-signed")
    elif not _KEY_NAME.fullmatch(p.tsig_key_name):
        report.problem(f"{_P}.tsig_key_name", f"{_q(p.tsig_key_name)} is not a DNS name")
    if p.tsig_algorithm.lower().rstrip(".") not in TSIG_ALGORITHMS:
        report.problem(f"{_P}.tsig_algorithm", f"{_q(p.tsig_algorithm)} is not one of {', '.join(TSIG_ALGORITHMS)}")
    if not p.tsig_secret_path:
        report.problem(f"{_P}.tsig_secret_path", "is required (a file holding the base64 TSIG secret)")
    if not 0 < p.timeout <= MAX_TIMEOUT:
        report.problem(f"{_P}.timeout", f"must be more than 0 and at most {MAX_TIMEOUT:g}s")
    if not 0 <= p.ttl <= 86400:
        report.problem(f"{_P}.ttl", "must be between 0 and 86400 seconds")
    base = c.dns.base_domain.lower().strip(".")
    zone = p.zone.lower().strip(".")
    if zone and base and not (base == zone or base.endswith("." + zone)):
        report.problem(f"{_P}.zone", f"{_q(p.zone)} does not contain dns.base_domain {_q(c.dns.base_domain)}")
    return c
