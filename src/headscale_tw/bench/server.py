# -*- test-case-name: tests.bench.test_spawned_server -*-
"""
The server under load as a child process: ``twistd -n headscale`` on a temp dir.

Plain HTTP on 127.0.0.1 (control-plane load needs no TLS), no DERP, SQLite in
the temp dir or (``database="postgres"``) a throwaway PostgreSQL database made
over the server's unix socket and dropped on :meth:`SpawnedServer.stop`;
``workers`` > 1 writes ``workers: N`` (the server becomes a supervisor of N
worker processes sharing the port, so :meth:`SpawnedServer.stats` sums over
the process tree; worker 0 serves the CLI's unix socket). The CLI's unix
socket is in the temp dir, and there is a policy file (``policy.json``) when
asked, so a policy change is "rewrite the file, send SIGHUP". The user and the
pre-auth keys are made with the ``headscale`` CLI over the unix socket, as an
operator would. ``RLIMIT_NOFILE`` is raised to its hard limit in the child.
"""

from __future__ import annotations

import json
import os
import resource
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

import headscale_tw

#: Where the benchmark reaches PostgreSQL (trust auth over the unix socket); ``HEADSCALE_BENCH_PG_HOST`` overrides.
PG_SOCKET_DIR = os.environ.get("HEADSCALE_BENCH_PG_HOST", "/var/run/postgresql")
PG_USER = os.environ.get("HEADSCALE_BENCH_PG_USER", "postgres")

__all__ = ["SpawnedServer", "raise_nofile", "proc_stats", "tree_stats", "process_tree", "free_port",
           "PG_SOCKET_DIR", "postgres_section"]

_TWISTD = "from twisted.scripts.twistd import run; run()"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def raise_nofile() -> int:
    """Raise this process's open-file limit to the hard limit; return the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def proc_stats(pid: int, proc: str = "/proc") -> dict:
    """RSS, peak RSS (MiB) and CPU seconds (user + system) of a process, from /proc."""
    with open(f"{proc}/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / CLK_TCK
    values = {}
    with open(f"{proc}/{pid}/status") as f:
        for line in f:
            name, _, rest = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                values[name] = int(rest.split()[0]) / 1024
    return {"rss_mib": round(values.get("VmRSS", 0), 1), "peak_rss_mib": round(values.get("VmHWM", 0), 1),
            "cpu_s": round(cpu, 2)}


def process_tree(pid: int, proc: str = "/proc") -> list[int]:
    """``pid`` and all its descendants (parent before children), from the ppid field of ``/proc/*/stat``."""
    children: dict[int, list[int]] = {}
    for name in os.listdir(proc):
        if not name.isdigit():
            continue
        try:
            with open(f"{proc}/{name}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile, or not a process
        children.setdefault(ppid, []).append(int(name))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop(0)
        tree.append(current)
        todo.extend(sorted(children.get(current, [])))
    return tree


def tree_stats(pid: int, proc: str = "/proc") -> dict:
    """
    :func:`proc_stats` summed over ``pid`` and its descendants, plus each one under ``processes``.

    RSS is summed (pages shared between processes count once per process, so
    the sum is an upper bound); peak RSS is summed too (an upper bound on the
    tree's peak); CPU seconds are exact for live processes. A process that
    exits between listing and reading is left out.
    """
    per = []
    for member in process_tree(pid, proc):
        try:
            per.append({"pid": member, **proc_stats(member, proc)})
        except (OSError, IndexError, ValueError):
            continue
    total = {key: round(sum(p[key] for p in per), 2 if key == "cpu_s" else 1)
             for key in ("rss_mib", "peak_rss_mib", "cpu_s")}
    return {**total, "process_count": len(per), "processes": per}


def postgres_section(name: str, host: str = PG_SOCKET_DIR, user: str = PG_USER) -> str:
    """The ``database:`` YAML section for database ``name`` on the PostgreSQL at ``host`` (a socket dir)."""
    return (f"database:\n  type: postgres\n  postgres:\n    host: {host}\n    port: 5432\n"
            f"    name: {name}\n    user: {user}\n    pass: ''\n    ssl: disable\n")


def _pg_admin_execute(host: str, user: str, sql: str) -> None:
    """Run one statement (``CREATE``/``DROP DATABASE``) on the server's ``postgres`` database, outside a transaction."""
    import psycopg2

    conn = psycopg2.connect(host=host, user=user, dbname="postgres", connect_timeout=5)
    try:
        conn.autocommit = True
        with conn.cursor() as cursor:
            cursor.execute(sql)
    finally:
        conn.close()


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
                 profile: str | None = None, database: str = "sqlite", workers: int = 1,
                 pg_host: str = PG_SOCKET_DIR, pg_user: str = PG_USER) -> None:
        if database not in ("sqlite", "postgres"):
            raise ValueError(f"database {database!r}: expected sqlite or postgres")
        if workers < 1:
            raise ValueError(f"workers {workers!r}: expected 1 or more")
        self.database = database
        self.workers = workers
        self.pg_host = pg_host
        self.pg_user = pg_user
        #: the throwaway PostgreSQL database (created in :meth:`start`, dropped in :meth:`stop`)
        self.pg_name = "hstw_bench_" + secrets.token_hex(6) if database == "postgres" else None
        self._pg_created = False
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
                + self.database_section()
                + (f"workers: {workers}\n" if workers != 1 else "")
                + "derp:\n  server:\n    enabled: false\n  urls: []\n  paths: []\n  auto_update_enabled: false\n"
                "dns:\n  magic_dns: true\n  base_domain: bench.internal\n"
                + policy_section
            )
        self.process: subprocess.Popen | None = None

    def database_section(self) -> str:
        """The ``database:`` section written into the config."""
        if self.pg_name is not None:
            return postgres_section(self.pg_name, self.pg_host, self.pg_user)
        return f"database:\n  type: sqlite\n  sqlite:\n    path: {self.dir}/db.sqlite\n"

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
        """SIGHUP to the server (the supervisor when there are workers): it re-reads the policy file."""
        os.kill(self._running().pid, signal.SIGHUP)

    def env(self) -> dict:
        return dict(os.environ, PYTHONPATH=_pythonpath())

    def start(self, timeout: float = 60.0) -> SpawnedServer:
        if self.pg_name is not None and not self._pg_created:
            _pg_admin_execute(self.pg_host, self.pg_user, f'CREATE DATABASE "{self.pg_name}"')
            self._pg_created = True
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
        """CPU seconds and RSS summed over the server and its worker processes; each under ``processes``."""
        return tree_stats(self._running().pid)

    def stop(self, timeout: float = 20.0) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self._pg_created:
            _pg_admin_execute(self.pg_host, self.pg_user, f'DROP DATABASE IF EXISTS "{self.pg_name}" WITH (FORCE)')
            self._pg_created = False
        if not self.keep:
            shutil.rmtree(self.dir, ignore_errors=True)
