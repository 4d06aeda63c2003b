# -*- test-case-name: tests.realclient.test_scenario -*-
"""
Shared building blocks for end-to-end scenarios with official clients.

* :func:`server_config` builds the server's YAML from keyword sections:
  control and DERP on one TLS listener (``https://127.0.0.1:8443`` by default),
  STUN on UDP, SQLite under ``./var``, MagicDNS under ``tail.example``; every
  section can be overridden or added (``database``, ``derp``, ``noise``,
  ``node``, ``policy``, ``dns``, ``extra``).
* :class:`OnPostgres` (mix in before :class:`ScenarioMixin`) puts the server on a
  fresh PostgreSQL database.
* :class:`ScenarioMixin` (mix into a
  :class:`~.testcase.RealClientTestCase`): :meth:`~ScenarioMixin.start_tls_server`,
  :meth:`~ScenarioMixin.restart_server`, :meth:`~ScenarioMixin.auth_key`,
  :meth:`~ScenarioMixin.up_nodes` (optionally concurrent),
  :meth:`~ScenarioMixin.peers_by_name`.
* :func:`fetch_via_socks` fetches ``http://HOST:PORT/PATH`` through a node's
  SOCKS5 proxy (``tailscaled --socks5-server``), from inside the namespace, and
  :func:`start_http_server` serves a folder on the namespace's loopback.

In userspace networking a connection to a node's tailnet address is handed to
``127.0.0.1:PORT`` in the node's host (here: the shared namespace), so one HTTP
server on the loopback answers for every node; what a fetch proves is that the
tailnet carried it from the proxying node to the target node.
"""

from __future__ import annotations

import base64
import json
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import yaml

from headscale_tw.testing.realclient._process import HarnessError, ManagedProcess, wait_for
from headscale_tw.testing.realclient.namespace import Namespace
from headscale_tw.testing.realclient.node import TailscaleNode
from headscale_tw.testing.realclient.server import HeadscaleServer
from headscale_tw.testing.realclient.tlsca import TestCA

__all__ = [
    "BASE_DOMAIN",
    "REGION_CODE",
    "REGION_ID",
    "SQLITE",
    "ScenarioMixin",
    "SocksFetchError",
    "fetch_via_socks",
    "peers_by_name",
    "serve_files",
    "server_config",
    "start_http_server",
]

BASE_DOMAIN = "tail.example"
REGION_ID = 999
REGION_CODE = "test"
SQLITE: Mapping[str, Any] = {"type": "sqlite", "sqlite": {"path": "./var/db.sqlite"}}
"""The default ``database`` section: SQLite in the server's ``./var``."""


