# -*- test-case-name: tests.test_supervisor -*-
"""
``twistd headscale`` with ``workers`` > 1: a small supervisor of N worker processes.

The supervisor does the one-time start-up work once (keys created, listeners
bind-tested, the database migrated: :func:`prepare_workers`), then starts
``workers`` copies of the server (``twistd -n headscale --worker-index I``,
see :func:`worker_command`). Each worker reports how its start went on file
descriptor 3 (:data:`STATUS_FD`) in twistd's status format (``0``, or
``1 <reason>``); the supervisor is ready once every worker is, and fails
(exit status 1) if one ends before it ever was. Afterwards a worker that ends
is started again after a delay that doubles up to :attr:`WorkerSupervisor.max_delay`.
SIGHUP is forwarded to every worker; stopping the supervisor (SIGTERM)
sends SIGTERM to each and waits for them, killing any left after
:attr:`WorkerSupervisor.stop_timeout`. Workers ask the kernel for SIGTERM
when the supervisor dies (:func:`die_with_parent`).
"""

from __future__ import annotations

import os
import secrets
import signal
import sys
from collections.abc import Callable, Sequence
from typing import Any

from twisted.application import service
from twisted.internet import defer, error, protocol
from twisted.logger import Logger

from headscale_tw.config.model import Config
from headscale_tw.exit_status import stop_reactor_after_failed_start

__all__ = ["STATUS_FD", "WorkerSupervisor", "die_with_parent", "SupervisorService", "prepare_and_migrate", "prepare_workers",
           "supervisor_service", "worker_command", "worker_observer"]

#: The worker's end of its status pipe.
STATUS_FD = 3


def worker_command(config_path: str | None, index: int) -> list[str]:
    """The command line of worker ``index``: this Python running ``twistd -n headscale --worker-index``."""
    args = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
            "--nodaemon", "--pidfile=", "headscale", "--worker-index", str(index)]
    if config_path:
        args[-2:-2] = ["--config", os.path.abspath(config_path)]
    return args


def prepare_workers(config: Config) -> list[str]:
    """The start-up work done once before any worker starts; returns what was checked.

    Creates the Noise and DERP keys and the shared DERP mesh key when missing
    (so that workers do not race to create them) and bind-tests the listeners.
    The database is migrated by :meth:`WorkerSupervisor._migrate`.

    :raises headscale_tw.preflight.StartupError: naming what is wrong.
    """
    from headscale_tw import preflight
    from headscale_tw.keyfile import KeyFileError, read_key_file
    from headscale_tw.workers import mesh_key_path, worker_config

    preflight.check_policy(config)
    preflight.check_tls(config)
    preflight.check_dns_provider(config)
    preflight.noise_key(config, create=True)
    if config.derp.server.enabled:
        path = mesh_key_path(config)
        try:
            read_key_file(path, "DERP mesh key file", create=lambda: secrets.token_hex(32) + "\n")
        except KeyFileError as e:
            raise preflight.StartupError(f"derp.server.mesh_key_path: {e}") from e
    notes = [preflight.check_derp_keys(worker_config(config, index), create=True) for index in range(config.workers)]
    notes.append(preflight.check_database(config))
    notes.extend(preflight.check_bindable(config))
    return notes


async def prepare_and_migrate(config: Config, reactor: Any) -> Any:
    """Take the supervisor's lock, :func:`prepare_workers`, then open the database once (which migrates it).

    Returns the lock (``<unix_socket>.supervisor.lock``), held until the supervisor stops: a second
    supervisor of the same configuration stops here, before its workers could bind the shared ports
    (``SO_REUSEPORT`` lets any process of this user join them).
    """
    from dataclasses import replace

    from headscale_tw import preflight
    from headscale_tw.storage.database import open_database

    lock = preflight.socket_lock(replace(config, unix_socket=f"{config.unix_socket}.supervisor")
                                 if config.unix_socket else config)
    try:
        prepare_workers(config)
        try:
            db = await open_database(config.database, reactor)
        except Exception as e:
            raise preflight.StartupError(f"database ({preflight.describe_database(config)}): "
                                         f"{preflight.one_line(e)}") from e
        await db.close()
    except BaseException:
        if lock is not None:
            lock.release()
        raise
    return lock


def die_with_parent() -> None:
    """Linux: have the kernel send this process SIGTERM when its parent (the supervisor) ends.

    If the parent already ended before this call, SIGTERM is sent at once.
    """
    import ctypes

    parent = os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_pdeathsig = 1
    if libc.prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if parent == 1 or os.getppid() != parent:
        os.kill(os.getpid(), signal.SIGTERM)


