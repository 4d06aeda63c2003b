# -*- test-case-name: tests.realclient.test_component -*-
"""Tests for headscale_tw.testing.realclient.component: other programs in the test's namespace."""

import os
import sys

from headscale_tw.testing.realclient._process import HarnessError
from headscale_tw.testing.realclient.component import Component, http_ready
from headscale_tw.testing.realclient.testcase import RealClientTestCase

__all__ = ["ComponentTests"]


class ComponentTests(RealClientTestCase):
    """A component runs inside the namespace, is waited for, and is stopped by PID."""

    def test_ready_inside_and_stopped(self):
        """A web server started as a component answers inside the namespace and stops on request."""
        directory = os.path.join(self.namespace.runtime_dir, "www")
        os.makedirs(directory)
        web = self.start_component("web", [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", "8099"],
                                   ready=http_ready(self.namespace, "http://127.0.0.1:8099/", {200}),
                                   cwd=directory)
        self.assertIn(web.pid, self.namespace.pids_inside())
        self.assertEqual(self.namespace.http_get("http://127.0.0.1:8099/").status, 200)
        self.assertIsNotNone(web.stop())
        self.assertNotIn(web.pid, self.namespace.pids_inside())

    def test_exit_before_ready_fails_with_log(self):
        """A component that exits before it is ready fails the wait at once, with its output."""
        component = Component(self.namespace, "quitter",
                              [sys.executable, "-c", "print('quitting-now'); raise SystemExit(4)"],
                              ready=lambda: False)
        e = self.assertRaises(HarnessError, component.start, 20)
        self.assertIn("exited unexpectedly", str(e))
        self.assertIn("quitting-now", str(e))

    def test_closed_with_namespace(self):
        """Closing the namespace stops a component that is still running."""
        sleeper = self.start_component("sleeper", [sys.executable, "-c", "import time; time.sleep(600)"])
        self.namespace.close()
        self.assertIsNotNone(sleeper.process.returncode)
