"""
Type checking as part of the test suite: mypy, with the mypy-zope plugin, on ``src/``.

The configuration is the ``[mypy]`` section of ``setup.cfg``. mypy and the plugin
come with the ``dev`` extra, which ``./dev.sh test`` installs; when they are
missing these tests fail (they never skip).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap

from twisted.trial import unittest

#: The checkout's top level: where ``setup.cfg`` is and ``files = src/headscale_tw`` is relative to.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "setup.cfg")
#: A cold run on two busy cores took about 20 s; the limit only stops a hung run.
TIMEOUT = 600.0


def run_mypy(testcase: unittest.TestCase, *args: str) -> subprocess.CompletedProcess:
    """Run ``python -m mypy`` (this interpreter's) with the project configuration from the checkout's
    top level; fail ``testcase`` when mypy or mypy-zope is not installed or the run hangs."""
    missing = [name for name in ("mypy", "mypy_zope") if importlib.util.find_spec(name) is None]
    if missing:
        testcase.fail(f"{', '.join(missing)} not installed in {sys.executable}: "
                      "pip install -e '.[dev]' (./dev.sh test does)")
    if not os.path.isfile(CONFIG):
        testcase.fail(f"no setup.cfg at {ROOT}: the type check runs from a checkout")
    try:
        return subprocess.run(
            [sys.executable, "-m", "mypy", "--config-file", CONFIG, *args],
            cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT,
        )
    except subprocess.TimeoutExpired as e:
        testcase.fail(f"mypy did not finish within {TIMEOUT:g} s; output so far:\n{e.stdout}{e.stderr}")
        raise  # not reached: fail raises


class SourceTypesTests(unittest.TestCase):
    """mypy finds no error in ``src/headscale_tw``."""

    def test_mypy_clean(self) -> None:
        """
        ``python -m mypy`` with the ``setup.cfg`` configuration exits 0; on failure
        the message is mypy's report.
        """
        result = run_mypy(self)
        self.assertEqual(
            result.returncode, 0,
            f"mypy found errors (exit {result.returncode}):\n{result.stdout}{result.stderr}",
        )


class InterfaceCheckTests(unittest.TestCase):
    """
    The configuration checks classes against the zope interfaces they declare, and
    callers against the interface they hold (what the mypy-zope plugin adds).
    """

    def test_missing_member_and_undeclared_call(self) -> None:
        """
        A class declaring ``@implementer(INodeNotifier)`` without its methods, and a
        call of a method ``INodeNotifier`` does not declare, are both reported.
        """
        path = self.mktemp() + ".py"
        with open(path, "w") as f:
            f.write(textwrap.dedent("""\
                from zope.interface import implementer

                from headscale_tw.interfaces import INodeNotifier


                @implementer(INodeNotifier)
                class EmptyNotifier:
                    pass


                def notify(notifier: INodeNotifier) -> None:
                    notifier.not_a_declared_method()
                """))
        # A cache of its own: the whole-tree run may be writing the shared one in another worker.
        cache = os.path.abspath(self.mktemp())
        result = run_mypy(self, "--cache-dir", cache, os.path.abspath(path))
        output = result.stdout + result.stderr
        self.assertEqual(result.returncode, 1, output)
        self.assertIn("'EmptyNotifier' is missing following 'INodeNotifier' interface members", output)
        self.assertIn('"INodeNotifier" has no attribute "not_a_declared_method"', output)
