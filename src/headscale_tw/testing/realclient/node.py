# -*- test-case-name: tests.realclient.test_node -*-
"""
One official ``tailscaled`` inside a :class:`~.namespace.Namespace`, driven by its CLI.

``tailscaled`` always runs with ``--tun=userspace-networking --no-logs-no-support``,
its own ``--statedir``, ``--socket`` and ``--port``, and an environment that
keeps it off Tailscale's servers (``TS_NO_LOGS_NO_SUPPORT``,
``TS_PANIC_IF_HIT_MAIN_CONTROL``, ``TS_DISABLE_PORTMAPPER``) and makes it talk
to control without a "real" network (``TS_ASSUME_NETWORK_UP_FOR_TEST``). The
CLI runs inside the namespace too (``tailscale netcheck`` dials out itself).

Failures raise :class:`~._process.HarnessError` carrying the command, its output
and the tail of ``tailscaled``'s log.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Mapping, Sequence
from typing import Any

from headscale_tw.testing.realclient._process import HarnessError, ManagedProcess, wait_for
from headscale_tw.testing.realclient.fetch import ClientBinaries
from headscale_tw.testing.realclient.namespace import Namespace

__all__ = ["TailscaleNode", "tailscale_version", "tailscaled_env"]


def tailscaled_env(logs_dir: str, ssl_cert_file: str | None = None, always_use_derp: bool = False,
                   debug: bool = False, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The ``TS_*`` variables every harness ``tailscaled`` gets (see the module docstring)."""
    env = {
        "TS_NO_LOGS_NO_SUPPORT": "true",
        "TS_ASSUME_NETWORK_UP_FOR_TEST": "1",
        "TS_LOGS_DIR": logs_dir,
        "TS_DISABLE_PORTMAPPER": "1",
        "TS_PANIC_IF_HIT_MAIN_CONTROL": "1",
    }
    if ssl_cert_file:
        env["SSL_CERT_FILE"] = ssl_cert_file
    if always_use_derp:
        env["TS_DEBUG_ALWAYS_USE_DERP"] = "1"
    if debug:
        env["TS_DEBUG_REGISTER"] = "1"
        env["TS_DEBUG_MAP"] = "1"
    env.update(extra or {})
    return env


def tailscale_version(namespace: Namespace, binaries: ClientBinaries, daemon: bool = False) -> str:
    """The version a binary reports (first line of ``tailscale version`` / ``tailscaled --version``)."""
    argv = [binaries.tailscaled, "--version"] if daemon else [binaries.tailscale, "version"]
    proc = namespace.run(argv, timeout=15)
    if proc.returncode != 0 or not proc.stdout.strip():
        raise HarnessError(f"{argv} exited {proc.returncode}: {proc.stdout[-500:]} {proc.stderr[-500:]}")
    return proc.stdout.strip().splitlines()[0].strip()


