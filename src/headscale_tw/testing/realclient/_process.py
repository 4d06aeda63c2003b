# -*- test-case-name: tests.realclient.test_namespace -*-
"""
Child processes we start and may stop, and bounded polling.

The harness drives real processes from synchronous trial tests, so it uses
``subprocess`` rather than ``reactor.spawnProcess``: trial's reactor is not
running inside a synchronous test, and ``subprocess`` children are never reaped
by Twisted's SIGCHLD handler (it reaps only processes Twisted itself spawned).

Every child gets ``PR_SET_PDEATHSIG`` = SIGKILL, so nothing we start can
outlive the test process even if it is killed. Stopping sends SIGTERM to the
child's own PID (never a group, never a name), then SIGKILL after a timeout.
Because we reap our children only through ``Popen``, a PID cannot be reused
while we still hold it unreaped.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

__all__ = [
    "HarnessError",
    "ManagedProcess",
    "WaitTimeout",
    "set_parent_death_signal",
    "tail_file",
    "wait_for",
]

T = TypeVar("T")

_PR_SET_PDEATHSIG = 1


class HarnessError(AssertionError):
    """The real-client harness could not do what a test asked; the message says why.

    An ``AssertionError`` so trial reports it as a test failure, never a skip.
    """


class WaitTimeout(HarnessError):
    """A bounded wait ran out before its condition held."""


def set_parent_death_signal(sig: int = signal.SIGKILL) -> None:
    """Ask the kernel to send ``sig`` to this process when its parent dies (``preexec_fn``)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")


def tail_file(path: str | None, lines: int = 40) -> str:
    """The last ``lines`` lines of a text file, or a note that it is absent."""
    if not path:
        return "(no log file)"
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 64 * 1024))
            data = f.read()
    except OSError as e:
        return f"(cannot read {path}: {e.strerror})"
    text = data.decode("utf-8", "replace").splitlines()
    return "\n".join(text[-lines:]) if text else "(empty)"


def wait_for(
    predicate: Callable[[], T | None],
    timeout: float,
    what: str,
    interval: float = 0.05,
    details: Callable[[], str] | None = None,
) -> T:
    """Poll ``predicate`` until it returns something truthy, at most ``timeout`` seconds.

    Returns that value. On timeout raises :class:`WaitTimeout` naming ``what``
    plus ``details()`` (e.g. a log tail). The predicate may raise
    :class:`HarnessError` to stop waiting early (e.g. the process died).
    """
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            extra = f"\n{details()}" if details is not None else ""
            raise WaitTimeout(f"timed out after {timeout:g}s waiting for {what}{extra}")
        time.sleep(min(interval, remaining))


class ManagedProcess:
    """One child process that we started; output goes to ``log_path``."""

    def __init__(self, name: str, argv: Sequence[str], popen: subprocess.Popen, log_path: str | None) -> None:
        self.name = name
        self.argv = list(argv)
        self.popen = popen
        self.log_path = log_path

    @property
    def pid(self) -> int:
        """The child's PID (the real program: ``nsenter`` execs it in place)."""
        return self.popen.pid

    @property
    def returncode(self) -> int | None:
        """Exit status once reaped, else None."""
        return self.popen.poll()

    def running(self) -> bool:
        """True while the child has not exited."""
        return self.popen.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        """The end of the child's log."""
        return tail_file(self.log_path, lines)

    def describe(self, lines: int = 40) -> str:
        """A paragraph for assertion messages: name, PID, state and log tail."""
        state = "running" if self.running() else f"exited with {self.popen.returncode}"
        return f"--- {self.name} (pid {self.pid}, {state}); log {self.log_path}:\n{self.log_tail(lines)}"

    def check_running(self) -> None:
        """Raise :class:`HarnessError` (with the log tail) if the child has exited."""
        if not self.running():
            raise HarnessError(f"{self.name} exited unexpectedly\n{self.describe()}")

    def kill(self, timeout: float = 10.0) -> int:
        """SIGKILL this child's PID at once (a crash, as ``kill -9``); reap it; return its exit status."""
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(timeout)
        return self.popen.returncode

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM this child's PID, SIGKILL after ``timeout``; reap it; return its exit status."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout)
        if self.popen.stdin is not None:
            self.popen.stdin.close()
        return self.popen.returncode
