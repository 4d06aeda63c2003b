# -*- test-case-name: tests.realclient.test_server -*-
"""
The server under test, ``twistd -n headscale -c CONFIG``, as a child process in a namespace.

It runs with the current interpreter (``sys.executable``) and a ``PYTHONPATH``
holding this checkout's ``src`` and top level (where ``twisted/plugins`` lives),
in a working folder under the namespace's short runtime folder, so relative
paths in the config (``./var/...``) and unix sockets land there.

The URLs and paths are read from the config through the project's own
``parse_config``, so the harness and the server agree on them.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping, Sequence

import headscale_tw
from headscale_tw.config.loader import parse_config
from headscale_tw.config.model import Config
from headscale_tw.hostport import parse_hostport
from headscale_tw.testing.realclient._process import HarnessError, ManagedProcess, wait_for
from headscale_tw.testing.realclient.namespace import HttpResult, Namespace

__all__ = ["HeadscaleServer", "health_url", "installed_headscale", "source_pythonpath"]

_TWISTD = "from twisted.scripts.twistd import run; run()"


def source_pythonpath() -> list[str]:
    """The folders to put on ``PYTHONPATH``: ``src`` and, in a checkout, its top level."""
    src = os.path.dirname(os.path.dirname(os.path.abspath(headscale_tw.__file__)))
    paths = [src]
    top = os.path.dirname(src)
    if os.path.exists(os.path.join(top, "twisted", "plugins", "headscale_tw_plugin.py")):
        paths.append(top)
    return paths


def installed_headscale() -> str:
    """The ``headscale`` console script installed next to this interpreter (the venv's ``bin``)."""
    path = os.path.join(os.path.dirname(sys.executable), "headscale")
    if not os.access(path, os.X_OK):
        raise HarnessError(f"{path} is not installed: pip install -e . in this virtualenv")
    return path


def health_url(listen_addr: str, tls: bool = False) -> str:
    """``http(s)://HOST:PORT/health`` for a ``host:port`` listen address (wildcards become loopback)."""
    host, port = parse_hostport(listen_addr)
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    scheme = "https" if tls else "http"
    return f"{scheme}://{host}:{port}/health"


class HeadscaleServer:
    """``twistd -n headscale`` in a namespace; :meth:`start` waits for ``/health``.

    With ``launcher`` (e.g. ``[".../bin/headscale"]``, the installed console
    script) the server is started as ``LAUNCHER -c CONFIG serve`` instead, as an
    operator's service manager runs it.
    """

    def __init__(self, namespace: Namespace, config_yaml: str, name: str = "server",
                 python: str | None = None, extra_env: Mapping[str, str] | None = None,
                 launcher: Sequence[str] | None = None) -> None:
        if namespace.runtime_dir is None:
            raise HarnessError("start the namespace before creating a server in it")
        self.namespace = namespace
        self.name = name
        self.python = python or sys.executable
        self.launcher = list(launcher) if launcher is not None else None
        self.directory = os.path.join(namespace.runtime_dir, name)
        os.makedirs(os.path.join(self.directory, "var"), exist_ok=True)
        self.config_path = os.path.join(self.directory, "config.yaml")
        with open(self.config_path, "w") as f:
            f.write(config_yaml)
        self.config: Config = parse_config(config_yaml, environ={})
        assert namespace.log_dir is not None  # start() sets it with runtime_dir
        self.log_path = os.path.join(namespace.log_dir, f"{name}.log")
        pythonpath = os.pathsep.join(source_pythonpath())
        self.env = namespace.env({"PYTHONPATH": pythonpath, "PYTHONUNBUFFERED": "1", **(extra_env or {})})
        self.process: ManagedProcess | None = None

    @property
    def url(self) -> str:
        """The ``server_url`` clients use as ``--login-server``."""
        return self.config.server_url

    @property
    def health_url(self) -> str:
        """Where ``/health`` answers inside the namespace."""
        return health_url(self.config.listen_addr, tls=self.config.tls.enabled)

    @property
    def unix_socket(self) -> str:
        """Absolute path of the server's unix socket (reachable from outside the namespace)."""
        return os.path.join(self.directory, self.config.unix_socket)

    def start(self, timeout: float = 30.0) -> HeadscaleServer:
        """Start the server and poll ``/health`` from inside the namespace until it answers 200."""
        if self.process is not None:
            raise HarnessError(f"{self.name} already started")
        if self.launcher is not None:
            argv = [*self.launcher, "-c", self.config_path, "serve"]
        else:
            argv = self.argv("twistd")
        self.process = process = self.namespace.spawn(self.name, argv, env=self.env, log_path=self.log_path,
                                                      cwd=self.directory)

        def healthy() -> HttpResult | None:
            process.check_running()
            result = self.namespace.http_get(self.health_url, timeout=2.0)
            return result if result.status == 200 else None

        wait_for(healthy, timeout, f"{self.name} to answer 200 on {self.health_url}", interval=0.1,
                 details=self.describe)
        return self

    def argv(self, entry: str = "twistd") -> list[str]:
        """The command line of one entry point: ``twistd`` (``twistd -n headscale``), ``serve``
        (``headscale serve``) or ``tac`` (``twistd -ny etc/headscale.tac``, config from ``HEADSCALE_CONFIG``)."""
        if entry == "twistd":
            return [self.python, "-c", _TWISTD, "--nodaemon", "--pidfile=", "headscale", "-c", self.config_path]
        if entry == "serve":
            return [self.python, "-m", "headscale_tw.cli.main", "serve", "-c", self.config_path]
        if entry == "tac":
            tac = os.path.join(source_pythonpath()[-1], "etc", "headscale.tac")
            return [self.python, "-c", _TWISTD, "--nodaemon", "--pidfile=", "--python", tac]
        raise HarnessError(f"unknown entry point {entry!r}")

    def run_until_exit(self, entry: str = "twistd", timeout: float = 60.0) -> subprocess.CompletedProcess:
        """Run one entry point in the server's folder until it exits by itself (a failed start);
        a server still running after ``timeout`` fails the test."""
        env = {**self.env, "HEADSCALE_CONFIG": self.config_path}
        return self.namespace.run(self.argv(entry), env=env, timeout=timeout, cwd=self.directory)

    def stop(self, timeout: float = 10.0) -> int | None:
        """Stop the server (SIGTERM, SIGKILL after ``timeout``); return its exit status."""
        return self.process.stop(timeout) if self.process else None

    def http_get(self, path: str, timeout: float = 2.0) -> HttpResult:
        """GET a path on the server's listen address, from inside the namespace."""
        base = self.health_url[: -len("/health")]
        return self.namespace.http_get(base + path, timeout)

    def cli(self, *args: str, timeout: float = 30.0, check: bool = True) -> subprocess.CompletedProcess:
        """Run ``python -m headscale_tw.cli.main -c CONFIG ARGS`` in the namespace, in the server's folder."""
        argv = [self.python, "-m", "headscale_tw.cli.main", "-c", self.config_path, *args]
        proc = self.namespace.run(argv, env=self.env, timeout=timeout, cwd=self.directory)
        if check and proc.returncode != 0:
            raise HarnessError(
                f"`headscale {' '.join(args)}` exited {proc.returncode}\n"
                f"stdout: {proc.stdout[-2000:]}\nstderr: {proc.stderr[-2000:]}\n{self.describe()}"
            )
        return proc

    def describe(self, lines: int = 40) -> str:
        """State and log tail, for assertion messages."""
        return self.process.describe(lines) if self.process else f"--- {self.name}: not started"
