# -*- test-case-name: tests.cli.test_proctitle -*-
"""Tests for headscale_tw.cli._proctitle: ``headscale serve`` looks like Headscale in /proc."""

import os
import subprocess
import sys

from twisted.trial import unittest

from headscale_tw.cli._proctitle import new_cmdline, presented_as_headscale_serve
from headscale_tw.testing.realclient.server import source_pythonpath

__all__ = ["NewCmdlineTests", "RenameTests", "WrapperTests", "headplane_finds"]

_CHILD = """
import sys
from headscale_tw.cli._proctitle import present_as_headscale_serve
ok = present_as_headscale_serve(sys.argv[1:])
print(ok, flush=True)
sys.stdin.read()
"""


def headplane_finds(pid: int) -> bool:
    """Headplane's own test: comm is ``headscale`` and the second non-empty cmdline field is ``serve``."""
    with open(f"/proc/{pid}/comm") as f:
        comm = f.read().strip()
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        args = [a for a in f.read().split(b"\0") if a]
    return comm == "headscale" and len(args) > 1 and args[1] == b"serve"


class NewCmdlineTests(unittest.TestCase):
    """The new cmdline puts ``headscale serve`` first and keeps the other arguments."""

    def test_order(self):
        """Global flags before the command move after ``serve``; the first ``serve`` is not repeated."""
        self.assertEqual(new_cmdline(["-c", "/etc/hs.yaml", "serve"]), b"headscale\0serve\0-c\0/etc/hs.yaml\0")
        self.assertEqual(new_cmdline(["serve"]), b"headscale\0serve\0")


class RenameTests(unittest.TestCase):
    """A real child process renames itself so Headplane's /proc scan finds it."""

    def test_child_found_by_headplane_scan(self):
        """A ``python -c`` child that presents itself is found by comm and cmdline, its arguments kept."""
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(source_pythonpath()))
        child = subprocess.Popen([sys.executable, "-c", _CHILD, "-c", "cfg.yaml", "serve"], env=env,
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.addCleanup(child.wait, 10)
        self.addCleanup(child.stdin.close)
        self.assertEqual(child.stdout.readline().strip(), "True")
        self.assertTrue(headplane_finds(child.pid))
        with open(f"/proc/{child.pid}/cmdline", "rb") as f:
            self.assertEqual([a for a in f.read().split(b"\0") if a], [b"headscale", b"serve", b"-c", b"cfg.yaml"])


class WrapperTests(unittest.TestCase):
    """The serve wrapper renames only a real run, never the test process."""

    def test_test_reactor_not_renamed(self):
        """With a reactor given (a test), the command runs and this process keeps its name."""
        with open("/proc/self/comm") as f:
            before = f.read()
        ran = []

        class Ctx:
            reactor = object()

        presented_as_headscale_serve(ran.append)(Ctx)
        self.assertEqual(ran, [Ctx])
        with open("/proc/self/comm") as f:
            self.assertEqual(f.read(), before)
