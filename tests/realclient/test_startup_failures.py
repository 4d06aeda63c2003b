# -*- test-case-name: tests.realclient.test_startup_failures -*-
"""
Start-up failures of the real server process, through all three entry points.

Each test writes a broken config into a private network namespace and runs
``twistd -n headscale``, ``headscale serve`` and ``twistd -ny etc/headscale.tac``
until they exit by themselves: the exit status is not 0, the output has exactly
one "could not start" line naming the problem, and no traceback (log.level info).
``headscale configtest`` fails on the same config with the same reason.
Without ``-n`` (twistd daemonising, for ``twistd headscale`` and the ``.tac``)
the waiting parent exits 1 with the reason, whatever the failure.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Mapping
from typing import Any

import yaml

from headscale_tw.testing.realclient.server import HeadscaleServer
from headscale_tw.testing.realclient.testcase import DEFAULT_CONFIG_YAML, RealClientTestCase

__all__ = ["StartupFailureTests", "config_yaml"]

ENTRY_POINTS = ("twistd", "serve", "tac")


def config_yaml(**changes: Any) -> str:
    """:data:`DEFAULT_CONFIG_YAML` with top-level keys replaced (``None`` deletes a key)."""
    config: dict[str, Any] = yaml.safe_load(DEFAULT_CONFIG_YAML)
    for key, value in changes.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    return yaml.safe_dump(config, sort_keys=False)


def postgres_section(name: str, host: str | None = None) -> Mapping[str, Any]:
    """A ``database`` section for PostgreSQL (the shared server's socket folder unless ``host``)."""
    socket_dir = os.environ.get("HEADSCALE_TEST_PG_SOCKET_DIR", "/var/run/postgresql")
    return {"type": "postgres", "postgres": {"host": host or socket_dir, "port": 5432, "name": name,
                                             "user": "postgres"}}


def _stop_daemon(pidfile: str) -> None:
    """Stop a daemon this test started, by the PID it wrote (only if it is still running)."""
    try:
        with open(pidfile) as f:
            pid = int(f.read().strip())
    except (OSError, ValueError):
        return
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            if pidfile.encode() not in f.read():
                return  # the PID was reused: not the daemon this test started
        os.kill(pid, signal.SIGKILL)
    except (OSError, ProcessLookupError):
        pass


class StartupFailureTests(RealClientTestCase):
    """Every kind of start-up failure exits non-zero with one clear line, under every entry point."""

    def make(self, yaml_text: str, files: Mapping[str, str] | None = None, folders: tuple[str, ...] = (),
             name: str = "server") -> HeadscaleServer:
        """A server folder with ``yaml_text`` as its config and ``files``/``folders`` (relative) in it."""
        server = HeadscaleServer(self.namespace, yaml_text, name=name)
        for relative, text in (files or {}).items():
            with open(os.path.join(server.directory, relative), "w") as f:
                f.write(text)
        for relative in folders:
            os.makedirs(os.path.join(server.directory, relative), exist_ok=True)
        return server

    def assert_fails(self, server: HeadscaleServer, *expected: str, configtest: bool = True) -> None:
        """Each entry point exits non-zero with one "could not start" line holding ``expected``, no traceback;
        ``headscale configtest`` fails with the same reason."""
        for entry in ENTRY_POINTS:
            proc = server.run_until_exit(entry)
            output = proc.stdout + proc.stderr
            where = f"{entry} (exit {proc.returncode}):\n{output[-3000:]}"
            self.assertNotEqual(proc.returncode, 0, where)
            lines = [line for line in output.splitlines() if "could not start" in line]
            self.assertEqual(len(lines), 1, where)
            for text in expected:
                self.assertIn(text, lines[0], where)
            self.assertNotIn("Traceback", output, where)
        if configtest:
            proc = server.cli("configtest", check=False)
            where = f"configtest (exit {proc.returncode}):\n{proc.stdout}{proc.stderr}"
            self.assertEqual(proc.returncode, 1, where)
            self.assertIn("Error: the server would not start", proc.stderr, where)
            for text in expected:
                self.assertIn(text, proc.stderr, where)

    def test_policy_syntax_error(self):
        """A policy file that does not parse names policy.path and the position."""
        server = self.make(config_yaml(policy={"path": "./policy.hujson"}), {"policy.hujson": '{"acls": [\n'})
        self.assert_fails(server, "policy.path ./policy.hujson", "unexpected end of input")

    def test_policy_unknown_group(self):
        """A policy naming an undefined group names the group."""
        policy = '{"acls": [{"action": "accept", "src": ["group:nope"], "dst": ["*:*"]}]}'
        server = self.make(config_yaml(policy={"path": "./policy.hujson"}), {"policy.hujson": policy})
        self.assert_fails(server, "policy.path ./policy.hujson", 'group "group:nope" is not defined')

    def test_policy_file_missing(self):
        """A policy file that does not exist is named."""
        server = self.make(config_yaml(policy={"path": "./missing.hujson"}))
        self.assert_fails(server, "policy.path ./missing.hujson", "No such file")

    def test_tls_files_missing(self):
        """A TLS certificate that does not exist is named with its setting."""
        server = self.make(config_yaml(tls_cert_path="./none.pem", tls_key_path="./none.key"))
        self.assert_fails(server, "tls_cert_path ./none.pem", "No such file")

    def test_port_in_use(self):
        """The control port held by another server: the address is named, the exit is non-zero."""
        self.start_server(config_yaml(), name="holder")
        busy = config_yaml(metrics_listen_addr="127.0.0.1:9091",
                           derp={"server": {"stun_listen_addr": "127.0.0.1:3479"}})
        server = self.make(busy)
        self.assert_fails(server, "listen_addr 127.0.0.1:8080: cannot listen: Address already in use")

    def test_corrupt_noise_key(self):
        """A Noise key file that holds no key names noise.private_key_path."""
        server = self.make(config_yaml(), {"var/noise_private.key": "not a key\n"})
        self.assert_fails(server, "noise.private_key_path", "does not hold a key")

    def test_postgres_down(self):
        """PostgreSQL not answering names the database and the refusal."""
        server = self.make(config_yaml(database=postgres_section("headscale", host="127.0.0.1")))
        self.assert_fails(server, "database (postgres postgres@127.0.0.1:5432/headscale)", "Connection refused")

    def test_postgres_database_missing(self):
        """A PostgreSQL database that does not exist is named."""
        server = self.make(config_yaml(database=postgres_section("hs_tw_no_such_database")))
        self.assert_fails(server, "database (postgres", 'database "hs_tw_no_such_database" does not exist')

    def test_sqlite_path_is_a_directory(self):
        """database.sqlite.path naming a folder is refused by name."""
        server = self.make(config_yaml(database={"type": "sqlite", "sqlite": {"path": "./var/dbdir"}}),
                           folders=("var/dbdir",))
        self.assert_fails(server, "database.sqlite.path ./var/dbdir is a directory")

    def test_sqlite_folder_cannot_be_created(self):
        """A database folder that cannot be created fails the start (the process used to stay up)."""
        path = "/proc/headscale-tw-none/db.sqlite"
        server = self.make(config_yaml(database={"type": "sqlite", "sqlite": {"path": path}}))
        self.assert_fails(server, f"database.sqlite.path {path}: cannot create")

    def test_config_invalid(self):
        """A config that does not load exits non-zero naming the key, without a traceback, under every entry point."""
        server = self.make(config_yaml())
        with open(server.config_path, "w") as f:
            f.write(config_yaml(prefixes={"v4": "100.64.0.0/33"}))
        for entry in ENTRY_POINTS:
            proc = server.run_until_exit(entry)
            output = proc.stdout + proc.stderr
            self.assertNotEqual(proc.returncode, 0, f"{entry}: {output}")
            self.assertIn('prefixes.v4: "100.64.0.0/33" is not a valid prefix', output, entry)
            self.assertNotIn("Traceback", output, entry)

    def run_daemonised(self, server: HeadscaleServer, entry: str) -> tuple[Any, str, str]:
        """Run ``twistd headscale`` or ``twistd -y etc/headscale.tac`` without ``-n`` until the waiting
        parent exits; return the parent's ``CompletedProcess``, the daemon's log and its PID file path.

        A daemon that started anyway (the failure this guards against) is stopped by the PID it wrote."""
        pidfile = os.path.join(server.directory, f"{entry}.pid")
        log_file = os.path.join(server.directory, f"{entry}.log")
        argv = [arg for arg in server.argv(entry) if arg not in ("--nodaemon", "--pidfile=")]
        where = argv.index("headscale" if entry == "twistd" else "--python")
        argv[where:where] = ["--pidfile", pidfile, "--logfile", log_file]
        env = {**server.env, "HEADSCALE_CONFIG": server.config_path}
        proc = self.namespace.run(argv, env=env, timeout=60, cwd=server.directory)
        self.addCleanup(_stop_daemon, pidfile)
        log = ""
        if os.path.exists(log_file):
            with open(log_file) as f:
                log = f.read()
        return proc, log, pidfile

    def assert_daemon_fails(self, server: HeadscaleServer, *expected: str) -> None:
        """Both twistd entry points without -n: the waiting parent exits 1 and prints the start of the
        reason (twistd passes the parent at most 100 bytes); ``twistd headscale``'s log file has the one
        "could not start" line holding ``expected``, and no traceback. (The ``.tac`` logs to the
        standard output, which a daemon leaves behind.)"""
        proc, log, _ = self.run_daemonised(server, "twistd")
        where = f"twistd (exit {proc.returncode}):\n{proc.stdout}{proc.stderr}\nlog:\n{log[-3000:]}"
        self.assertEqual(proc.returncode, 1, where)
        lines = [line for line in log.splitlines() if "could not start" in line]
        self.assertEqual(len(lines), 1, where)
        for text in expected:
            self.assertIn(text, lines[0], where)
        self.assertNotIn("Traceback", log, where)
        reason = lines[0].split("could not start: ", 1)[1]
        self.assertIn("StartupError: " + reason[:40], proc.stderr, where)
        proc, log, _ = self.run_daemonised(server, "tac")
        where = f"tac (exit {proc.returncode}):\n{proc.stdout}{proc.stderr}"
        self.assertEqual(proc.returncode, 1, where)
        self.assertIn("StartupError: " + reason[:40], proc.stderr, where)
        self.assertNotIn("Traceback", proc.stdout + proc.stderr, where)

    def test_daemonising_twistd_reports_failure(self):
        """twistd without -n, a missing policy file: the waiting parent exits 1 naming the problem."""
        server = self.make(config_yaml(policy={"path": "./missing.hujson"}))
        self.assert_daemon_fails(server, "policy.path ./missing.hujson")

    def test_daemonising_port_in_use(self):
        """twistd without -n, the control port held by another server: the parent exits 1 naming the address."""
        self.start_server(config_yaml(), name="holder")
        busy = config_yaml(metrics_listen_addr="127.0.0.1:9091",
                           derp={"server": {"stun_listen_addr": "127.0.0.1:3479"}})
        server = self.make(busy)
        self.assert_daemon_fails(server, "listen_addr 127.0.0.1:8080: cannot listen: Address already in use")

    def test_daemonising_database_missing(self):
        """twistd without -n, a PostgreSQL database that does not exist: the parent exits 1 naming it."""
        server = self.make(config_yaml(database=postgres_section("hs_tw_no_such_database")))
        self.assert_daemon_fails(server, "database (postgres", 'database "hs_tw_no_such_database" does not exist')

    def test_daemonising_postgres_down(self):
        """twistd without -n, PostgreSQL not answering: the parent exits 1 naming the database."""
        server = self.make(config_yaml(database=postgres_section("headscale", host="127.0.0.1")))
        self.assert_daemon_fails(server, "database (postgres postgres@127.0.0.1:5432/headscale)", "Connection refused")

    def test_daemonising_sqlite_folder_cannot_be_created(self):
        """twistd without -n, a database folder that cannot be created: the parent exits 1 naming the path."""
        path = "/proc/headscale-tw-none/db.sqlite"
        server = self.make(config_yaml(database={"type": "sqlite", "sqlite": {"path": path}}))
        self.assert_daemon_fails(server, f"database.sqlite.path {path}: cannot create")

    def test_daemonising_late_failure_reaches_parent(self):
        """twistd without -n, a migration that fails after startService returned (the database says
        version 3 but already holds delta 04/01's table): the waiting parent exits 1 naming the failure
        instead of 0, because it is told only when the start has finished."""
        import sqlite3

        from headscale_tw.testing.db import open_test_database, sqlite_config

        server = self.make(config_yaml(), folders=("var",))
        path = os.path.join(server.directory, "var", "db.sqlite")
        open_test_database(self, sqlite_config(path))  # a current database, then made to look half-migrated
        with sqlite3.connect(path) as db:
            db.execute("UPDATE schema_version SET version = 3")
            db.execute("DELETE FROM applied_schema_deltas WHERE version = 4")
        proc, log, _ = self.run_daemonised(server, "twistd")
        where = f"twistd (exit {proc.returncode}):\n{proc.stdout}{proc.stderr}\nlog:\n{log[-3000:]}"
        self.assertEqual(proc.returncode, 1, where)
        lines = [line for line in log.splitlines() if "could not start" in line]
        self.assertEqual(len(lines), 1, where)
        self.assertIn("instances already exists", lines[0], where)
        self.assertIn("StartupError: ", proc.stderr, where)
        self.assertNotIn("Traceback", log, where)

    def test_daemonising_parent_returns_when_serving(self):
        """twistd without -n on embedded-default-like settings: the parent exits 0, and at that moment the
        daemon already answers /health (the parent is told "started" only once the server serves)."""
        server = self.make(config_yaml())
        proc, log, pidfile = self.run_daemonised(server, "twistd")
        self.assertEqual(proc.returncode, 0, f"{proc.stdout}{proc.stderr}\nlog:\n{log[-3000:]}")
        health = self.namespace.http_get("http://127.0.0.1:8080/health")
        self.assertEqual(health.status, 200, health)
        self.assertTrue(os.path.exists(pidfile))

    def test_traceback_at_debug(self):
        """At log.level debug the same failure also logs its traceback."""
        server = self.make(config_yaml(policy={"path": "./missing.hujson"}, log={"level": "debug"}))
        proc = server.run_until_exit("twistd")
        self.assertNotEqual(proc.returncode, 0)
        self.assertIn("Traceback", proc.stdout + proc.stderr)


class SocketLockTests(RealClientTestCase):
    """The unix socket's flock: a dead server never blocks, a live one always does."""

    def test_stale_lock_after_kill_9(self):
        """After kill -9, a lock file naming a live PID (or the old symlink form) does not block the restart."""
        server = self.start_server()
        server.process.popen.kill()  # SIGKILL to the process this test started
        server.process.popen.wait(10)
        lock = server.unix_socket + ".lock"
        with open(lock, "w") as f:
            f.write(f"{os.getpid()}\n")  # a live process: the old PID check refused this
        again = self.start_server(name="server")
        self.assertEqual(again.http_get("/health").status, 200)
        again.stop()
        os.unlink(lock)
        os.symlink(str(os.getpid()), lock)  # Twisted's old lock: a symlink to a live PID
        third = self.start_server(name="server")
        self.assertEqual(third.http_get("/health").status, 200)

    def test_live_server_blocks_second(self):
        """A second server on the same socket exits non-zero naming the lock; the first keeps serving;
        configtest beside the running server passes."""
        first = self.start_server()
        second = HeadscaleServer(self.namespace, DEFAULT_CONFIG_YAML, name="server")
        for entry in ENTRY_POINTS:
            proc = second.run_until_exit(entry)
            output = proc.stdout + proc.stderr
            self.assertNotEqual(proc.returncode, 0, output)
            lines = [line for line in output.splitlines() if "could not start" in line]
            self.assertEqual(len(lines), 1, output)
            self.assertIn(f"holds {os.path.normpath(first.unix_socket)}.lock", lines[0])
            self.assertNotIn("Traceback", output)
        self.assertEqual(first.http_get("/health").status, 200)
        proc = first.cli("configtest", check=False)
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertIn("not checked, this server is running", proc.stderr)
