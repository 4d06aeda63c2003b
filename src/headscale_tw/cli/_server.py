# -*- test-case-name: tests.cli.test_main -*-
"""
``headscale serve`` and ``headscale configtest``: the two commands that run server code locally.

``serve`` runs the same service tree as ``twistd -n headscale`` (with ``workers`` > 1,
the same supervisor, whose workers are ``twistd`` processes), logs to stdout
behind ``log.level`` and returns the service's exit status (1 after a failed
start). ``configtest`` runs the checks start-up runs
(:func:`headscale_tw.preflight.configtest`) without changing anything.
"""

from __future__ import annotations

import sys
from typing import Any

from headscale_tw.cli._client import CLIError

__all__ = ["serve", "configtest"]


def serve(ctx: Any) -> int:
    """Run the server in the foreground until it stops; return its exit status."""
    config = ctx.load_config()
    from twisted.logger import globalLogBeginner

    from headscale_tw.logs import stdout_observer
    from headscale_tw.service import build_service

    reactor = ctx.reactor
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        reactor = global_reactor
        globalLogBeginner.beginLoggingTo([stdout_observer(config.log, sys.stdout)], redirectStandardIO=False)
    if config.workers > 1:  # a supervisor of twistd workers, as `twistd -n headscale` (docs/workers.md)
        from headscale_tw.supervisor import supervisor_service

        top: Any = supervisor_service(config, reactor)
    else:
        top = build_service(config, reactor)
    reactor.callWhenRunning(top.startService)
    reactor.addSystemEventTrigger("before", "shutdown", top.stopService)
    reactor.run()
    return top.exit_status


def configtest(ctx: Any) -> None:
    """Load the config and run every start-up check; ``OK: <file>`` or one ``Error:`` line."""
    from headscale_tw.config.loader import ConfigError, load_config
    from headscale_tw.preflight import StartupError
    from headscale_tw.preflight import configtest as run_checks

    notes: list[str] = []
    try:
        config = load_config(ctx.args.config, ctx.environ, warnings=notes)
    except ConfigError as e:
        raise CLIError("configuration error: " + "; ".join(e.problems)) from None
    try:
        checked = run_checks(config)
    except StartupError as e:
        raise CLIError(f"the server would not start: {e}") from None
    if not ctx.out.machine:
        for note in notes:
            ctx.out.stderr.write(f"Warning: {note}\n")
        for line in checked:
            ctx.out.stderr.write(f"checked: {line}\n")
    source = config.source_path or "(embedded defaults)"
    result = {"ok": True, "source": source, "warnings": notes, "checked": checked}
    ctx.out.result(result, result, f"OK: {source}")
