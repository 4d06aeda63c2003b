# -*- test-case-name: tests.config.test_checks -*-
"""Checks of ``workers``: how many server processes share this host's cores."""

from __future__ import annotations

from headscale_tw.config.checks._report import Report
from headscale_tw.config.model import Config

__all__ = ["check", "MAX_WORKERS"]

#: The most workers one host may run: each holds its own PostgreSQL connections,
#: DERP mesh links to every other worker (n·(n-1) links) and its own memory.
MAX_WORKERS = 64


def check(c: Config, report: Report) -> Config:
    """``workers`` is between 1 and :data:`MAX_WORKERS`; more than one needs PostgreSQL and no ACME."""
    if not 1 <= c.workers <= MAX_WORKERS:
        report.problem("workers", f"{c.workers} is not between 1 and {MAX_WORKERS}")
    elif c.workers > 1 and c.database.type != "postgres":
        report.problem("workers", f"{c.workers} workers need database.type: postgres "
                       f"(the workers share state through its change feed), not {c.database.type}")
    elif c.workers > 1 and c.tls.letsencrypt_hostname:
        report.problem("workers", "workers > 1 cannot share the ACME listeners of tls_letsencrypt_hostname yet; "
                       "use tls_cert_path/tls_key_path (or a TLS proxy) with workers")
    return c