class _WorkerProcess(protocol.ProcessProtocol):
    """One worker's process: its status pipe and its end."""

    def __init__(self, supervisor: WorkerSupervisor, index: int) -> None:
        self.supervisor = supervisor
        self.index = index
        self.status = b""
        self.ready = False
        self.ended: defer.Deferred = defer.Deferred()

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        if childFD != STATUS_FD or self.ready:
            return
        self.status += data[:200]
        if self.status.startswith(b"0"):
            self.ready = True
            self.supervisor.worker_ready(self.index)

    def processEnded(self, reason: Any) -> None:
        code = getattr(reason.value, "exitCode", None)
        failure = self.status[2:].decode("ascii", "replace") if self.status.startswith(b"1") else ""
        if not failure and getattr(reason.value, "signal", None):
            failure = f"signal {reason.value.signal}"
        self.supervisor.worker_ended(self.index, code, failure)
        self.ended.callback(code)


class WorkerSupervisor(service.Service):
    """Starts, watches and stops ``config.workers`` worker processes.

    :param spawn: ``spawn(process_protocol, args)`` starts a process
        (``None``: :meth:`spawn_with_reactor`; a fake in tests).
    :param command: ``command(index)`` is worker ``index``'s command line (:func:`worker_command`).
    :param prepare: the one-time start-up work, awaited before any worker starts.
    :param report: called once with ``None`` when every worker serves, or the reason the start failed.
    """

    log = Logger()

    restart_delay = 1.0
    max_delay = 30.0
    stop_timeout = 15.0

    def __init__(self, count: int, reactor: Any, spawn: Callable[[_WorkerProcess, Sequence[str]], Any] | None,
                 command: Callable[[int], list[str]], prepare: Callable[[], Any] = lambda: None,
                 report: Callable[[str | None], Any] = lambda failure: None) -> None:
        self.count = count
        self.reactor = reactor
        self._spawn = spawn
        self._command = command
        self._prepare = prepare
        self._report: Callable[[str | None], Any] | None = report
        self.processes: dict[int, _WorkerProcess] = {}
        self.transports: dict[int, Any] = {}
        self.starts: dict[int, int] = {}
        self._delays: dict[int, float] = {}
        self._timers: dict[int, Any] = {}
        self._stopping = False
        self._lock: Any = None
        self.serving = False
        self.exit_status = 0

    def startService(self) -> None:
        """Do the one-time work, then start every worker."""
        super().startService()
        d = defer.maybeDeferred(self._prepare)
        d.addCallback(self._start_all)
        d.addErrback(lambda f: self._fail(f"start-up: {f.getErrorMessage()}"))

    def _start_all(self, lock: object) -> None:
        self._lock = lock  # what prepare returned: released once every worker has stopped
        for index in range(self.count):
            self._start(index)

    def _start(self, index: int) -> None:
        self._timers.pop(index, None)
        if self._stopping:
            return
        process = _WorkerProcess(self, index)
        self.processes[index] = process
        self.starts[index] = self.starts.get(index, 0) + 1
        spawn = self._spawn or self.spawn_with_reactor
        self.transports[index] = spawn(process, self._command(index))

    def worker_ready(self, index: int) -> None:
        """Worker ``index`` serves; once all do, the supervisor reports ready."""
        self._delays.pop(index, None)
        self.log.info("worker {index} serving", index=index)
        if not self.serving and all(p.ready for p in self.processes.values()) and len(self.processes) == self.count:
            self.serving = True
            self.log.info("headscale-tw serving with {count} workers", count=self.count)
            self._tell(None)

    def worker_ended(self, index: int, code: int | None, failure: str) -> None:
        """Worker ``index`` ended: restart it, or fail the start if it never served before all did."""
        process = self.processes.pop(index, None)
        self.transports.pop(index, None)
        if self._stopping:
            return
        why = failure or f"exit status {code}"
        if not self.serving:
            self._fail(f"worker {index} did not start: {why}")
            return
        delay = self._delays.get(index, self.restart_delay) if process is not None and not process.ready \
            else self.restart_delay
        self._delays[index] = min(delay * 2, self.max_delay)
        self.log.warn("worker {index} ended ({why}); starting it again in {delay}s", index=index, why=why,
                      delay=delay)
        self._timers[index] = self.reactor.callLater(delay, self._start, index)

    def _tell(self, failure: str | None) -> None:
        report, self._report = self._report, None
        if report is not None:
            report(failure)

    def _fail(self, why: str) -> None:
        if self.exit_status:
            return
        self.exit_status = 1
        self.log.critical("headscale-tw could not start: {why}", why=why)
        self._tell(why)
        d = defer.maybeDeferred(self.stopService)
        d.addBoth(self._stop_reactor)

    def _stop_reactor(self, _: object) -> None:
        stop_reactor_after_failed_start(self.reactor)

    def reload(self) -> None:
        """SIGHUP: every worker reloads."""
        self._signal_all("HUP")

    def _signal_all(self, name: str) -> None:
        for transport in list(self.transports.values()):
            try:
                transport.signalProcess(name)
            except error.ProcessExitedAlready:
                pass

    def stopService(self) -> defer.Deferred:
        """SIGTERM to every worker; fires once all have ended (SIGKILL after :attr:`stop_timeout`)."""
        super().stopService()
        self._stopping = True
        self._tell("stopped before every worker had started")
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        ended = [p.ended for p in self.processes.values()]
        self._signal_all("TERM")
        if not ended:
            self._release()
            return defer.succeed(None)
        kill = self.reactor.callLater(self.stop_timeout, self._signal_all, "KILL")
        done = defer.DeferredList(ended)
        done.addBoth(lambda _: kill.cancel() if kill.active() else None)
        done.addBoth(lambda _: self._release())
        return done

    def _release(self) -> None:
        lock, self._lock = self._lock, None
        if lock is not None and hasattr(lock, "release"):
            lock.release()

    def spawn_with_reactor(self, process: _WorkerProcess, args: Sequence[str]) -> Any:
        """Start a worker with ``reactor.spawnProcess``: stdout and stderr shared, fd 3 its status pipe."""
        return self.reactor.spawnProcess(process, args[0], list(args), env=os.environ.copy(),
                                         childFDs={0: "w", 1: 1, 2: 2, STATUS_FD: "r"})


