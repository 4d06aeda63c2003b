"""Tests for headscale_tw.testing.realclient.server and the RealClientTestCase base."""

import json
import os

from twisted.trial import unittest

from headscale_tw.testing.realclient._process import HarnessError
from headscale_tw.testing.realclient.server import HeadscaleServer, health_url, source_pythonpath
from headscale_tw.testing.realclient.testcase import RealClientTestCase


class HealthUrlTests(unittest.TestCase):
    """Listen addresses become the /health URL polled inside the namespace."""

    def test_ipv4(self):
        """An IPv4 listen address is used as is."""
        self.assertEqual(health_url("127.0.0.1:8080"), "http://127.0.0.1:8080/health")

    def test_wildcard(self):
        """Wildcard addresses are reached over loopback."""
        self.assertEqual(health_url("0.0.0.0:80"), "http://127.0.0.1:80/health")
        self.assertEqual(health_url("[::]:80"), "http://[::1]:80/health")
        self.assertEqual(health_url(":80"), "http://127.0.0.1:80/health")

    def test_ipv6(self):
        """An IPv6 host keeps its brackets."""
        self.assertEqual(health_url("[::1]:8080"), "http://[::1]:8080/health")


class SourcePathTests(unittest.TestCase):
    """The server child imports this checkout."""

    def test_src_first(self):
        """The folder holding headscale_tw comes first, and the checkout's top level has the plugin."""
        paths = source_pythonpath()
        self.assertTrue(os.path.isdir(os.path.join(paths[0], "headscale_tw")))
        for extra in paths[1:]:
            self.assertTrue(os.path.exists(os.path.join(extra, "twisted", "plugins", "headscale_tw_plugin.py")))


class ServerTests(RealClientTestCase):
    """twistd -n headscale runs inside the namespace and answers /health there."""

    def test_health(self):
        """The started server answers /health with a passing JSON status, from inside the namespace."""
        server = self.start_server()
        result = server.http_get("/health")
        self.assertEqual(result.status, 200, result.error)
        self.assertEqual(json.loads(result.body), {"status": "pass"})
        self.assertEqual(server.url, "http://127.0.0.1:8080")
        self.assertTrue(server.unix_socket.startswith(server.directory))
        self.assertIn(server.process.pid, self.namespace.pids_inside())

    def test_cleanup(self):
        """Closing the namespace stops the server by PID."""
        server = self.start_server()
        self.namespace.close()
        self.assertIsNotNone(server.process.returncode)
        self.assertEqual(self.namespace.pids_inside(), [])

    def test_crash_reported(self):
        """A server that exits during startup fails the wait at once, with its log tail."""
        fake = os.path.join(self.log_dir, "crashing-python")
        with open(fake, "w") as f:
            f.write("#!/bin/sh\necho boom-at-startup\nexit 3\n")
        os.chmod(fake, 0o755)
        server = HeadscaleServer(self.namespace, "{}\n", python=fake)
        e = self.assertRaises(HarnessError, server.start, 20)
        self.assertIn("exited unexpectedly", str(e))
        self.assertIn("exited with 3", str(e))
        self.assertIn("boom-at-startup", str(e))

    def test_cli_argv(self):
        """cli() runs ``python -m headscale_tw.cli.main -c CONFIG ARGS`` in the server's folder."""
        fake = os.path.join(self.log_dir, "fake-python")
        with open(fake, "w") as f:
            f.write('#!/bin/sh\necho "$PWD $*"\n')
        os.chmod(fake, 0o755)
        server = HeadscaleServer(self.namespace, "{}\n", python=fake)
        out = server.cli("nodes", "list").stdout.strip()
        self.assertEqual(out, f"{server.directory} -m headscale_tw.cli.main -c {server.config_path} nodes list")

    def test_cli_failure(self):
        """A failing CLI command raises with its exit status and output."""
        server = HeadscaleServer(self.namespace, "{}\n", python="false")
        e = self.assertRaises(HarnessError, server.cli, "nodes", "list")
        self.assertIn("`headscale nodes list` exited 1", str(e))


class ServeProcessTests(RealClientTestCase):
    """``headscale serve`` (the installed console script) is found by Headplane's /proc scan."""

    def test_comm_and_cmdline(self):
        """The running server's comm is ``headscale`` and its cmdline ``headscale serve -c CONFIG``."""
        from headscale_tw.testing.realclient.server import installed_headscale

        server = self.start_server(launcher=[installed_headscale()])
        pid = server.process.pid
        with open(f"/proc/{pid}/comm") as f:
            self.assertEqual(f.read().strip(), "headscale")
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            args = [a for a in f.read().split(b"\0") if a]
        self.assertEqual(args, [b"headscale", b"serve", b"-c", server.config_path.encode()])
        self.assertEqual(server.http_get("/health").status, 200)
