"""
The built-in ACME certificate manager against a real ACME server (Debian's pebble) and official clients.

pebble, its DNS (challtestsrv: every name resolves to 127.0.0.1), the server and
the official clients all run in the test's private loopback-only namespace.
The server asks pebble for a certificate for ``localhost`` by TLS-ALPN-01 on its
own TLS listener; the clients trust only pebble's root, so reaching ``Running``
(control and DERP share that listener) proves they were served pebble's
certificate.
"""

from __future__ import annotations

import os
import sys

from headscale_tw.testing.pebble import PebbleACME
from headscale_tw.testing.realclient._process import wait_for
from headscale_tw.testing.realclient.scenario import ScenarioMixin, server_config
from headscale_tw.testing.realclient.server import _TWISTD, HeadscaleServer
from headscale_tw.testing.realclient.testcase import RealClientTestCase

__all__ = ["AcmeCertificateTests"]

_VERIFIED_GET = (
    "import ssl,sys,urllib.request\n"
    "ctx=ssl.create_default_context(cafile=sys.argv[2])\n"
    "print(urllib.request.urlopen(sys.argv[1],timeout=5,context=ctx).status)\n"
)


class AcmeCertificateTests(ScenarioMixin, RealClientTestCase):
    """The server serves a certificate it obtained from a real ACME server, and official clients use it."""

    def start_acme_server(self, challenge: str, name: str = "server"):
        """pebble in the namespace, then a server whose only certificate source is ACME."""
        listen_port, http_port = 8443, self.namespace.allocate_port()
        pebble = PebbleACME(os.path.join(self.log_dir, f"pebble-{name}"), http_port=http_port,
                            tls_port=listen_port, namespace=self.namespace)
        os.makedirs(pebble.directory, exist_ok=True)
        pebble.start()
        self.addCleanup(pebble.stop)
        config = server_config(None, listen=f"127.0.0.1:{listen_port}", server_url=f"https://localhost:{listen_port}",
                               extra={"tls_letsencrypt_hostname": "localhost",
                                      "tls_letsencrypt_challenge_type": challenge,
                                      "tls_letsencrypt_listen": f"127.0.0.1:{http_port}",
                                      "tls_letsencrypt_cache_dir": "./var/acme",
                                      "acme_url": pebble.directory_url})
        server = self.start_server(config, name=name, extra_env={"SSL_CERT_FILE": pebble.ca_pem})
        root = os.path.join(pebble.directory, "issuer-root.pem")
        with open(root, "wb") as f:
            f.write(pebble.issuer_pem())

        def verified() -> bool:
            done = self.namespace.run([sys.executable, "-I", "-c", _VERIFIED_GET,
                                       f"https://localhost:{listen_port}/health", root], timeout=20)
            return done.returncode == 0 and done.stdout.strip() == "200"

        wait_for(verified, 60, "the server to serve pebble's certificate", interval=0.3, details=server.describe)
        return server, root

    def test_clients_reach_running_over_acme_certificate(self):
        """Two official clients that trust only pebble's root register over HTTPS, reach Running and ping."""
        server, root = self.start_acme_server("TLS-ALPN-01")
        key = self.auth_key(server)
        alpha, bravo = self.up_nodes(server, key, ["alpha", "bravo"], ssl_cert_file=root)
        out = alpha.ping(bravo.ip(), count=3).stdout
        self.assertIn("pong from bravo", out)

    def test_http01_and_cache_across_restart(self):
        """HTTP-01 obtains the certificate; after a restart the cached one is served without a new order."""
        server, root = self.start_acme_server("HTTP-01")
        cache = os.path.join(server.directory, "var", "acme", "localhost.crt")
        with open(cache, "rb") as f:
            first = f.read()
        self.assertEqual(os.stat(cache.replace(".crt", ".key")).st_mode & 0o777, 0o600)
        server = self.restart_server(server)  # pebble's CA is not even trusted now: no order can succeed
        with open(cache, "rb") as f:
            self.assertEqual(f.read(), first)  # an order would have replaced it
        self.assertEqual(server.http_get("/health").status, 200)

    def test_acme_unreachable_at_first_start(self):
        """With no cached certificate and the ACME server unreachable the server exits non-zero, saying why."""
        closed = self.namespace.allocate_port()
        config = server_config(None, listen="127.0.0.1:8443", server_url="https://localhost:8443",
                               extra={"tls_letsencrypt_hostname": "localhost",
                                      "tls_letsencrypt_listen": f"127.0.0.1:{self.namespace.allocate_port()}",
                                      "tls_letsencrypt_cache_dir": "./var/acme",
                                      "acme_url": f"https://127.0.0.1:{closed}/dir"})
        server = HeadscaleServer(self.namespace, config)
        argv = [server.python, "-c", _TWISTD, "--nodaemon", "--pidfile=", "headscale", "-c", server.config_path]
        server.process = self.namespace.spawn(server.name, argv, env=server.env, log_path=server.log_path,
                                              cwd=server.directory)
        wait_for(lambda: server.process.returncode is not None, 60, "the server to stop", interval=0.2,
                 details=server.describe)
        self.assertNotEqual(server.process.returncode, 0)  # a failed start is never a clean stop
        with open(server.log_path) as f:
            log = f.read()
        self.assertIn("registering the ACME account", log)
