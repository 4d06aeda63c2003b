# -*- test-case-name: tests.realclient.test_ha_failover_e2e -*-
"""
Three server instances on one PostgreSQL behind the shipped nginx HA site, in one namespace.

The topology of docs/high-availability.md, shrunk onto one loopback:

* instances ``one``, ``two``, ``three`` listen on plain HTTP ``127.0.0.1:8081``-``8083``
  (control and DERP), metrics on ``127.0.0.1:9091``-``9093``, STUN on UDP
  ``3478``-``3480``; all share ``server_url`` :data:`FRONT`, one database (over
  PostgreSQL's unix socket), one Noise private key (a client may fetch ``/key``
  from one instance and upgrade ``/ts2021`` on another) and one DERP mesh key.
  They serve one DERP region (999) whose node is the front (the embedded region
  takes host and port from ``server_url``) and mesh with each other over plain
  HTTP, so two clients whose DERP connections land on different instances still
  reach each other. The mesh uses static ``mesh_peers``: behind one name no
  instance has a DERP URL of its own for the mesh from the database to list
  (docs/high-availability.md, *DERP across instances*);
* Debian's nginx runs ``deploy/nginx/headscale-ha.conf`` with only the upstream
  addresses, listen addresses, certificate and log paths substituted: TLS on
  ``127.0.0.1:8443``.

:class:`HACluster` starts, kills (``SIGKILL`` by PID), stops and restarts
instances and reads how many map streams each one holds from its
``headscale_nodes_connected`` gauge. It needs no trial test case, so the timed
runs under ``headscale_tw.bench`` use it too.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from headscale_tw.testing.realclient._process import HarnessError, wait_for
from headscale_tw.testing.realclient.component import Component, http_ready
from headscale_tw.testing.realclient.namespace import Namespace
from headscale_tw.testing.realclient.nginx import NginxSites
from headscale_tw.testing.realclient.scenario import server_config
from headscale_tw.testing.realclient.server import HeadscaleServer
from headscale_tw.testing.realclient.tlsca import TestCA

__all__ = ["FRONT", "HA_SITE", "HACluster", "Instance", "INSTANCES", "postgres_socket_section"]

FRONT = "https://127.0.0.1:8443"
HA_SITE = "headscale-ha.conf"


@dataclass(frozen=True)
class Instance:
    """Where one instance listens."""

    name: str
    port: int
    metrics: int
    stun: int

    @property
    def listen(self) -> str:
        """Its ``listen_addr`` (plain HTTP behind nginx)."""
        return f"127.0.0.1:{self.port}"


INSTANCES = (Instance("one", 8081, 9091, 3478), Instance("two", 8082, 9092, 3479),
             Instance("three", 8083, 9093, 3480))
"""The three instances; the shipped site's upstream servers are replaced by their ports in this order."""

_SHIPPED_UPSTREAMS = ("10.0.0.11:8080", "10.0.0.12:8080", "10.0.0.13:8080")
_CONNECTED = re.compile(r"^headscale_nodes_connected\s+([0-9.eE+]+)\s*$", re.M)


def postgres_socket_section(name: str, user: str) -> dict[str, Any]:
    """A ``database`` section for database ``name`` reached over PostgreSQL's unix socket."""
    socket_dir = os.environ.get("HEADSCALE_TEST_PG_SOCKET_DIR", "/var/run/postgresql")
    return {"type": "postgres", "postgres": {"host": socket_dir, "name": name, "user": user}}


