# -*- test-case-name: tests.config.test_loader -*-
"""Checks of ``prefixes``: the tailnet's IPv4 and IPv6 ranges and how addresses are allocated."""

from __future__ import annotations

import ipaddress
from dataclasses import replace

from headscale_tw.config._durations import _q
from headscale_tw.config.checks._report import Report
from headscale_tw.config.model import Config

__all__ = ["check", "CGNAT_V4", "TAILSCALE_ULA_V6"]

CGNAT_V4 = ipaddress.IPv4Network("100.64.0.0/10")
TAILSCALE_ULA_V6 = ipaddress.IPv6Network("fd7a:115c:a1e0::/48")


def check(c: Config, report: Report) -> Config:
    """Each prefix parses, is of its family and inside Tailscale's range; at least one is set."""
    found: dict[str, str | None] = {}
    for family, cls, standard in (("v4", ipaddress.IPv4Network, CGNAT_V4),
                                  ("v6", ipaddress.IPv6Network, TAILSCALE_ULA_V6)):
        text = getattr(c.prefixes, family)
        key = f"prefixes.{family}"
        found[family] = text
        if text is None:
            continue
        try:
            net = ipaddress.ip_network(text, strict=False)
        except ValueError:
            report.problem(key, f"{_q(text)} is not a valid prefix")
            continue
        if not isinstance(net, cls):
            report.problem(key, f"{_q(text)} is not an IP{family} prefix")
            continue
        if str(net) != text:
            report.warn(f"{key}: {_q(text)} has host bits set; using {_q(str(net))}")
        if not net.subnet_of(standard):  # type: ignore[arg-type]  # same version: isinstance checked above
            report.warn(f"{key}: {_q(str(net))} is outside the Tailscale range {standard}; Tailscale clients "
                        f"assume addresses from that range, so this is unsupported and will misbehave")
        found[family] = str(net)
    if found["v4"] is None and found["v6"] is None:
        report.problem("prefixes", "no IPv4 or IPv6 prefix configured; "
                       "at least one of prefixes.v4 and prefixes.v6 is required")
    if c.prefixes.allocation not in ("sequential", "random"):
        report.problem("prefixes.allocation", f"{_q(c.prefixes.allocation)} is not one of sequential, random")
    return replace(c, prefixes=replace(c.prefixes, v4=found["v4"], v6=found["v6"]))
