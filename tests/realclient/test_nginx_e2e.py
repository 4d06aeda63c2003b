# -*- test-case-name: tests.realclient.test_nginx_e2e -*-
"""
A real nginx in front of the server, with official clients.

Debian's nginx runs in the test's private namespace with the shipped development
site (deploy/nginx/headscale-development.conf; only its certificate and log
paths substituted): TLS on 127.0.0.1:8443, the HTTP redirect on 127.0.0.1:8000,
the server behind it on plain HTTP 127.0.0.1:8080 with ``server_url`` pointing
at nginx. Two official clients register through it, reach Running, and ping
each other over the server's DERP relay, which they reach through nginx too.
"""

from __future__ import annotations

import json
import os
import re

from headscale_tw.testing.realclient._process import wait_for
from headscale_tw.testing.realclient.component import http_ready
from headscale_tw.testing.realclient.nginx import NginxSites, fetch_raw
from headscale_tw.testing.realclient.scenario import REGION_CODE, ScenarioMixin, server_config
from headscale_tw.testing.realclient.testcase import RealClientTestCase
from headscale_tw.version import HEADSCALE_VERSION

__all__ = ["NginxFrontTests"]

SITE = "headscale-development.conf"
FRONT = "https://127.0.0.1:8443"


class NginxFrontTests(ScenarioMixin, RealClientTestCase):
    """Official clients work through the shipped nginx site."""

    def start_front(self):
        """The server on plain HTTP behind nginx (the dev site), and nginx itself, both in the namespace."""
        self.ca = self.make_ca()
        self.config_yaml = server_config(None, listen="127.0.0.1:8080", server_url=FRONT)
        server = self.start_server(self.config_yaml)
        sites = NginxSites(os.path.join(self.namespace.runtime_dir, "nginx"), {SITE: {
            "/etc/headscale-tw/dev-tls/cert.pem": self.ca.cert_pem,
            "/etc/headscale-tw/dev-tls/key.pem": self.ca.key_pem,
        }})
        checked = sites.test()
        self.assertEqual(checked.returncode, 0, checked.stderr)
        nginx = sites.component(self.namespace, ready=http_ready(self.namespace, FRONT + "/health", {200}))
        nginx.start(30)
        return server, sites, nginx

    def test_clients_through_nginx(self):
        """Two official clients register through nginx, reach Running and ping each other via DERP through it;
        /verify through nginx admits one of their node keys."""
        server, sites, nginx = self.start_front()
        key = self.auth_key(server)
        a, b = self.up_nodes(server, key, ["alpha", "bravo"], always_use_derp=True)
        for node in (a, b):
            node.wait_for_state("Running")
        for node, peer in ((a, b), (b, a)):
            peer_ip = peer.ip()

            def pong(node=node, peer_ip=peer_ip):
                proc = node.ping(peer_ip, count=1, timeout=5, check=False)
                return proc.stdout if f"via DERP({REGION_CODE})" in proc.stdout else None

            out = wait_for(pong, 45, f"{node.name} to get a pong from {peer.name} via DERP", interval=0.3,
                           details=lambda: node.describe() + "\n" + nginx.describe())
            self.assertIn(f"pong from {peer.name}", out)
        # an external derper asking through nginx admits a registered node key, and no other
        node_key = a.status_json()["Self"]["PublicKey"]
        for key, allowed in ((node_key, True), ("nodekey:" + "7" * 64, False)):
            verdict = fetch_raw(self.namespace, FRONT + "/verify", self.ca.ca_pem, method="POST",
                                body=json.dumps({"NodePublic": key, "Source": "192.0.2.1"}).encode())
            self.assertEqual((verdict.status, json.loads(verdict.body)), (200, {"Allow": allowed}))
        # nginx logs an upgraded request when its connection ends: stop the clients, then nginx
        for node in (a, b):
            node.stop()
        nginx.stop()
        log = sites.access_log("headscale-dev.access.log")
        self.assertRegex(log, r'"POST /ts2021[^"]*" 101 ')
        self.assertRegex(log, r'"GET /derp[^"]*" 101 ')

    def test_front_routes(self):
        """Through nginx: /version answers, /health is not logged, /metrics is 404, HTTP redirects, headers set."""
        server, sites, nginx = self.start_front()
        version = fetch_raw(self.namespace, FRONT + "/version", self.ca.ca_pem)
        self.assertEqual((version.status, json.loads(version.body)["version"]), (200, HEADSCALE_VERSION))
        self.assertIn("max-age=", version.headers["strict-transport-security"])
        self.assertIn("default-src", version.headers["content-security-policy"])
        self.assertEqual(version.headers["x-frame-options"], "DENY")
        health = fetch_raw(self.namespace, FRONT + "/health", self.ca.ca_pem)
        self.assertEqual(health.status, 200)
        self.assertEqual(fetch_raw(self.namespace, FRONT + "/metrics", self.ca.ca_pem).status, 404)
        self.assertEqual(server.http_get("/version").status, 200)  # the same server, directly
        redirect = fetch_raw(self.namespace, "http://127.0.0.1:8000/version?x=1")
        self.assertEqual(redirect.status, 301)
        self.assertEqual(redirect.headers["location"], "https://127.0.0.1:8443/version?x=1")
        nginx.stop()
        log = sites.access_log("headscale-dev.access.log")
        self.assertIn("GET /version", log)
        self.assertIn("GET /metrics", log)
        self.assertNotRegex(log, re.escape("GET /health"))
