# -*- test-case-name: tests.config.test_loader -*-
"""Checks of ``policy``: where the policy is kept."""

from __future__ import annotations

from headscale_tw.config._durations import _q
from headscale_tw.config.checks._report import Report
from headscale_tw.config.model import Config

__all__ = ["check"]


def check(c: Config, report: Report) -> Config:
    """The mode is ``file`` or ``database``."""
    if c.policy.mode not in ("file", "database"):
        report.problem("policy.mode", f"{_q(c.policy.mode)} is not one of file, database")
    return c
