# -*- test-case-name: tests.test_supervisor -*-
"""Tests for :mod:`headscale_tw.supervisor`: starting, watching and stopping workers, with fake processes."""

from __future__ import annotations

from typing import Any

from twisted.internet import error
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial import unittest

from headscale_tw.supervisor import STATUS_FD, WorkerSupervisor, worker_command

__all__ = ["SupervisorTests", "WorkerCommandTests"]


class _FakeTransport:
    """Records the signals sent to one fake worker."""

    def __init__(self) -> None:
        self.signals: list[str] = []

    def signalProcess(self, name: str) -> None:
        self.signals.append(name)


class _Reactor(Clock):
    """A clock that can be stopped, and counts it."""

    running = True

    def __init__(self) -> None:
        super().__init__()
        self.stops = 0

    def stop(self) -> None:
        self.stops += 1


class SupervisorTests(unittest.TestCase):
    """The supervisor's start, readiness, restarts, signals and stop, driven through fake processes."""

    def setUp(self) -> None:
        self.reactor = _Reactor()
        self.spawned: list[tuple[Any, list[str], _FakeTransport]] = []
        self.reports: list[str | None] = []
        self.supervisor = WorkerSupervisor(2, self.reactor, self.spawn, lambda index: ["worker", str(index)],
                                           report=self.reports.append)

    def spawn(self, process: Any, args: list[str]) -> _FakeTransport:
        transport = _FakeTransport()
        self.spawned.append((process, args, transport))
        return transport

    def end(self, process: Any, code: int | None = 1, signal: int | None = None) -> None:
        process.processEnded(Failure(error.ProcessTerminated(exitCode=code, signal=signal)))

    def test_ready_only_when_every_worker_serves(self) -> None:
        """Both workers start at once; the supervisor reports ready after the second reports ``0``."""
        self.supervisor.startService()
        self.assertEqual([args for _, args, _ in self.spawned], [["worker", "0"], ["worker", "1"]])
        self.spawned[0][0].childDataReceived(STATUS_FD, b"0")
        self.assertEqual(self.reports, [])
        self.spawned[1][0].childDataReceived(STATUS_FD, b"0")
        self.assertEqual(self.reports, [None])
        self.assertTrue(self.supervisor.serving)

    def test_worker_failing_to_start_fails_all(self) -> None:
        """A worker that ends before all serve fails the start: exit status 1, its reason reported, reactor stopped,
        the other worker told to stop."""
        self.supervisor.startService()
        first, second = self.spawned[0][0], self.spawned[1][0]
        second.childDataReceived(STATUS_FD, b"1 listen_addr: cannot listen")
        self.end(second)
        self.assertEqual(self.supervisor.exit_status, 1)
        [report] = self.reports
        self.assertIn("worker 1 did not start: listen_addr: cannot listen", report)
        self.assertEqual(self.spawned[0][2].signals, ["TERM"])
        self.end(first, code=0)
        self.assertEqual(self.reactor.stops, 1)
        self.assertEqual(len(self.spawned), 2)  # nothing restarted

    def test_failed_preparation_fails(self) -> None:
        """An error in the one-time start-up work starts no worker and exits 1 naming it."""
        def prepare() -> None:
            raise ValueError("database: refused")

        supervisor = WorkerSupervisor(2, self.reactor, self.spawn, lambda index: [], prepare=prepare,
                                      report=self.reports.append)
        supervisor.startService()
        self.assertEqual((self.spawned, supervisor.exit_status), ([], 1))
        self.assertIn("database: refused", self.reports[0] or "")

    def test_dead_worker_restarted_with_backoff(self) -> None:
        """After the start a worker that dies is started again after 1 s, then 2 s if it dies before serving."""
        self.supervisor.startService()
        for process, _, _ in self.spawned:
            process.childDataReceived(STATUS_FD, b"0")
        self.end(self.spawned[1][0], code=None, signal=9)
        self.assertEqual(len(self.spawned), 2)
        self.reactor.advance(1.0)
        self.assertEqual(self.spawned[2][1], ["worker", "1"])
        self.end(self.spawned[2][0])  # died again before serving
        self.reactor.advance(1.9)
        self.assertEqual(len(self.spawned), 3)
        self.reactor.advance(0.1)
        self.assertEqual(len(self.spawned), 4)
        self.spawned[3][0].childDataReceived(STATUS_FD, b"0")
        self.assertEqual(self.supervisor.exit_status, 0)
        self.assertEqual(self.supervisor.starts, {0: 1, 1: 3})

    def test_lock_held_until_workers_stopped(self) -> None:
        """What the one-time work returned (the supervisor's lock) is released once every worker ended."""
        class Lock:
            released = 0

            def release(self) -> None:
                self.released += 1

        lock = Lock()
        supervisor = WorkerSupervisor(1, self.reactor, self.spawn, lambda index: [], prepare=lambda: lock)
        supervisor.startService()
        d = supervisor.stopService()
        self.assertEqual(lock.released, 0)
        self.end(self.spawned[0][0], code=0)
        self.successResultOf(d)
        self.assertEqual(lock.released, 1)

    def test_reload_forwarded(self) -> None:
        """``reload`` (SIGHUP) sends SIGHUP to every running worker."""
        self.supervisor.startService()
        self.supervisor.reload()
        self.assertEqual([t.signals for _, _, t in self.spawned], [["HUP"], ["HUP"]])

    def test_stop_terminates_then_kills(self) -> None:
        """Stopping sends SIGTERM, SIGKILL to those left after the timeout, and fires once all ended;
        a pending restart is cancelled."""
        self.supervisor.startService()
        for process, _, _ in self.spawned:
            process.childDataReceived(STATUS_FD, b"0")
        self.end(self.spawned[0][0])  # restart pending
        d = self.supervisor.stopService()
        self.assertEqual(self.spawned[1][2].signals, ["TERM"])
        self.assertNoResult(d)
        self.reactor.advance(self.supervisor.stop_timeout)
        self.assertEqual(self.spawned[1][2].signals, ["TERM", "KILL"])
        self.end(self.spawned[1][0], code=None, signal=9)
        self.successResultOf(d)
        self.assertEqual(len(self.spawned), 2)
        self.assertEqual(self.reactor.getDelayedCalls(), [])


class WorkerCommandTests(unittest.TestCase):
    """The worker's command line."""

    def test_command(self) -> None:
        """Workers run twistd in the foreground without a PID file, with the config path made absolute."""
        args = worker_command("conf.yaml", 3)
        self.assertIn("--nodaemon", args)
        self.assertIn("--pidfile=", args)
        self.assertEqual(args[-5:], ["headscale", "--config", args[-3], "--worker-index", "3"])
        self.assertTrue(args[-3].endswith("/conf.yaml") and args[-3].startswith("/"))
