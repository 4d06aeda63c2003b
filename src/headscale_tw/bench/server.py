# -*- test-case-name: tests.bench.test_wire -*-
"""
The server under load as a child process: ``twistd -n headscale`` on a temp dir.

Plain HTTP on 127.0.0.1 (control-plane load needs no TLS), SQLite, no DERP,
the CLI's unix socket in the temp dir, and a policy file (``policy.json``) when
asked, so a policy change is "rewrite the file, send SIGHUP". The user and the
pre-auth keys are made with the ``headscale`` CLI over the unix socket, as an
operator would. ``RLIMIT_NOFILE`` is raised to its hard limit in the child.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

import headscale_tw

__all__ = ["SpawnedServer", "raise_nofile", "proc_stats", "free_port"]

_TWISTD = "from twisted.scripts.twistd import run; run()"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def raise_nofile() -> int:
    """Raise this process's open-file limit to the hard limit; return the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def proc_stats(pid: int) -> dict:
    """RSS, peak RSS (MiB) and CPU seconds (user + system) of a process, from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / CLK_TCK
    values = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            name, _, rest = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                values[name] = int(rest.split()[0]) / 1024
    return {"rss_mib": round(values.get("VmRSS", 0), 1), "peak_rss_mib": round(values.get("VmHWM", 0), 1),
            "cpu_s": round(cpu, 2)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pythonpath() -> str:
    src = os.path.dirname(os.path.dirname(os.path.abspath(headscale_tw.__file__)))
    paths = [src]
    top = os.path.dirname(src)
    if os.path.exists(os.path.join(top, "twisted", "plugins", "headscale_tw_plugin.py")):
        paths.append(top)
    old = os.environ.get("PYTHONPATH")
    return os.pathsep.join(paths + ([old] if old else []))


class SpawnedServer:
    """Start with :meth:`start`, stop with :meth:`stop` (always; it removes the temp dir)."""

    def __init__(self, policy: str | None = None, python: str = sys.executable, keep: bool = False,
                 profile: str | None = None) -> None:
        self.python = python
        self.keep = keep
        self.profile = profile  # a path: twistd's cProfile stats (wall time) of the whole run go there
        self.dir = tempfile.mkdtemp(prefix="hstw-bench-")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.policy_path = os.path.join(self.dir, "policy.json")
        self.config_path = os.path.join(self.dir, "config.yaml")
        self.log_path = os.path.join(self.dir, "server.log")
        if policy is not None:
            self.write_policy(policy)
        policy_section = f"policy:\n  mode: file\n  path: {self.policy_path}\n" if policy is not None else ""
        with open(self.config_path, "w") as f:
            f.write(
                f"server_url: {self.url}\nlisten_addr: 127.0.0.1:{self.port}\n"
                # its own metrics port, so that two benchmark servers can run side by side
                f"metrics_listen_addr: 127.0.0.1:{free_port()}\n"
                f"unix_socket: {self.dir}/headscale.sock\n"
                f"noise:\n  private_key_path: {self.dir}/noise_private.key\n"
                f"database:\n  type: sqlite\n  sqlite:\n    path: {self.dir}/db.sqlite\n"
                "derp:\n  server:\n    enabled: false\n  urls: []\n  paths: []\n  auto_update_enabled: false\n"
                "dns:\n  magic_dns: true\n  base_domain: bench.internal\n"
                + policy_section
            )
        self.process: subprocess.Popen | None = None

    def write_policy(self, text: str) -> None:
        tmp = self.policy_path + ".tmp"
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, self.policy_path)

    def _running(self) -> subprocess.Popen:
        if self.process is None:
            raise RuntimeError("the server is not started")
        return self.process

    def reload(self) -> None:
        """SIGHUP: the server re-reads the policy file."""
        os.kill(self._running().pid, signal.SIGHUP)

    def env(self) -> dict:
        return dict(os.environ, PYTHONPATH=_pythonpath())

    def start(self, timeout: float = 60.0) -> SpawnedServer:
        argv = [self.python, "-c", _TWISTD, "--nodaemon", "--pidfile="]
        if self.profile:
            argv += [f"--profile={os.path.abspath(self.profile)}", "--profiler=cprofile", "--savestats"]
        argv += ["headscale", "-c", self.config_path]
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(argv, cwd=self.dir, env=self.env(), stdout=log, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, preexec_fn=raise_nofile)
        log.close()
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}: {self.log_tail()}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as r:
                    if r.status == 200:
                        return self
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"server not healthy after {timeout} s: {self.log_tail()}")
            time.sleep(0.2)

    def log_tail(self, lines: int = 30) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return ""

    def cli(self, *args: str) -> str:
        argv = [self.python, "-m", "headscale_tw.cli.main", "-c", self.config_path, *args]
        done = subprocess.run(argv, cwd=self.dir, env=self.env(), capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            raise RuntimeError(f"headscale {' '.join(args)}: {done.stderr or done.stdout}")
        return done.stdout

    def make_keys(self, user: str = "bench") -> dict[str, str]:
        """Create ``user`` and a reusable key and a reusable ephemeral key for it (via the CLI)."""
        self.cli("users", "create", user)
        keys = {}
        for name, extra in (("reusable", []), ("ephemeral", ["--ephemeral"])):
            out = self.cli("preauthkeys", "create", "--user", user, "--reusable", *extra, "-e", "2h", "-o", "json")
            keys[name] = json.loads(out)["key"]
        return keys

    def stats(self) -> dict:
        return proc_stats(self._running().pid)

    def stop(self, timeout: float = 20.0) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if not self.keep:
            shutil.rmtree(self.dir, ignore_errors=True)
