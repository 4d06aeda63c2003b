# -*- test-case-name: tests.config.test_loader -*-
"""Checks of the top-level server keys: URL, listeners, socket, Noise key, proxies, CLI."""

from __future__ import annotations

import ipaddress
from dataclasses import replace

from headscale_tw.config._durations import _q
from headscale_tw.config.checks._report import Report, check_url
from headscale_tw.config.model import Config
from headscale_tw.hostport import parse_hostport

__all__ = ["check"]


def check(c: Config, report: Report) -> Config:
    """Check ``server_url``, the listen addresses, the unix socket, Noise, ``trusted_proxies`` and ``cli``."""
    problem = check_url(c.server_url)
    if problem:
        report.problem("server_url", problem)
    for key, value, optional in (
        ("listen_addr", c.listen_addr, False),
        ("metrics_listen_addr", c.metrics_listen_addr, True),
    ):
        if not value and optional:
            continue
        try:
            parse_hostport(value)
        except ValueError as e:
            report.problem(key, str(e))
    if c.grpc_listen_addr:
        report.warn("grpc_listen_addr is accepted but ignored: headscale-tw has no gRPC API; "
                    "the CLI uses the REST API (/api/v1) over unix_socket or HEADSCALE_CLI_ADDRESS")
    if not 0 <= c.unix_socket_permission <= 0o7777:
        report.problem("unix_socket_permission", f"{oct(c.unix_socket_permission)} is not a file mode")
    if not c.noise.private_key_path:
        report.problem("noise.private_key_path", "must be set (the server's Noise key is stored there)")
    if c.cli.address and "://" in c.cli.address:
        problem = check_url(c.cli.address)
        if problem:
            report.problem("cli.address", problem)
    return replace(c, trusted_proxies=_trusted_proxies(c.trusted_proxies, report))


def _trusted_proxies(texts: tuple[str, ...], report: Report) -> tuple[str, ...]:
    proxies = []
    for i, text in enumerate(texts):
        try:
            net = ipaddress.ip_network(text, strict=False)
        except ValueError:
            report.problem(f"trusted_proxies[{i}]", f"{_q(text)} is not a CIDR prefix such as 10.0.0.1/32")
            continue
        if net.prefixlen == 0:
            report.problem(f"trusted_proxies[{i}]", f"{_q(text)}: 0.0.0.0/0 and ::/0 are not allowed")
            continue
        proxies.append(str(net))
    return tuple(proxies)