class SupervisorService(service.MultiService):
    """The top service of ``twistd headscale`` with ``workers`` > 1: the log observer, status pipe and SIGHUP.

    ``exit_status`` is that of the :class:`WorkerSupervisor` (1 after a failed start), for
    :func:`~headscale_tw.exit_status.exit_with_status`.
    """

    def __init__(self, supervisor: WorkerSupervisor, log_observer: Any = None) -> None:
        super().__init__()
        self.supervisor = supervisor
        self._log_observer = log_observer
        supervisor.setServiceParent(self)

    @property
    def exit_status(self) -> int:
        """0, or 1 once the start failed."""
        return self.supervisor.exit_status

    def setServiceParent(self, parent: Any) -> None:
        """Join ``parent``, giving a twistd ``Application`` without one our ``ILogObserver``."""
        from twisted.logger import ILogObserver
        from twisted.python.components import Componentized

        if (self._log_observer is not None and isinstance(parent, Componentized)
                and parent.getComponent(ILogObserver, None) is None):
            parent.setComponent(ILogObserver, self._log_observer)
        super().setServiceParent(parent)

    def startService(self) -> None:
        """Start the supervisor; once the reactor runs, SIGHUP reloads every worker."""
        super().startService()
        reactor = self.supervisor.reactor
        if hasattr(reactor, "callWhenRunning"):
            reactor.callWhenRunning(self._install_sighup)

    def _install_sighup(self) -> None:
        reactor = self.supervisor.reactor
        try:
            signal.signal(signal.SIGHUP, lambda *_: reactor.callFromThread(self.supervisor.reload))
        except ValueError:  # not the main thread
            pass


def supervisor_service(config: Config, reactor: Any, log_observer: Any = None,
                       twistd_options: Any = None) -> SupervisorService:
    """Build ``twistd headscale``'s top service for ``config.workers`` > 1."""
    from headscale_tw._twisted_private import claim_daemon_status_pipe, report_daemon_status

    pipe = claim_daemon_status_pipe(twistd_options)

    def report(failure: str | None) -> None:
        if pipe is not None:
            report_daemon_status(pipe, None if failure is None else f"headscale_tw.preflight.StartupError: {failure}")

    supervisor = WorkerSupervisor(config.workers, reactor, None,
                                  lambda index: worker_command(config.source_path, index),
                                  prepare=lambda: defer.Deferred.fromCoroutine(prepare_and_migrate(config, reactor)),
                                  report=report)
    return SupervisorService(supervisor, log_observer)


def worker_observer(observer: Any, index: int) -> Any:
    """``observer`` with ``[worker N]`` in front of every line this worker logs."""
    prefix = f"[worker {index}] "

    def emit(event: dict) -> None:
        text = event.get("log_format")
        if isinstance(text, str):
            event = {**event, "log_format": prefix + text}
        observer(event)

    return emit
