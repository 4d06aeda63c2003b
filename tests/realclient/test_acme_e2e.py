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
import re
import sys

from headscale_tw.testing.pebble import PebbleACME
from headscale_tw.testing.realclient._process import wait_for
from headscale_tw.testing.realclient.scenario import OnPostgres, ScenarioMixin, server_config
from headscale_tw.testing.realclient.server import _TWISTD, HeadscaleServer
from headscale_tw.testing.realclient.testcase import RealClientTestCase

__all__ = ["AcmeCertificateTests"]

_VERIFIED_GET = (
    "import ssl,sys,urllib.request\n"
    "ctx=ssl.create_default_context(cafile=sys.argv[2])\n"
    "print(urllib.request.urlopen(sys.argv[1],timeout=5,context=ctx).status)\n"
)


def _served_leaf(namespace, port: int, root: str) -> str | None:
    """SHA-256 of the leaf certificate served on ``port`` (verified against ``root``), or None."""
    done = namespace.run([sys.executable, "-I", "-c", _LEAF_SHA256, "localhost", str(port), root], timeout=20)
    return done.stdout.strip() if done.returncode == 0 else None


class AcmeCertificateTests(ScenarioMixin, RealClientTestCase):
    """The server serves a certificate it obtained from a real ACME server, and official clients use it."""

    def start_acme_server(self, challenge: str, name: str = "server", cert_validity: int | None = None):
        """pebble in the namespace, then a server whose only certificate source is ACME."""
        listen_port, http_port = 8443, self.namespace.allocate_port()
        pebble = PebbleACME(os.path.join(self.log_dir, f"pebble-{name}"), http_port=http_port,
                            tls_port=listen_port, namespace=self.namespace, cert_validity=cert_validity)
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

    def test_renewal_while_clients_stay_connected(self):
        """With 90-second certificates the server renews at two thirds of the lifetime and swaps the new one
        into its running listener; the official clients that registered over the first one keep working."""
        server, root = self.start_acme_server("TLS-ALPN-01", cert_validity=90)
        first = _served_leaf(self.namespace, 8443, root)
        self.assertIsNotNone(first)
        key = self.auth_key(server)
        alpha, bravo = self.up_nodes(server, key, ["alpha", "bravo"], ssl_cert_file=root)

        def renewed() -> bool:
            leaf = _served_leaf(self.namespace, 8443, root)
            return leaf is not None and leaf != first

        wait_for(renewed, 150, "the renewed certificate to be served", interval=1.0, details=server.describe)
        with open(server.log_path) as f:
            self.assertGreaterEqual(f.read().count("serving the certificate for localhost"), 2)
        self.assertIn("pong from bravo", alpha.ping(bravo.ip(), count=3).stdout)
        self.assertEqual(alpha.backend_state(), "Running")

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


_LEAF_SHA256 = (
    "import hashlib,socket,ssl,sys\n"
    "ctx=ssl.create_default_context(cafile=sys.argv[3])\n"
    "with socket.create_connection((sys.argv[1],int(sys.argv[2])),timeout=5) as raw:\n"
    "    with ctx.wrap_socket(raw,server_hostname=sys.argv[1]) as s:\n"
    "        print(hashlib.sha256(s.getpeercert(binary_form=True)).hexdigest())\n"
)