class TailscaleNode:
    """A ``tailscaled`` in a namespace; call :meth:`start`, then :meth:`up` and friends."""

    def __init__(self, namespace: Namespace, binaries: ClientBinaries, name: str, *,
                 port: int | None = None, ssl_cert_file: str | None = None,
                 always_use_derp: bool = False, debug: bool | None = None,
                 extra_env: Mapping[str, str] | None = None,
                 extra_args: Sequence[str] = ()) -> None:
        """``debug`` (default: ``$HEADSCALE_TW_TS_DEBUG`` set) adds TS_DEBUG_REGISTER/MAP dumps to the log."""
        if namespace.runtime_dir is None or namespace.log_dir is None:
            raise HarnessError("start the namespace before creating nodes in it")
        self.namespace = namespace
        self.binaries = binaries
        self.name = name
        self.port = port if port is not None else namespace.allocate_port()
        self.state_dir = os.path.join(namespace.runtime_dir, f"ts-{name}")
        self.socket = os.path.join(self.state_dir, "sock")
        self.log_path = os.path.join(namespace.log_dir, f"tailscaled-{name}.log")
        if debug is None:
            debug = bool(os.environ.get("HEADSCALE_TW_TS_DEBUG"))
        self.env = namespace.env(tailscaled_env(
            os.path.join(self.state_dir, "logs"), ssl_cert_file, always_use_derp, debug, extra_env))
        self.extra_args = list(extra_args)
        self.process: ManagedProcess | None = None

    # -- daemon ----------------------------------------------------------

    def start(self, timeout: float = 15.0) -> TailscaleNode:
        """Start ``tailscaled`` and wait until its socket answers ``status --json``."""
        if self.process is not None:
            raise HarnessError(f"tailscaled {self.name} already started")
        os.makedirs(os.path.join(self.state_dir, "logs"), exist_ok=True)
        argv = [
            self.binaries.tailscaled,
            "--tun=userspace-networking",
            "--no-logs-no-support",
            f"--statedir={self.state_dir}",
            f"--socket={self.socket}",
            f"--port={self.port}",
            *self.extra_args,
        ]
        self.process = process = self.namespace.spawn(f"tailscaled-{self.name}", argv, env=self.env,
                                                      log_path=self.log_path)

        def answers() -> dict[str, Any] | None:
            process.check_running()
            if not os.path.exists(self.socket):
                return None
            proc = self._cli(["status", "--json"], timeout=10)
            if proc.returncode != 0:
                return None
            try:
                status = json.loads(proc.stdout)
            except ValueError:
                return None
            return status if status.get("BackendState") else None

        wait_for(answers, timeout, f"tailscaled {self.name} to answer on {self.socket}", details=self.describe)
        return self

    def stop(self, timeout: float = 10.0) -> int | None:
        """Stop ``tailscaled`` (SIGTERM, then SIGKILL after ``timeout``); return its exit status."""
        if self.process is None:
            return None
        return self.process.stop(timeout)

    @property
    def pid(self) -> int:
        """PID of the running ``tailscaled``."""
        if self.process is None:
            raise HarnessError(f"tailscaled {self.name} was never started")
        return self.process.pid

    def log_tail(self, lines: int = 40) -> str:
        """The end of ``tailscaled``'s log."""
        return self.process.log_tail(lines) if self.process else "(not started)"

    def describe(self, lines: int = 40) -> str:
        """State and log tail, for assertion messages."""
        return self.process.describe(lines) if self.process else f"--- tailscaled {self.name}: not started"

    # -- CLI -------------------------------------------------------------

    def _cli(self, args: Sequence[str], timeout: float) -> subprocess.CompletedProcess:
        argv = [self.binaries.tailscale, f"--socket={self.socket}", *args]
        return self.namespace.run(argv, env=self.env, timeout=timeout)

    def cli(self, *args: str, timeout: float = 30.0, check: bool = True) -> subprocess.CompletedProcess:
        """Run ``tailscale --socket=S ARGS`` in the namespace; with ``check``, a non-zero exit raises."""
        proc = self._cli(args, timeout)
        if check and proc.returncode != 0:
            raise HarnessError(
                f"`tailscale {' '.join(args)}` on {self.name} exited {proc.returncode}\n"
                f"stdout: {proc.stdout[-2000:]}\nstderr: {proc.stderr[-2000:]}\n{self.describe()}"
            )
        return proc

    def up(self, login_server: str, authkey: str | None = None, hostname: str | None = None,
           timeout: float = 30.0, extra_args: Sequence[str] = (), check: bool = True) -> subprocess.CompletedProcess:
        """``tailscale up --login-server=URL [--authkey=K] --hostname=H --timeout=Ns``."""
        args = [f"--login-server={login_server}", f"--hostname={hostname or self.name}",
                f"--timeout={int(timeout)}s"]
        if authkey is not None:
            args.append(f"--authkey={authkey}")
        return self.cli("up", *args, *extra_args, timeout=timeout + 15, check=check)

    def status_json(self, peers: bool = True) -> dict[str, Any]:
        """``tailscale status --json`` parsed."""
        args = ["status", "--json"] + ([] if peers else ["--peers=false"])
        proc = self.cli(*args, timeout=15)
        try:
            return json.loads(proc.stdout)
        except ValueError as e:
            raise HarnessError(f"status --json on {self.name} is not JSON ({e}): {proc.stdout[:500]!r}")

    def backend_state(self) -> str:
        """The ``BackendState`` field (``NeedsLogin``, ``Running``, ...)."""
        return self.status_json(peers=False).get("BackendState", "")

    def wait_for_state(self, state: str, timeout: float = 30.0) -> dict[str, Any]:
        """Poll ``status --json`` until ``BackendState == state``; return that status."""
        process = self.process
        if process is None:
            raise HarnessError(f"{self.name} is not started")

        def reached() -> dict[str, Any] | None:
            process.check_running()
            status = self.status_json(peers=False)
            return status if status.get("BackendState") == state else None

        return wait_for(reached, timeout, f"{self.name} to reach BackendState {state}", interval=0.2,
                        details=self.describe)

    def ip(self, family: int = 4) -> str:
        """This node's tailnet address (``tailscale ip -4`` or ``-6``)."""
        proc = self.cli("ip", f"-{family}", timeout=15)
        return proc.stdout.strip().splitlines()[0]

    def ping(self, peer: str, count: int = 3, timeout: float = 20.0, kind: str | None = None,
             check: bool = True) -> subprocess.CompletedProcess:
        """``tailscale ping --c COUNT [--tsmp|--icmp] PEER``; the output says ``via DERP(...)`` or an endpoint."""
        args = ["ping", f"--c={count}"]
        if kind:
            args.append(f"--{kind}")
        args.append(peer)
        return self.cli(*args, timeout=timeout + 10, check=check)

    def logout(self, timeout: float = 20.0) -> subprocess.CompletedProcess:
        """``tailscale logout``."""
        return self.cli("logout", timeout=timeout)

    def version(self) -> str:
        """The first line of ``tailscale version`` (e.g. ``1.96.4``)."""
        return self.cli("version", timeout=15).stdout.strip().splitlines()[0]
