# -*- test-case-name: tests.config.test_loader -*-
"""Checks of ``derp``: the embedded server, its mesh, and the maps to fetch."""

from __future__ import annotations

import ipaddress

from headscale_tw.config._durations import _q
from headscale_tw.config.checks._report import Report, check_url
from headscale_tw.config.model import Config
from headscale_tw.hostport import parse_hostport

__all__ = ["check"]


def check(c: Config, report: Report) -> Config:
    """The embedded server has its STUN address, key and region; URLs and mesh settings agree."""
    d = c.derp
    if d.server.enabled:
        if not d.server.stun_listen_addr:
            report.problem("derp.server.stun_listen_addr", "must be set when derp.server.enabled is true")
        else:
            try:
                parse_hostport(d.server.stun_listen_addr)
            except ValueError as e:
                report.problem("derp.server.stun_listen_addr", str(e))
        if not d.server.automatically_add_embedded_derp_region and not d.paths:
            report.problem("derp.server.automatically_add_embedded_derp_region",
                           "false requires the embedded server's region in a file listed in derp.paths")
        if not d.server.private_key_path:
            report.problem("derp.server.private_key_path", "must be set when derp.server.enabled is true")
    if not 0 < d.server.region_id:
        report.problem("derp.server.region_id", f"{d.server.region_id} must be a positive number")
    for family, text in (("ipv4", d.server.ipv4), ("ipv6", d.server.ipv6)):
        if text is None:
            continue
        try:
            addr = ipaddress.ip_address(text)
        except ValueError:
            report.problem(f"derp.server.{family}", f"{_q(text)} is not an IP address")
            continue
        if addr.version != int(family[-1]):
            report.problem(f"derp.server.{family}", f"{_q(text)} is not an IP{family[2:]} address")
    for key, urls in (("derp.urls", d.urls), ("derp.server.mesh_peers", d.server.mesh_peers)):
        for i, url in enumerate(urls):
            problem = check_url(url)
            if problem:
                report.problem(f"{key}[{i}]", problem)
    if d.server.advertise_url is not None:
        problem = check_url(d.server.advertise_url)
        if problem:
            report.problem("derp.server.advertise_url", problem)
        elif not d.server.enabled:
            report.problem("derp.server.advertise_url", "is only used when derp.server.enabled is true")
    if d.server.mesh_peers and not d.server.mesh_key_path:
        report.problem("derp.server.mesh_peers",
                       "needs derp.server.mesh_key_path (the key every instance of the mesh shares)")
    if d.server.mesh_key_path and not d.server.enabled:
        report.problem("derp.server.mesh_key_path", "is only used when derp.server.enabled is true")
    if d.auto_update_enabled and d.update_frequency <= 0 and (d.urls or d.paths):
        report.problem("derp.update_frequency", "must be positive when derp.auto_update_enabled is true")
    return c