class SharedAcmeCertificateTests(OnPostgres, ScenarioMixin, RealClientTestCase):
    """Two servers on one PostgreSQL database share one ACME account and certificate from real pebble."""

    def query(self, sql: str) -> list[tuple]:
        """Run one query on the test database from outside the namespace."""
        return self.execute(sql, fetch=True)

    def execute(self, sql: str, fetch: bool = False) -> list[tuple]:
        """Run one statement on the test database from outside the namespace, committed."""
        import psycopg2

        from headscale_tw.testing.db import postgres_dsn

        conn = psycopg2.connect(**{**postgres_dsn(), "dbname": self.postgres_database.postgres.name, "connect_timeout": 5})
        try:
            with conn, conn.cursor() as cursor:
                cursor.execute(sql)
                return cursor.fetchall() if fetch else []
        finally:
            conn.close()

    def acme_config(self, listen_port: int, http_port: int, directory_url: str, log_level: str = "info") -> str:
        return server_config(None, listen=f"127.0.0.1:{listen_port}", server_url=f"https://localhost:{listen_port}",
                             database=self.database_config(),
                             metrics=f"127.0.0.1:{self.namespace.allocate_port()}",
                             stun=f"127.0.0.1:{self.namespace.allocate_port()}",
                             extra={"tls_letsencrypt_hostname": "localhost",
                                    "tls_letsencrypt_challenge_type": "HTTP-01",
                                    "tls_letsencrypt_listen": f"127.0.0.1:{http_port}",
                                    "tls_letsencrypt_cache_dir": "./var/acme",
                                    "acme_url": directory_url,
                                    "log": {"level": log_level}})

    def leaf_sha256(self, port: int, root: str) -> str | None:
        done = self.namespace.run([sys.executable, "-I", "-c", _LEAF_SHA256, "localhost", str(port), root], timeout=20)
        return done.stdout.strip() if done.returncode == 0 else None

    def test_one_order_answered_by_the_other_instance(self):
        """The lease holder orders once; pebble validates HTTP-01 only through the other server, which
        answers; both serve the same pebble certificate and the database holds it once."""
        import datetime

        from headscale_tw.testing.db import open_test_database, resolve

        self.database_config()
        # The schema, and the lease held by nobody who runs, until both servers are up.
        db = open_test_database(self, self.postgres_database)
        later = datetime.datetime.now(datetime.timezone.utc)
        resolve(db.leases.acquire("acme:localhost", "the-test", 3600.0, now=later))
        one_http, two_http = self.namespace.allocate_port(), self.namespace.allocate_port()
        pebble = PebbleACME(os.path.join(self.log_dir, "pebble"), http_port=two_http, tls_port=8443,
                            namespace=self.namespace)
        os.makedirs(pebble.directory, exist_ok=True)
        pebble.start()
        self.addCleanup(pebble.stop)
        env = {"SSL_CERT_FILE": pebble.ca_pem}
        one = self.start_server(self.acme_config(8443, one_http, pebble.directory_url), name="one", extra_env=env)
        self.addCleanup(one.stop)  # before the database is dropped
        # At debug, server two's log shows the HTTP-01 listener's access lines (pebble's validation).
        two = self.start_server(self.acme_config(8444, two_http, pebble.directory_url, log_level="debug"),
                                name="two", extra_env=env)
        self.addCleanup(two.stop)

        def instance_id() -> str | None:
            with open(one.log_path) as f:
                found = re.search(r"change feed listening on \S+ as instance (\w+)", f.read())
            return found.group(1) if found else None

        one_id = wait_for(instance_id, 30, "server one's instance id in its log", interval=0.2,
                          details=one.describe)
        # Hand the lease to server one: its keeper renews it at its next attempt and orders.
        self.execute(f"UPDATE leases SET holder = '{one_id}' WHERE name = 'acme:localhost'")
        root = os.path.join(pebble.directory, "issuer-root.pem")
        with open(root, "wb") as f:
            f.write(pebble.issuer_pem())

        served: dict[int, str | None] = {}

        def both_serve() -> bool:
            for port in (8443, 8444):
                served[port] = self.leaf_sha256(port, root)
            return None not in served.values()

        wait_for(both_serve, 90, "both servers to serve pebble's certificate", interval=0.5,
                 details=lambda: one.describe() + two.describe())
        self.assertEqual(served[8443], served[8444])
        self.assertEqual(self.query("SELECT serial FROM acme_certificates WHERE hostname = 'localhost'"), [(1,)])
        self.assertEqual(len(self.query("SELECT directory_url FROM acme_accounts")), 1)
        with open(one.log_path) as f:
            self.assertIn("holding the acme:localhost lease", f.read())
        with open(two.log_path) as f:
            log = f.read()
        self.assertNotIn("holding the acme:localhost lease", log)
        self.assertIn("serving the certificate for localhost", log)
        self.assertIn('"GET /.well-known/acme-challenge/', log)  # pebble's validation reached server two
