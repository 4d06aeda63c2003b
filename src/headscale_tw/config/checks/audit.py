# -*- test-case-name: tests.config.test_checks -*-
"""Checks of ``audit``: the retention of the audit log."""

from __future__ import annotations

from headscale_tw.config.checks._report import Report
from headscale_tw.config.model import Config

__all__ = ["check", "MIN_RETENTION"]

#: A retention below an hour is almost certainly a unit mistake (``90`` meant as days is 90 s).
MIN_RETENTION = 3600.0


def check(c: Config, report: Report) -> Config:
    """The retention is 0 (keep forever) or at least :data:`MIN_RETENTION`."""
    retention = c.audit.retention
    if retention < 0:
        report.problem("audit.retention", "must not be negative (0 keeps events forever)")
    elif 0 < retention < MIN_RETENTION:
        report.problem("audit.retention", f"must be at least 1h (got {retention:g} s; write e.g. \"90d\"), "
                                          "or 0 to keep events forever")
    return c
