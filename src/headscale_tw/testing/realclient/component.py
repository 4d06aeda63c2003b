# -*- test-case-name: tests.realclient.test_component -*-
"""
Any other program a test needs next to the server and the clients, in the namespace.

A front proxy (nginx), an OpenID provider or a headless browser is a
:class:`Component`: an argv started with :meth:`Namespace.spawn` (so it runs in
the private loopback-only namespace, gets ``PR_SET_PDEATHSIG`` and is stopped
by PID, SIGTERM then SIGKILL, when the namespace closes), a readiness check
polled with a bounded wait (failing at once, with the log tail, if the program
exits), and :meth:`Component.stop` for tests that stop it early::

    proxy = self.start_component("nginx", ["/usr/sbin/nginx", ...],
                                 ready=http_ready(self.namespace, "http://127.0.0.1:8000/", {301}))
    ...
    proxy.stop()

Readiness checks are plain callables returning something truthy when ready;
:func:`http_ready` is the common one (any answer, or one of some statuses,
from a URL inside the namespace).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence

from headscale_tw.testing.realclient._process import HarnessError, ManagedProcess, wait_for
from headscale_tw.testing.realclient.namespace import Namespace

__all__ = ["Component", "http_ready"]


def http_ready(namespace: Namespace, url: str, statuses: Collection[int] | None = None,
               timeout: float = 2.0) -> Callable[[], bool]:
    """A readiness check: ``url`` answers inside the namespace (with one of ``statuses``, if given)."""

    def ready() -> bool:
        result = namespace.http_get(url, timeout)
        if result.status is None:
            return False
        return statuses is None or result.status in statuses

    return ready


class Component:
    """One program in the test's namespace: started, waited for, stopped by PID."""

    def __init__(self, namespace: Namespace, name: str, argv: Sequence[str], *,
                 ready: Callable[[], object] | None = None, env: Mapping[str, str] | None = None,
                 cwd: str | None = None, log_path: str | None = None) -> None:
        self.namespace = namespace
        self.name = name
        self.argv = list(argv)
        self.ready = ready
        self.env = namespace.env(env)
        self.cwd = cwd
        self.log_path = log_path
        self.process: ManagedProcess | None = None

    @property
    def pid(self) -> int:
        """The program's PID (``nsenter`` execs it in place)."""
        if self.process is None:
            raise HarnessError(f"{self.name} has not been started")
        return self.process.pid

    def start(self, timeout: float = 30.0) -> Component:
        """Spawn the program and wait until its readiness check passes (or it exits: then fail)."""
        if self.process is not None:
            raise HarnessError(f"{self.name} already started")
        process = self.process = self.namespace.spawn(self.name, self.argv, env=self.env,
                                                      log_path=self.log_path, cwd=self.cwd)
        ready = self.ready

        def started() -> object:
            process.check_running()
            return True if ready is None else ready()

        wait_for(started, timeout, f"{self.name} to be ready", interval=0.1, details=self.describe)
        return self

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM the program's PID (SIGKILL after ``timeout``); return its exit status."""
        return self.process.stop(timeout) if self.process is not None else None

    def describe(self, lines: int = 40) -> str:
        """State and log tail, for assertion messages."""
        return self.process.describe(lines) if self.process is not None else f"--- {self.name}: not started"