def server_config(
    ca: TestCA | None,
    *,
    listen: str = "127.0.0.1:8443",
    server_url: str | None = None,
    metrics: str = "127.0.0.1:9090",
    stun: str = "127.0.0.1:3478",
    database: Mapping[str, Any] | None = None,
    derp: Mapping[str, Any] | None = None,
    noise: Mapping[str, Any] | None = None,
    node: Mapping[str, Any] | None = None,
    policy: Mapping[str, Any] | None = None,
    dns: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> str:
    """The server's YAML: control and DERP on one listener (TLS with ``ca``), STUN, paths under ``./var``.

    ``derp`` updates ``derp.server``, ``noise`` and ``dns`` update their sections,
    ``database``/``node``/``policy`` are whole sections and ``extra`` updates the top level.
    """
    derp_server: dict[str, Any] = {
        "enabled": True,
        "region_id": REGION_ID,
        "region_code": REGION_CODE,
        "stun_listen_addr": stun,
        "private_key_path": "./var/derp_server_private.key",
    }
    derp_server.update(derp or {})
    scheme = "https" if ca is not None else "http"
    config: dict[str, Any] = {
        "server_url": server_url or f"{scheme}://{listen}",
        "listen_addr": listen,
        "metrics_listen_addr": metrics,
    }
    if ca is not None:
        config.update(tls_cert_path=ca.cert_pem, tls_key_path=ca.key_pem)
    config.update({
        "unix_socket": "./var/headscale.sock",
        "noise": {"private_key_path": "./var/noise_private.key", **(noise or {})},
        "database": dict(database or SQLITE),
        "derp": {"server": derp_server},
        "dns": {"base_domain": BASE_DOMAIN, **(dns or {})},
    })
    for name, section in (("node", node), ("policy", policy)):
        if section is not None:
            config[name] = dict(section)
    config.update(extra or {})
    return yaml.safe_dump(config, sort_keys=False)


def peers_by_name(status: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The peers of a ``tailscale status --json`` result, by ``HostName``."""
    return {p["HostName"]: p for p in (status.get("Peer") or {}).values()}


class ScenarioMixin:
    """Server, keys and nodes for a :class:`~.testcase.RealClientTestCase`.

    After :meth:`start_tls_server`, ``self.ca`` is the test CA (nodes trust it)
    and ``self.config_yaml`` the last server config.
    """

    ca: TestCA | None = None
    config_yaml: str = ""
    # Provided by RealClientTestCase, which this mixes into (annotations only: no class attributes).
    make_ca: Callable[[], TestCA]
    start_server: Callable[..., HeadscaleServer]
    start_node: Callable[..., TailscaleNode]

    def database_config(self) -> Mapping[str, Any]:
        """The ``database`` section for :meth:`start_tls_server` (override for PostgreSQL)."""
        return SQLITE

    def start_tls_server(self, name: str = "server", extra_env: Mapping[str, str] | None = None,
                         **config: Any) -> HeadscaleServer:
        """Start a server with :func:`server_config` (``config`` = its keywords); it trusts the test CA."""
        if self.ca is None:
            self.ca = self.make_ca()
        config.setdefault("database", self.database_config())
        self.config_yaml = server_config(self.ca, **config)
        env = {"SSL_CERT_FILE": self.ca.ca_pem, **(extra_env or {})}
        return self.start_server(self.config_yaml, name=name, extra_env=env)

    def restart_server(self, server: HeadscaleServer) -> HeadscaleServer:
        """Stop ``server`` and start a new one with the same config, name, folder and environment."""
        server.stop()
        with open(server.config_path) as f:
            config_yaml = f.read()
        extra_env = {"SSL_CERT_FILE": self.ca.ca_pem} if self.ca is not None else None
        return self.start_server(config_yaml, name=server.name, extra_env=extra_env)

    def auth_key(self, server: HeadscaleServer, user: str = "alice", reusable: bool = True,
                 ephemeral: bool = False, tags: Sequence[str] = ()) -> str:
        """A pre-auth key for ``user`` (created if missing); ``tags`` makes a tagged key."""
        users = json.loads(server.cli("users", "list", "-o", "json").stdout) or []
        if user not in {u["name"] for u in users}:
            server.cli("users", "create", user)
        args = ["preauthkeys", "create", "--user", user, "-o", "json"]
        args += ["--reusable"] if reusable else []
        args += ["--ephemeral"] if ephemeral else []
        args += [f"--tags={','.join(tags)}"] if tags else []
        return json.loads(server.cli(*args).stdout)["key"]

    def up_nodes(self, server: HeadscaleServer, key: str | Mapping[str, str], names: Sequence[str],
                 version: str | None = None,
                 concurrent: bool = False, timeout: float = 45, up_args: Sequence[str] = (),
                 **node_options: Any) -> list[TailscaleNode]:
        """Start a node per name (trusting the CA) and ``tailscale up`` each; ``up`` exiting 0 means Running.

        ``key`` is one pre-auth key for all, or a key per name. ``concurrent`` runs
        the ``up`` commands together (each one waits about 3 s for the client's
        HTTPS netcheck when UDP is off).
        """
        keys = {name: key for name in names} if isinstance(key, str) else dict(key)
        node_options.setdefault("ssl_cert_file", self.ca.ca_pem if self.ca is not None else None)
        nodes = [self.start_node(name, version=version, **node_options)
                 for name in names]

        def up(node: TailscaleNode) -> None:
            node.up(server.url, authkey=keys[node.name], hostname=node.name, timeout=timeout, extra_args=up_args)

        if concurrent and len(nodes) > 1:
            with ThreadPoolExecutor(len(nodes)) as pool:
                list(pool.map(up, nodes))
        else:
            for node in nodes:
                up(node)
        return nodes

    peers_by_name = staticmethod(peers_by_name)


class OnPostgres:
    """Mix in before :class:`ScenarioMixin`: the server's database is a fresh PostgreSQL database.

    The database is created once per test (on the first :meth:`database_config`) and dropped by the
    test. PostgreSQL runs outside the test's private network namespace; the server reaches it through
    its unix socket directory (``HEADSCALE_TEST_PG_SOCKET_DIR``, default ``/var/run/postgresql``),
    since sockets on the filesystem are not tied to a network namespace.
    """

    _postgres_database: Any = None

    @property
    def postgres_database(self) -> Any:
        """This test's :class:`~headscale_tw.testing.db.DatabaseConfig`, created on first use."""
        if self._postgres_database is None:
            from headscale_tw.testing.db import create_postgres_database

            self._postgres_database = create_postgres_database(self)
        return self._postgres_database

    def database_config(self) -> Mapping[str, Any]:
        """The ``database`` section naming this test's PostgreSQL database (the same on every call)."""
        postgres = self.postgres_database.postgres
        socket_dir = os.environ.get("HEADSCALE_TEST_PG_SOCKET_DIR", "/var/run/postgresql")
        return {"type": "postgres", "postgres": {"host": socket_dir, "name": postgres.name, "user": postgres.user}}


class SocksFetchError(HarnessError):
    """A fetch through a SOCKS5 proxy failed; the message says at which step."""


# GET http://HOST:PORT/PATH through the SOCKS5 proxy on 127.0.0.1:PROXY_PORT (RFC 1928,
# no authentication), stdlib only. Prints {"status": line, "body": base64} or {"error": why}.
_SOCKS5_FETCH = r"""
import base64, json, socket, struct, sys
proxy_port, host, port, path, timeout = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4], float(sys.argv[5])
def fail(why):
    print(json.dumps({"error": why}))
    sys.exit(0)
try:
    s = socket.create_connection(("127.0.0.1", proxy_port), timeout=timeout)
except OSError as e:
    fail("cannot connect to the proxy: %s" % e)
def recv_exactly(n, step):
    data = b""
    while len(data) < n:
        try:
            chunk = s.recv(n - len(data))
        except OSError as e:
            fail("%s: %s" % (step, e))
        if not chunk:
            fail("%s: the proxy closed the connection" % step)
        data += chunk
    return data
s.sendall(b"\x05\x01\x00")
if recv_exactly(2, "SOCKS5 greeting") != b"\x05\x00":
    fail("the proxy refused the no-authentication method")
s.sendall(b"\x05\x01\x00\x01" + socket.inet_aton(host) + struct.pack("!H", port))
reply = recv_exactly(4, "SOCKS5 CONNECT")
if reply[1] != 0:
    fail("SOCKS5 CONNECT failed with reply code %d" % reply[1])
recv_exactly({1: 4, 4: 16}[reply[3]] + 2, "SOCKS5 CONNECT address")
s.sendall(("GET %s HTTP/1.0\r\nHost: %s:%d\r\n\r\n" % (path, host, port)).encode())
data = b""
while True:
    try:
        chunk = s.recv(65536)
    except OSError as e:
        fail("reading the HTTP response: %s (%d bytes so far)" % (e, len(data)))
    if not chunk:
        break
    data += chunk
head, sep, body = data.partition(b"\r\n\r\n")
if not sep:
    fail("no HTTP response head: %r" % data[:200])
print(json.dumps({"status": head.split(b"\r\n")[0].decode(), "body": base64.b64encode(body).decode()}))
"""


def fetch_via_socks(namespace: Namespace, socks_port: int, host: str, port: int, path: str,
                    timeout: float = 20.0) -> tuple[str, bytes]:
    """GET ``http://host:port/path`` through the SOCKS5 proxy on ``127.0.0.1:socks_port`` in ``namespace``.

    Returns ``(status_line, body)``. Each socket step is bounded by ``timeout``;
    any failure (refused, timed out, closed) raises :class:`SocksFetchError`.
    """
    proc = namespace.run([sys.executable, "-I", "-c", _SOCKS5_FETCH, str(socks_port), host, str(port), path,
                          str(timeout)], timeout=timeout * 3 + 10)
    try:
        out = json.loads(proc.stdout)
    except ValueError:
        raise SocksFetchError(f"the SOCKS5 fetch helper failed (exit {proc.returncode}): "
                              f"{proc.stdout[-500:]} {proc.stderr[-1000:]}")
    if "error" in out:
        raise SocksFetchError(f"GET http://{host}:{port}{path} via SOCKS5 :{socks_port}: {out['error']}")
    return out["status"], base64.b64decode(out["body"])


def start_http_server(namespace: Namespace, name: str, port: int, directory: str,
                      probe: str = "/", timeout: float = 10.0, bind: str = "127.0.0.1") -> ManagedProcess:
    """Serve ``directory`` on ``bind:port`` in ``namespace`` (``python -m http.server``).

    Waits until ``probe`` answers 200 from inside the namespace.
    """
    web = namespace.spawn(name, [sys.executable, "-m", "http.server", str(port), "--bind", bind,
                                 "--directory", directory])
    url = f"http://{bind}:{port}{probe}"

    def answers() -> bool:
        web.check_running()
        return namespace.http_get(url).status == 200

    wait_for(answers, timeout, f"the HTTP server {name} on 127.0.0.1:{port}", interval=0.1, details=web.describe)
    return web


def serve_files(namespace: Namespace, name: str, port: int, files: Mapping[str, bytes],
                bind: str = "127.0.0.1") -> ManagedProcess:
    """Write ``files`` (name -> bytes) to a fresh folder and :func:`start_http_server` on it."""
    if namespace.runtime_dir is None:
        raise HarnessError("start the namespace before serving files in it")
    directory = os.path.join(namespace.runtime_dir, f"www-{name}")
    os.makedirs(directory)
    for filename, data in files.items():
        with open(os.path.join(directory, filename), "wb") as f:
            f.write(data)
    return start_http_server(namespace, name, port, directory, probe="/" + next(iter(files)), bind=bind)
