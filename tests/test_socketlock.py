# -*- test-case-name: tests.test_socketlock -*-
"""Tests for headscale_tw.socketlock."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile

from twisted.trial import unittest

from headscale_tw.socketlock import LockHeld, SocketLock

__all__ = ["SocketLockTests"]

_HOLD = """
import sys, time
sys.path[:0] = sys.argv[2].split(":")
from headscale_tw.socketlock import SocketLock
SocketLock(sys.argv[1]).acquire()
print("held", flush=True)
sys.stdin.read()
"""


class SocketLockTests(unittest.TestCase):
    """flock on <socket>.lock: held while its holder lives, never by a dead process."""

    def setUp(self):
        folder = tempfile.mkdtemp(prefix="hstw-lock-")  # short: unix socket paths are limited to ~107 bytes
        self.addCleanup(shutil.rmtree, folder, True)
        self.socket_path = os.path.join(folder, "headscale.sock")

    def test_second_holder_refused(self):
        """A second lock on the same socket fails with LockHeld naming the file and this PID."""
        first = SocketLock(self.socket_path)
        first.acquire()
        self.addCleanup(first.release)
        with self.assertRaises(LockHeld) as e:
            SocketLock(self.socket_path).acquire()
        self.assertEqual(e.exception.pid, os.getpid())
        self.assertIn(self.socket_path + ".lock", str(e.exception))
        self.assertEqual(os.stat(first.lock_path).st_mode & 0o777, 0o600)

    def test_release_then_again(self):
        """After release the lock can be taken again."""
        first = SocketLock(self.socket_path)
        first.acquire()
        first.release()
        second = SocketLock(self.socket_path)
        second.acquire()
        self.assertTrue(second.held)
        second.release()

    def test_stale_file_naming_live_pid(self):
        """A lock file left behind, naming a live PID, does not block (nobody holds the flock)."""
        with open(self.socket_path + ".lock", "w") as f:
            f.write(f"{os.getppid()}\n")
        lock = SocketLock(self.socket_path)
        lock.acquire()
        self.addCleanup(lock.release)
        with open(lock.lock_path) as f:
            self.assertEqual(f.read().strip(), str(os.getpid()))

    def test_old_symlink_replaced(self):
        """Twisted's old symlink lock (to a live PID) is replaced by the flock file, creating nothing else."""
        os.symlink(str(os.getpid()), self.socket_path + ".lock")
        lock = SocketLock(self.socket_path)
        lock.acquire()
        self.addCleanup(lock.release)
        self.assertFalse(os.path.islink(lock.lock_path))
        self.assertEqual(sorted(os.listdir(os.path.dirname(self.socket_path))), ["headscale.sock.lock"])

    def test_stale_socket_removed(self):
        """A socket file left by a dead server is removed once the lock is held; other files are not."""
        s = socket.socket(socket.AF_UNIX)
        s.bind(self.socket_path)
        s.close()
        lock = SocketLock(self.socket_path)
        lock.acquire()
        lock.release()
        self.assertFalse(os.path.exists(self.socket_path))
        with open(self.socket_path, "w") as f:
            f.write("not a socket")
        lock.acquire()
        lock.release()
        self.assertTrue(os.path.exists(self.socket_path))

    def test_holder_probe(self):
        """holder() reports the PID of a live holder and None otherwise, creating no file."""
        probe = SocketLock(self.socket_path)
        self.assertIsNone(probe.holder())
        self.assertFalse(os.path.exists(probe.lock_path))
        lock = SocketLock(self.socket_path)
        lock.acquire()
        self.assertEqual(probe.holder(), os.getpid())
        lock.release()
        self.assertIsNone(probe.holder())

    def test_killed_holder_releases(self):
        """A process killed with SIGKILL while holding the lock leaves nothing that blocks the next holder."""
        import headscale_tw

        src = os.path.dirname(os.path.dirname(os.path.abspath(headscale_tw.__file__)))
        child = subprocess.Popen([sys.executable, "-c", _HOLD, self.socket_path, src],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.addCleanup(lambda: child.poll() is None and child.kill())
        self.assertEqual(child.stdout.readline().strip(), "held")
        with self.assertRaises(LockHeld) as e:
            SocketLock(self.socket_path).acquire()
        self.assertEqual(e.exception.pid, child.pid)
        child.send_signal(signal.SIGKILL)
        child.wait(10)
        child.stdout.close()
        child.stdin.close()
        lock = SocketLock(self.socket_path)
        lock.acquire()
        self.assertTrue(lock.held)
        lock.release()
