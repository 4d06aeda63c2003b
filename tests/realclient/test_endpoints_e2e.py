"""
The public endpoints of a running server, as wired by service.py.

Unit tests cover each resource alone; this checks that the real process mounts
them all on its listeners (plain HTTP here, default test config).
"""

from __future__ import annotations

import json

from headscale_tw.testing.realclient.testcase import RealClientTestCase


class EndpointsTests(RealClientTestCase):
    """What a running server answers outside the Noise channel."""

    def test_public_endpoints(self):
        """/health, /key, /derp/probe, /generate_204, /bootstrap-dns and /metrics answer;
        /machine/* is not reachable outside Noise."""
        server = self.start_server()
        self.assertEqual(json.loads(server.http_get("/health").body), {"status": "pass"})
        self.assertIn("publicKey", json.loads(server.http_get("/key?v=133").body))
        self.assertEqual(server.http_get("/key").status, 400)
        self.assertEqual(server.http_get("/derp/probe").status, 200)
        self.assertEqual(server.http_get("/generate_204").status, 204)
        self.assertEqual(json.loads(server.http_get("/bootstrap-dns").body), {"127.0.0.1": ["127.0.0.1"]})
        self.assertEqual(server.http_get("/machine/map").status, 404)
        metrics = self.namespace.http_get("http://127.0.0.1:9090/metrics")
        self.assertEqual(metrics.status, 200)
        self.assertIn(b"headscale_derp_clients 0.0", metrics.body)
        self.assertIn(b"headscale_nodes 0.0", metrics.body)
