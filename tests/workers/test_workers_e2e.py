# -*- test-case-name: tests.workers.test_workers_e2e -*-
"""
``twistd -n headscale`` with ``workers: 2`` on a throwaway PostgreSQL database, as a real process.

The supervisor's log says when every worker serves; then both workers answer on
their own metrics port, the shared control port answers ``/health``, the CLI
works through worker 0's unix socket (the configured path) and worker 1's
(``unix_socket.1``) sees the same users; the two workers' DERP servers meshed
over their private sockets; killing a worker gets it restarted; SIGTERM stops
all of them.
"""

from __future__ import annotations

import json
import os
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

from twisted.trial import unittest

from headscale_tw.testing.db import create_postgres_database

__all__ = ["WorkersEndToEndTests"]

DEADLINE = 90.0  # seconds: a safety net for a loaded machine, never a synchronisation


def _free_port(kind: int = socket.SOCK_STREAM, span: int = 1) -> int:
    """A port free now (with ``span`` - 1 free ports above it, for the per-worker metrics ports)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, kind) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port + span > 65535:
            continue
        try:
            for extra in range(1, span):
                with socket.socket(socket.AF_INET, kind) as s:
                    s.bind(("127.0.0.1", port + extra))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port range")


class _Server:
    """The supervisor process and what it logged."""

    def __init__(self, testcase: unittest.TestCase, config_path: str) -> None:
        self.env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p),
                        HEADSCALE_CONFIG=config_path)
        self.process = subprocess.Popen(
            [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile=",
             "headscale", "--config", config_path],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=self.env)
        testcase.addCleanup(self.reap)
        self.text = ""
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.process.stdout, selectors.EVENT_READ)

    def wait_for(self, needle: str, count: int = 1) -> None:
        """Read the log until ``needle`` appeared ``count`` times; fail at EOF or after :data:`DEADLINE`."""
        deadline = time.monotonic() + DEADLINE
        while self.text.count(needle) < count:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self.selector.select(remaining):
                raise AssertionError(f"no {needle!r} within {DEADLINE}s; log:\n{self.text[-4000:]}")
            chunk = os.read(self.process.stdout.fileno(), 65536)  # type: ignore[union-attr]
            if not chunk:
                raise AssertionError(f"server ended before {needle!r}; log:\n{self.text[-4000:]}")
            self.text += chunk.decode(errors="replace")

    def cli(self, *args: str) -> str:
        """Run the CLI (``headscale …``) against the configured unix socket (or ``cli.address`` in the env)."""
        done = subprocess.run([sys.executable, "-c", "import sys; from headscale_tw.cli.main import main; "
                               "sys.exit(main(sys.argv[1:]))", *args],
                              env=self.env, capture_output=True, text=True, timeout=DEADLINE)
        if done.returncode:
            raise AssertionError(f"headscale {' '.join(args)}: {done.stderr}")
        return done.stdout

    def reap(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=DEADLINE)
        self.selector.close()
        self.process.stdout.close()  # type: ignore[union-attr]


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=DEADLINE) as response:
        return response.read().decode()


class WorkersEndToEndTests(unittest.TestCase):
    """Two workers serve one configuration."""

    def setUp(self) -> None:
        db = create_postgres_database(self).postgres
        # Short: unix socket paths (the private DERP mesh sockets among them) are limited to 107 bytes.
        self.state = tempfile.mkdtemp(prefix="hstw-workers-")
        self.addCleanup(shutil.rmtree, self.state, True)
        self.listen = _free_port()
        self.metrics = _free_port(span=2)
        stun = _free_port(socket.SOCK_DGRAM)
        config = {
            "server_url": f"http://127.0.0.1:{self.listen}",
            "listen_addr": f"127.0.0.1:{self.listen}",
            "metrics_listen_addr": f"127.0.0.1:{self.metrics}",
            "workers": 2,
            "unix_socket": os.path.join(os.path.abspath(self.state), "headscale.sock"),
            "noise": {"private_key_path": os.path.join(os.path.abspath(self.state), "noise.key")},
            "database": {"type": "postgres", "postgres": {"host": db.host, "port": db.port, "name": db.name,
                                                          "user": db.user, "pass": db.password}},
            "derp": {"server": {"enabled": True, "stun_listen_addr": f"127.0.0.1:{stun}",
                                "private_key_path": os.path.join(os.path.abspath(self.state), "derp.key")},
                     "urls": []},
            "dns": {"magic_dns": False, "override_local_dns": False},
        }
        self.config_path = os.path.join(self.state, "config.yaml")
        with open(self.config_path, "w") as f:
            json.dump(config, f)  # JSON is YAML

    def test_two_workers_serve(self) -> None:
        """Both workers serve, share the control port, mesh their DERP servers, are restarted and stop on SIGTERM."""
        server = _Server(self, self.config_path)
        server.wait_for("serving with 2 workers")
        self.assertIn("[worker 0]", server.text)
        self.assertIn("[worker 1]", server.text)
        self.assertEqual(json.loads(_get(f"http://127.0.0.1:{self.listen}/health")), {"status": "pass"})
        for port in (self.metrics, self.metrics + 1):
            self.assertIn("headscale_nodes", _get(f"http://127.0.0.1:{port}/metrics"))
        server.wait_for("DERP mesh: connected to peer", 2)  # each worker watches the other's clients

        second = _Server(self, self.config_path)  # the same configuration again: refused, exit status 1
        self.assertEqual(second.process.wait(timeout=DEADLINE), 1)
        second.text = second.process.stdout.read().decode(errors="replace")  # type: ignore[union-attr]
        self.assertIn("could not start", second.text)
        self.assertIn("headscale.sock.supervisor", second.text)  # the lock, named
        self.assertNotIn("[worker", second.text)  # no worker started

        server.cli("users", "create", "alice")  # through worker 0's socket: the configured path
        sock1 = os.path.join(os.path.abspath(self.state), "headscale.sock.1")
        server.env["HEADSCALE_UNIX_SOCKET"] = sock1
        self.assertIn("alice", server.cli("users", "list"))  # worker 1 sees the same database

        ps = subprocess.run(["pgrep", "-P", str(server.process.pid), "-f", "worker-index 1"],
                            capture_output=True, text=True, timeout=DEADLINE)
        [worker1] = ps.stdout.split()
        os.kill(int(worker1), signal.SIGKILL)
        server.wait_for("worker 1 ended")
        server.wait_for("worker 1 serving", 2)

        server.process.send_signal(signal.SIGTERM)
        server.wait_for("Server Shut Down.", 3)  # both workers, then the supervisor
        # twistd ends itself with the signal that stopped it; the supervisor waited for its workers first.
        self.assertEqual(server.process.wait(timeout=DEADLINE), -signal.SIGTERM)
        self.assertIn("worker 0] Server Shut Down.", server.text)
        self.assertIn("worker 1] Server Shut Down.", server.text)
