# -*- test-case-name: tests.test_tap -*-
"""
The exit status of ``twistd headscale`` after a failed start (:func:`exit_with_status`), and
stopping the reactor after one (:func:`stop_reactor_after_failed_start`).

Kept apart from :mod:`headscale_tw.service` so that the ``workers`` supervisor,
which uses it too, does not import the whole server (docs/workers.md).
"""

from __future__ import annotations

import atexit
import os
import sys
from typing import Any, Protocol

from twisted.internet.error import ReactorNotRunning

from headscale_tw import preflight

__all__ = ["HasExitStatus", "exit_with_status", "stop_reactor_after_failed_start"]


class HasExitStatus(Protocol):
    """A top-level service: ``exit_status`` is 0 until its start fails."""

    @property
    def exit_status(self) -> int:
        """The process's exit status: 0, or 1 after a failed start."""


def exit_with_status(top: HasExitStatus) -> None:
    """Make this process exit with ``top.exit_status`` when it is not 0 (twistd and the ``.tac``).

    twistd returns 0 whenever its reactor stops. This registers an ``atexit``
    handler, which runs after twistd has finished (services stopped, PID file
    removed, log closed): after a failed start it flushes the standard streams
    and ends the process with the status; after a clean run it does nothing.
    It also keeps Python from printing a traceback for the ``StartupError`` a
    daemonising twistd re-raises (see ``raise_early_failure``).
    """
    previous_hook = sys.excepthook

    def quiet_startup_error(kind, value, tb) -> None:
        # A daemonising twistd re-raises what startService raised (raise_early_failure);
        # the service already logged it as one line, so no traceback follows it.
        if not (top.exit_status and isinstance(value, preflight.StartupError)):
            previous_hook(kind, value, tb)

    sys.excepthook = quiet_startup_error

    def leave() -> None:
        if top.exit_status:
            for stream in (sys.stdout, sys.stderr):
                try:
                    stream.flush()
                except (OSError, ValueError):
                    pass
            os._exit(top.exit_status)

    atexit.register(leave)


def stop_reactor_after_failed_start(reactor: Any) -> None:
    """Stop ``reactor`` after a failed start: now if it runs, or as soon as it does.

    A stop already under way (SIGTERM arrived during start-up, and the start failed because the
    services were being stopped) is left to finish: ``stop()`` a second time would raise
    ``ReactorNotRunning`` from the failure handler, a traceback in the log for an ordinary stop.
    """
    if getattr(reactor, "running", False):
        try:
            reactor.stop()
        except ReactorNotRunning:
            pass
    elif hasattr(reactor, "callWhenRunning"):  # failed before the reactor runs (twistd starts services first)
        reactor.callWhenRunning(reactor.stop)