class HACluster:
    """Three instances and nginx in ``namespace``; nothing starts until :meth:`start`."""

    def __init__(self, namespace: Namespace, ca: TestCA, database: Mapping[str, Any],
                 extra: Mapping[str, Any] | None = None) -> None:
        """``database`` is the shared ``database`` section; ``extra`` updates every instance's top level."""
        if namespace.runtime_dir is None:
            raise HarnessError("start the namespace before building the cluster")
        self.namespace = namespace
        self.ca = ca
        self.database = dict(database)
        self.extra = dict(extra or {})
        shared = os.path.join(namespace.runtime_dir, "ha-shared")
        os.makedirs(shared, exist_ok=True)
        self.noise_key = os.path.join(shared, "noise_private.key")
        self.mesh_key = os.path.join(shared, "mesh.key")
        with open(self.mesh_key, "w") as f:
            f.write(os.urandom(32).hex() + "\n")
        self.servers: dict[str, HeadscaleServer] = {}
        self.nginx: Component | None = None
        self.sites: NginxSites | None = None

    def instance(self, name: str) -> Instance:
        """The :class:`Instance` called ``name``."""
        for spec in INSTANCES:
            if spec.name == name:
                return spec
        raise HarnessError(f"no instance {name!r}")

    def config_yaml(self, name: str) -> str:
        """Instance ``name``'s config: its own listeners, everything else shared."""
        spec = self.instance(name)
        peers = [f"http://{other.listen}/derp" for other in INSTANCES if other is not spec]
        return server_config(
            None, listen=spec.listen, server_url=FRONT, metrics=f"127.0.0.1:{spec.metrics}",
            stun=f"127.0.0.1:{spec.stun}", database=self.database,
            noise={"private_key_path": self.noise_key},
            derp={"region_code": "ha", "region_name": "ha", "mesh_key_path": self.mesh_key, "mesh_peers": peers},
            extra=self.extra,
        )

    # -- instances ---------------------------------------------------------

    def start(self, name: str, timeout: float = 30.0) -> HeadscaleServer:
        """Start instance ``name`` (again, after a kill or stop) and wait for its ``/health``."""
        old = self.servers.get(name)
        if old is not None and old.process is not None and old.process.running():
            raise HarnessError(f"instance {name} is still running")
        server = HeadscaleServer(self.namespace, self.config_yaml(name), name=name,
                                 extra_env={"SSL_CERT_FILE": self.ca.ca_pem})
        self.servers[name] = server
        return server.start(timeout)

    def start_all(self) -> None:
        """Start the three instances one after another (the first creates the shared Noise key), then nginx."""
        for spec in INSTANCES:
            self.start(spec.name)
        self.start_front()

    def kill(self, name: str) -> int:
        """``SIGKILL`` instance ``name`` by PID and reap it; return the PID."""
        process = self.servers[name].process
        if process is None:
            raise HarnessError(f"instance {name} was never started")
        pid = process.pid
        process.kill()
        return pid

    def stop(self, name: str) -> int | None:
        """Stop instance ``name`` cleanly (SIGTERM); return its exit status."""
        return self.servers[name].stop()

    def running(self) -> list[str]:
        """Names of the instances whose process runs."""
        return [name for name, server in self.servers.items()
                if server.process is not None and server.process.running()]

    def any_running(self) -> HeadscaleServer:
        """A running instance (for CLI calls)."""
        names = self.running()
        if not names:
            raise HarnessError("no instance is running")
        return self.servers[names[0]]

    def connected(self, name: str) -> int | None:
        """Instance ``name``'s ``headscale_nodes_connected``, or None when it does not answer."""
        spec = self.instance(name)
        result = self.namespace.http_get(f"http://127.0.0.1:{spec.metrics}/metrics", timeout=2.0)
        if result.status != 200:
            return None
        match = _CONNECTED.search(result.body.decode("utf-8", "replace"))
        return int(float(match.group(1))) if match else None

    def streaming(self) -> dict[str, int]:
        """``{instance: map streams}`` for the running instances holding at least one."""
        counts = {name: self.connected(name) for name in self.running()}
        return {name: n for name, n in counts.items() if n}

    def wait_streams(self, total: int, timeout: float = 30.0) -> dict[str, int]:
        """Wait until the running instances together hold ``total`` map streams; return them by instance."""
        def settled() -> dict[str, int] | None:
            counts = self.streaming()
            return counts if sum(counts.values()) == total else None

        return wait_for(settled, timeout, f"{total} map streams across the running instances", interval=0.2,
                        details=self.describe)

    # -- the load balancer -------------------------------------------------

    def start_front(self, timeout: float = 30.0) -> Component:
        """nginx with the shipped HA site in front of the three instances."""
        substitutions = {old: spec.listen for old, spec in zip(_SHIPPED_UPSTREAMS, INSTANCES)}  # in both upstreams
        substitutions.update({
            "listen 80;": "listen 127.0.0.1:8000;",
            "listen [::]:80;\n": "",
            "listen 443 ssl http2;": "listen 127.0.0.1:8443 ssl http2;",
            "listen [::]:443 ssl http2;\n": "",
            "/etc/letsencrypt/live/headscale.example.com/fullchain.pem": self.ca.cert_pem,
            "/etc/letsencrypt/live/headscale.example.com/privkey.pem": self.ca.key_pem,
        })
        runtime_dir = self.namespace.runtime_dir
        assert runtime_dir is not None  # the namespace is started
        self.sites = NginxSites(os.path.join(runtime_dir, "nginx"), {HA_SITE: substitutions})
        checked = self.sites.test()
        if checked.returncode != 0:
            raise HarnessError(f"nginx -t refused the HA site: {checked.stderr}")
        self.nginx = self.sites.component(self.namespace, ready=http_ready(self.namespace, FRONT + "/health", {200}))
        self.nginx.start(timeout)
        return self.nginx

    def close(self) -> None:
        """Stop nginx and every instance still running (before the database is dropped)."""
        if self.nginx is not None:
            self.nginx.stop()
        for server in self.servers.values():
            server.stop()

    def describe(self) -> str:
        """Every instance's and nginx's state and log tail."""
        parts = [server.describe(20) for server in self.servers.values()]
        if self.nginx is not None:
            parts.append(self.nginx.describe(20))
        return "\n".join(parts)
