# -*- test-case-name: tests.config.test_loader -*-
"""Checks of ``database``: the driver and what each driver needs."""

from __future__ import annotations

from dataclasses import replace

from headscale_tw.config._durations import _q
from headscale_tw.config.checks._report import Report
from headscale_tw.config.model import Config

__all__ = ["check"]

#: Headscale's spellings of the two drivers, and the one name we use for each.
_TYPES = {"sqlite": "sqlite", "sqlite3": "sqlite", "postgres": "postgres", "postgresql": "postgres"}


def check(c: Config, report: Report) -> Config:
    """The type is known (and made canonical); the chosen driver has what it needs."""
    db = c.database
    db_type = _TYPES.get(db.type)
    if db_type is None:
        report.problem("database.type", f"{_q(db.type)} is not one of sqlite, sqlite3, postgres")
    else:
        c = replace(c, database=replace(db, type=db_type))
    if db_type == "sqlite" and not db.sqlite.path:
        report.problem("database.sqlite.path", "must be set when database.type is sqlite")
    if db.sqlite.wal_autocheckpoint < 0:
        report.problem("database.sqlite.wal_autocheckpoint", "must not be negative")
    if db_type == "postgres":
        for name in ("host", "name"):
            if not getattr(db.postgres, name):
                report.problem(f"database.postgres.{name}", "must be set when database.type is postgres")
    if not 0 < db.postgres.port <= 65535:
        report.problem("database.postgres.port", f"{db.postgres.port} is not a port number")
    for name in ("max_open_conns", "max_idle_conns", "conn_max_idle_time_secs"):
        if getattr(db.postgres, name) < 0:
            report.problem(f"database.postgres.{name}", "must not be negative")
    return c
