# -*- test-case-name: tests.config.test_loader -*-
"""Checks of ``node``: ephemeral inactivity and route high-availability probing."""

from __future__ import annotations

from headscale_tw.config._durations import format_duration
from headscale_tw.config.checks._report import Report
from headscale_tw.config.model import Config

__all__ = ["check", "MIN_EPHEMERAL_INACTIVITY"]

#: Headscale: the inactivity timeout must exceed the 60 s keep-alive plus slack.
MIN_EPHEMERAL_INACTIVITY = 65.0


def check(c: Config, report: Report) -> Config:
    """The ephemeral timeout is positive; HA probing, when on, has a sane interval and timeout."""
    n = c.node
    # Headscale refuses timeouts up to 65s because it infers inactivity from
    # keep-alives. headscale-tw counts from the moment the node's last map stream
    # closed, so a short timeout is meaningful: accept it, but say it differs.
    if n.ephemeral_inactivity_timeout <= 0:
        report.problem("node.ephemeral.inactivity_timeout", "must be positive")
    elif n.ephemeral_inactivity_timeout <= MIN_EPHEMERAL_INACTIVITY:
        report.warn(f"node.ephemeral.inactivity_timeout: {format_duration(n.ephemeral_inactivity_timeout)} is "
                    f"below Headscale's minimum of {format_duration(MIN_EPHEMERAL_INACTIVITY)}; headscale-tw "
                    "accepts it (it counts from the moment the node's map stream closed)")
    if n.routes_ha_probe_interval > 0:
        if n.routes_ha_probe_interval < 2:
            report.problem("node.routes.ha.probe_interval", "must be at least 2s (or 0 to disable probing)")
        if n.routes_ha_probe_timeout < 1:
            report.problem("node.routes.ha.probe_timeout", "must be at least 1s")
        if n.routes_ha_probe_timeout >= n.routes_ha_probe_interval:
            report.problem("node.routes.ha.probe_timeout", "must be less than node.routes.ha.probe_interval")
    return c
