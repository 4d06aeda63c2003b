"""
Crash durability: every id a writer reported as committed survives ``kill -9``.

A child process (real reactor, real thread pool) creates users one transaction at
a time and prints each id after its commit returns. The parent reads ids until
enough have arrived, sends SIGKILL mid-burst, drains what the child printed
before dying, reopens the database and checks every reported id is there.
"""

import dataclasses
import json
import os
import selectors
import signal
import subprocess
import sys
import time

from twisted.trial import unittest

from headscale_tw.testing.db import create_postgres_database, open_test_database, resolve, sqlite_config

CHILD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "durability_child.py")
KILL_AFTER = 40  # ids read before the kill
LIMIT = 100000  # the child stops by itself after this many (it is killed long before)
DEADLINE = 120.0  # seconds: a safety net, never a synchronisation


class _Child:
    """The writer process and the ids it reported."""

    def __init__(self, testcase, config):
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
        self.process = subprocess.Popen(
            [sys.executable, CHILD, json.dumps(dataclasses.asdict(config)), str(LIMIT)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        testcase.addCleanup(self.reap)
        self.buffer = b""
        self.lines = []
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.process.stdout, selectors.EVENT_READ)
        self.deadline = time.monotonic() + DEADLINE

    def read_lines_until(self, count):
        """Read complete lines until ``count`` ids arrived (``False`` on EOF or deadline)."""
        while len(self.ids()) < count:
            remaining = self.deadline - time.monotonic()
            if remaining <= 0 or not self.selector.select(remaining):
                return False
            chunk = os.read(self.process.stdout.fileno(), 65536)
            if not chunk:
                return False
            self.buffer += chunk
            *complete, self.buffer = self.buffer.split(b"\n")
            self.lines.extend(line.decode() for line in complete)
        return True

    def ids(self):
        return [int(line) for line in self.lines if line.isdigit()]

    def kill_and_drain(self):
        """SIGKILL the child, then read everything it printed before it died."""
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=DEADLINE)
        rest = self.process.stdout.read()
        complete = (self.buffer + rest).split(b"\n")[:-1]  # a torn last line is not a report
        self.lines.extend(line.decode() for line in complete)
        self.buffer = b""

    def reap(self):
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=DEADLINE)
        self.selector.close()
        self.process.stdout.close()
        self.process.stderr.close()


class DurabilityTestsMixin:
    """Kill a writer with SIGKILL and check no committed row was lost."""

    def make_config(self):
        raise NotImplementedError

    def test_kill_9(self):
        """Every user id the child reported before SIGKILL is in the reopened database."""
        config = self.make_config()
        child = _Child(self, config)
        if not child.read_lines_until(KILL_AFTER):
            child.reap()
            self.fail(f"the writer child died or stalled: {child.process.stderr.read().decode()[-2000:]}")
        self.assertEqual(child.lines[0], "ready")
        child.kill_and_drain()
        self.assertEqual(child.process.returncode, -signal.SIGKILL)
        reported = child.ids()
        self.assertGreaterEqual(len(reported), KILL_AFTER)

        db = open_test_database(self, config)
        stored = {user.id for user in resolve(db.users.list())}
        missing = sorted(set(reported) - stored)
        self.assertEqual(missing, [], f"{len(missing)} committed ids lost after kill -9")
        self.check_integrity(db)

    def check_integrity(self, db):
        pass


class SqliteDurabilityTests(DurabilityTestsMixin, unittest.TestCase):
    """kill -9 on a SQLite writer (WAL)."""

    def make_config(self):
        return sqlite_config(os.path.join(os.path.abspath(self.mktemp()), "db.sqlite"))

    def check_integrity(self, db):
        rows = resolve(db.pool.run_interaction("check", lambda txn: txn.query("PRAGMA integrity_check")))
        self.assertEqual(rows, [("ok",)])


class PostgresDurabilityTests(DurabilityTestsMixin, unittest.TestCase):
    """kill -9 on a PostgreSQL client."""

    def make_config(self):
        return create_postgres_database(self)
