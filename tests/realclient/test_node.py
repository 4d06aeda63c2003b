"""Tests for headscale_tw.testing.realclient.node: the official tailscaled in a namespace."""

import os
import sys

from twisted.trial import unittest

from headscale_tw.testing.realclient._process import HarnessError, wait_for
from headscale_tw.testing.realclient.fetch import LATEST, OLD, RELEASES
from headscale_tw.testing.realclient.node import tailscale_version, tailscaled_env
from headscale_tw.testing.realclient.testcase import RealClientTestCase


class TailscaledEnvTests(unittest.TestCase):
    """The environment every harness tailscaled gets."""

    def test_safety_variables(self):
        """Logging to Tailscale is off, main control panics, portmapper is off, network assumed up."""
        env = tailscaled_env("/logs")
        self.assertEqual(env["TS_NO_LOGS_NO_SUPPORT"], "true")
        self.assertEqual(env["TS_PANIC_IF_HIT_MAIN_CONTROL"], "1")
        self.assertEqual(env["TS_DISABLE_PORTMAPPER"], "1")
        self.assertEqual(env["TS_ASSUME_NETWORK_UP_FOR_TEST"], "1")
        self.assertEqual(env["TS_LOGS_DIR"], "/logs")
        self.assertNotIn("SSL_CERT_FILE", env)
        self.assertNotIn("TS_DEBUG_ALWAYS_USE_DERP", env)

    def test_options(self):
        """CA file, DERP-only and debug dumps are switched on by their options."""
        env = tailscaled_env("/logs", ssl_cert_file="/ca.pem", always_use_derp=True, debug=True)
        self.assertEqual(env["SSL_CERT_FILE"], "/ca.pem")
        self.assertEqual(env["TS_DEBUG_ALWAYS_USE_DERP"], "1")
        self.assertEqual(env["TS_DEBUG_REGISTER"], "1")
        self.assertEqual(env["TS_DEBUG_MAP"], "1")


class ClientVersionTests(RealClientTestCase):
    """Each pinned binary reports the version it is pinned as."""

    def test_versions(self):
        """tailscale and tailscaled of both pinned releases report 1.96.4 and 1.78.1."""
        for version in (LATEST, OLD):
            bins = self.binaries(version)
            self.assertEqual(tailscale_version(self.namespace, bins), version)
            self.assertTrue(tailscale_version(self.namespace, bins, daemon=True).startswith(version))


class TailscaledTests(RealClientTestCase):
    """tailscaled starts in the namespace, answers on its socket, and is cleaned up."""

    def test_needs_login(self):
        """A fresh tailscaled reports BackendState NeedsLogin over its own socket."""
        node = self.start_node("n1")
        self.assertTrue(os.path.exists(node.socket))
        status = node.status_json()
        self.assertEqual(status["BackendState"], "NeedsLogin")
        self.assertTrue(status["Version"].startswith(LATEST))
        self.assertIn(node.pid, self.namespace.pids_inside())

    def test_old_version_needs_login(self):
        """The old pinned client (1.78.1) also starts and waits for login."""
        node = self.start_node("old", version=OLD)
        self.assertEqual(node.backend_state(), "NeedsLogin")
        self.assertTrue(node.status_json()["Version"].startswith(OLD))

    def test_two_nodes_distinct(self):
        """Two nodes in one namespace get distinct ports, sockets and state folders."""
        a, b = self.start_node("a"), self.start_node("b")
        self.assertNotEqual(a.port, b.port)
        self.assertNotEqual(a.socket, b.socket)
        self.assertEqual([a.backend_state(), b.backend_state()], ["NeedsLogin", "NeedsLogin"])

    def test_cleanup_by_pid(self):
        """Closing the namespace stops tailscaled by its PID and leaves nothing inside."""
        node = self.start_node("n1")
        pid = node.pid
        self.namespace.close()
        self.assertIsNotNone(node.process.returncode)
        self.assertNotIn(pid, self.namespace.pids_inside())
        self.assertEqual(self.namespace.pids_inside(), [])

    def test_stop(self):
        """stop() ends tailscaled cleanly (it handles SIGTERM and exits 0)."""
        node = self.start_node("n1")
        self.assertEqual(node.stop(), 0)
        self.assertFalse(node.process.running())

    def test_cli_failure_has_log_tail(self):
        """A failing CLI command raises with its output and the daemon's log tail."""
        node = self.start_node("n1")
        e = self.assertRaises(HarnessError, node.ip)
        self.assertIn("tailscale ip -4", str(e))
        self.assertIn("tailscaled-n1", str(e))

    def test_debug_log(self):
        """The daemon's log is captured to a file under the test's log folder."""
        node = self.start_node("n1")
        self.assertTrue(node.log_path.startswith(self.log_dir))
        self.assertIn("NeedsLogin", node.log_tail(200))


# A TLS server run inside the namespace that logs each request line and answers 418:
# enough to see how far the real client gets when it dials "control".
_TEAPOT = """
import http.server, ssl, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        sys.stdout.write("REQUEST %s\\n" % self.path); sys.stdout.flush()
        self.send_response(418); self.end_headers()
    def log_message(self, *a):
        pass
s = http.server.HTTPServer(("127.0.0.1", int(sys.argv[3])), H)
c = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER); c.load_cert_chain(sys.argv[1], sys.argv[2])
s.socket = c.wrap_socket(s.socket, server_side=True)
sys.stdout.write("LISTENING\\n"); sys.stdout.flush()
s.serve_forever()
"""


class ControlDialTests(RealClientTestCase):
    """The real client dials a login server over TLS using the throwaway CA."""

    def _teapot(self, port=8443):
        ca = self.make_ca()
        server = self.namespace.spawn(f"teapot-{port}", [sys.executable, "-c", _TEAPOT, ca.cert_pem, ca.key_pem,
                                                         str(port)])
        wait_for(lambda: "LISTENING" in server.log_tail(), 10, "the TLS server to listen", details=server.describe)
        return ca, server, f"https://127.0.0.1:{port}"

    def _dial(self, version, ca_file):
        ca, server, url = self._teapot()
        node = self.start_node("n1", version=version, ssl_cert_file=ca.ca_pem if ca_file else None)
        proc = node.up(url, authkey="tskey-unused", timeout=2, check=False)
        self.assertNotEqual(proc.returncode, 0)  # a teapot is no control server
        self.assertEqual(node.backend_state(), "NeedsLogin")
        return node, server

    def test_trusts_test_ca(self):
        """With SSL_CERT_FILE set to the test CA, 1.96.4 completes TLS and asks for /key?v=133."""
        node, server = self._dial(LATEST, ca_file=True)
        wait_for(lambda: "REQUEST /key?v=133" in server.log_tail(), 10, "the client's /key request",
                 details=lambda: server.describe() + "\n" + node.describe())

    def test_old_client_capability_version(self):
        """The old client (1.78.1) asks for /key with its pinned capability version, 109."""
        node, server = self._dial(OLD, ca_file=True)
        expected = f"REQUEST /key?v={RELEASES[OLD].capability_version}"
        wait_for(lambda: expected in server.log_tail(), 10, expected,
                 details=lambda: server.describe() + "\n" + node.describe())

    def test_rejects_unknown_ca(self):
        """Without the test CA the client refuses the certificate and sends no request."""
        node, server = self._dial(LATEST, ca_file=False)
        wait_for(lambda: "certificate signed by unknown authority" in node.log_tail(200), 10,
                 "the client's x509 error", details=node.describe)
        self.assertNotIn("REQUEST", server.log_tail())
