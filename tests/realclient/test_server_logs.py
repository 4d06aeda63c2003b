# -*- test-case-name: tests.realclient.test_server_logs -*-
"""
The real server's log: ``log.level`` governs every line, garbage stays at debug,
secrets never appear, and the SQLite files are private (0600).
"""

from __future__ import annotations

import os
import sys

from headscale_tw.testing.realclient.testcase import RealClientTestCase
from tests.realclient.test_startup_failures import config_yaml

#: Opens N connections to /derp, upgrades, sends a frame the server must refuse, and closes;
#: prints how many upgrades the server accepted (101).
_GARBAGE_DERP = r"""
import socket, sys
count, upgraded = int(sys.argv[1]), 0
for _ in range(count):
    s = socket.create_connection(("127.0.0.1", 8080), timeout=5)
    s.sendall(b"GET /derp HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: DERP\r\nConnection: Upgrade\r\n\r\n")
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = s.recv(4096)
        if not chunk:
            break
        head += chunk
    upgraded += head.startswith(b"HTTP/1.1 101")
    s.sendall(b"\xff\x00\x00\x00\x10" + b"\x00" * 16)
    try:
        while s.recv(4096):
            pass
    except OSError:
        pass
    s.close()
print(upgraded)
"""

#: GET /api/v1/user with an API key in the query string and in an Authorization header.
_KEY_REQUESTS = r"""
import sys, urllib.request, urllib.error
key = sys.argv[1]
for url, headers in (("http://127.0.0.1:8080/api/v1/user?apikey=" + key, {}),
                     ("http://127.0.0.1:8080/api/v1/user?key=" + key + "&x=1", {}),
                     ("http://127.0.0.1:8080/api/v1/user", {"Authorization": "Bearer " + key})):
    try:
        print(urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=5).status)
    except urllib.error.HTTPError as e:
        print(e.code)
"""


class ServerLogTests(RealClientTestCase):
    """What the running server writes to its log, at each level."""

    def read_log(self, server) -> str:
        """The server's whole log so far."""
        with open(server.log_path) as f:
            return f.read()

    def garbage_derp(self, count: int) -> None:
        """Send ``count`` refused DERP connections from inside the namespace; all must be upgraded first."""
        proc = self.namespace.run([sys.executable, "-I", "-c", _GARBAGE_DERP, str(count)], timeout=120)
        self.assertEqual(proc.stdout.strip(), str(count), proc.stderr)

    def test_error_level_silences_info_and_debug(self):
        """With log.level error a start, garbage connections and a stop write no line at all."""
        server = self.start_server(config_yaml(log={"level": "error"}))
        self.garbage_derp(20)
        self.assertEqual(server.http_get("/health").status, 200)
        server.stop()  # twistd ends by re-raising the SIGTERM it got
        lines = [line for line in self.read_log(server).splitlines() if line.strip()]
        self.assertEqual(lines, [])

    def test_garbage_derp_connections_quiet_at_info(self):
        """300 refused DERP connections add no log line at info: the log is the same length as before."""
        server = self.start_server()
        before = len(self.read_log(server).splitlines())
        self.garbage_derp(300)
        self.assertEqual(server.http_get("/health").status, 200)
        after = self.read_log(server).splitlines()
        self.assertEqual(after[before:], [])

    def test_api_key_redacted_in_access_log(self):
        """At debug the access log shows requests, with an API key in ?apikey=, ?key= or a header redacted."""
        server = self.start_server(config_yaml(log={"level": "debug"}))
        secret = "S3cretPart" * 4
        key = f"hskey-api-abcdefabcdef-{secret}"
        proc = self.namespace.run([sys.executable, "-I", "-c", _KEY_REQUESTS, key], timeout=30)
        self.assertEqual(proc.stdout.split(), ["401", "401", "401"], proc.stderr)
        log = self.read_log(server)
        self.assertIn("/api/v1/user?apikey=***", log)
        self.assertIn("/api/v1/user?key=***&x=1", log)
        self.assertNotIn(secret, log)

    def test_sqlite_files_private(self):
        """The database, its -wal and -shm files are created with mode 0600."""
        server = self.start_server()
        self.assertEqual(server.cli("users", "create", "alice").returncode, 0)
        base = os.path.join(server.directory, "var", "db.sqlite")
        modes = {suffix: os.stat(base + suffix).st_mode & 0o777 for suffix in ("", "-wal", "-shm")}
        self.assertEqual(modes, {"": 0o600, "-wal": 0o600, "-shm": 0o600})
