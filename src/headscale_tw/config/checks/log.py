# -*- test-case-name: tests.config.test_loader -*-
"""Checks of ``log``: level and format, made canonical."""

from __future__ import annotations

from dataclasses import replace

from headscale_tw.config._durations import _q
from headscale_tw.config.checks._report import Report
from headscale_tw.config.model import Config

__all__ = ["check", "LOG_LEVELS"]

#: zerolog's level names, which Headscale's ``log.level`` takes.
LOG_LEVELS = ("panic", "fatal", "error", "warn", "info", "debug", "trace")


def check(c: Config, report: Report) -> Config:
    """The level is one of zerolog's (lower-cased); the format is ``text`` (the default) or ``json``."""
    log = c.log
    if log.level.lower() not in LOG_LEVELS:
        report.problem("log.level", f"{_q(log.level)} is not one of {', '.join(LOG_LEVELS)}")
    else:
        log = replace(log, level=log.level.lower())
    if log.format == "":
        log = replace(log, format="text")
    elif log.format not in ("text", "json"):
        report.problem("log.format", f"{_q(log.format)} is not one of text, json")
    return replace(c, log=log)
