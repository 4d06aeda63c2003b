"""
The server as a real process: durability under ``kill -9`` and secrets kept out of logs.

These run ``twistd headscale`` in a private namespace (like the other real-client
tests) and talk to its admin API over the unix socket, which is reachable from
outside the namespace.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import threading

from headscale_tw.testing.realclient.scenario import ScenarioMixin
from headscale_tw.testing.realclient.testcase import RealClientTestCase


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float = 10.0):
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self._path)


def api(server, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
    """One admin API call over the server's unix socket."""
    conn = _UnixHTTPConnection(server.unix_socket)
    try:
        conn.request(method, path, body=None if body is None else json.dumps(body),
                     headers={"content-type": "application/json"})
        response = conn.getresponse()
        return response.status, json.loads(response.read() or b"{}")
    finally:
        conn.close()


class DurabilityTests(ScenarioMixin, RealClientTestCase):
    """Committed writes survive the server being killed with SIGKILL."""

    def test_kill_9_mid_burst_loses_no_committed_row(self):
        """Users whose creation the API confirmed are all there after kill -9 and a restart."""
        server = self.start_tls_server()
        confirmed: list[str] = []
        lock = threading.Lock()
        enough = threading.Event()
        stop = threading.Event()

        def writer(worker: int):
            for i in range(10_000):
                if stop.is_set():
                    return
                name = f"w{worker}-u{i}"
                try:
                    status, _ = api(server, "POST", "/api/v1/user", {"name": name})
                except (OSError, http.client.HTTPException, ValueError):
                    return  # the server died under us: this write was never confirmed
                if status == 200:
                    with lock:
                        confirmed.append(name)
                        if len(confirmed) >= 150:
                            enough.set()

        threads = [threading.Thread(target=writer, args=(w,), daemon=True) for w in range(4)]
        for t in threads:
            t.start()
        self.assertTrue(enough.wait(60), "the burst of writes did not get going")
        os.kill(server.process.pid, signal.SIGKILL)  # a process this test started
        stop.set()
        for t in threads:
            t.join(15)
        server.process.popen.wait(10)

        server = self.start_server(self.config_yaml)
        status, body = api(server, "GET", "/api/v1/user")
        self.assertEqual(status, 200)
        stored = {u["name"] for u in body["users"]}
        with lock:
            missing = [name for name in confirmed if name not in stored]
        self.assertGreaterEqual(len(confirmed), 150)
        self.assertEqual(missing, [])


class SecretsTests(ScenarioMixin, RealClientTestCase):
    """Key secrets are shown once and never written to the server's log."""

    def test_secrets_not_in_server_log(self):
        """Neither a pre-auth key used by a real client nor an API key used over HTTPS reaches the log."""
        server = self.start_tls_server()
        preauth = self.auth_key(server)
        status, body = api(server, "POST", "/api/v1/apikey", {})
        self.assertEqual(status, 200)
        apikey = body["apiKey"]
        node = self.start_node("alpha", ssl_cert_file=self.ca.ca_pem)
        node.up(server.url, authkey=preauth, hostname="alpha")
        probe = (
            "import ssl,urllib.request;"
            f"r=urllib.request.Request('https://127.0.0.1:8443/api/v1/user',headers={{'Authorization':'Bearer {apikey}'}});"
            "print(urllib.request.urlopen(r,context=ssl._create_unverified_context()).status)"
        )
        self.assertEqual(self.namespace.run([os.sys.executable, "-I", "-c", probe]).stdout.strip(), "200")
        with open(server.log_path) as f:
            log = f.read()
        for key in (preauth, apikey):
            secret = key.split("-", 3)[3]  # hskey-<kind>-<prefix>-<secret>; the secret may contain "-"
            self.assertGreaterEqual(len(secret), 16)
            self.assertNotIn(secret, log)
        self.assertIn("alpha", log)  # the log did record the registration


class NoiseKeyTests(ScenarioMixin, RealClientTestCase):
    """The Noise key is generated once, kept private, and survives restarts."""

    def test_key_stable_across_restart(self):
        """GET /key?v=133 answers the zero legacy key and the same Noise key after a restart;
        the key file has mode 0600."""
        server = self.start_tls_server()
        first = json.loads(server.http_get("/key?v=133").body)
        self.assertEqual(first["legacyPublicKey"], "mkey:" + "0" * 64)
        self.assertRegex(first["publicKey"], r"^mkey:[0-9a-f]{64}$")
        key_file = os.path.join(server.directory, "var", "noise_private.key")
        self.assertEqual(os.stat(key_file).st_mode & 0o777, 0o600)
        server = self.restart_server(server)
        self.assertEqual(json.loads(server.http_get("/key?v=133").body), first)
