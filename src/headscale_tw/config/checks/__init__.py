# -*- test-case-name: tests.config.test_loader,tests.config.test_checks -*-
"""
Cross-field validation of a built :class:`~headscale_tw.config.model.Config`, one module per section.

Each section module has ``check(config, report) -> Config``: it reports every
problem (naming the key) and warning through ``report``
(:class:`~headscale_tw.config.checks._report.Report`) and returns the config
with that section normalised (for example a prefix without host bits, the
canonical database type). :func:`check_config` runs them in :data:`SECTIONS`
order; a new section's rules go in a new module listed there.
"""

from __future__ import annotations

from collections.abc import Callable

from headscale_tw.config.checks import (
    acme_provider,
    audit,
    database,
    derp,
    dns,
    node,
    oidc,
    prefixes,
    server,
    tls,
    workers,
)
from headscale_tw.config.checks import log as log_section
from headscale_tw.config.checks import policy as policy_section
from headscale_tw.config.checks._report import Report
from headscale_tw.config.model import Config

__all__ = ["Report", "SECTIONS", "check_config"]

#: The section checks, in the order their problems are listed.
SECTIONS: tuple[Callable[[Config, Report], Config], ...] = (
    server.check,
    prefixes.check,
    database.check,
    derp.check,
    dns.check,
    acme_provider.check,
    policy_section.check,
    tls.check,
    log_section.check,
    node.check,
    oidc.check,
    audit.check,
    workers.check,
)


def check_config(config: Config, report: Report) -> Config:
    """Run every section's check; return the normalised config."""
    for check in SECTIONS:
        config = check(config, report)
    return config
