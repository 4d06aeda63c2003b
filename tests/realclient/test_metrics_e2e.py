# -*- test-case-name: tests.realclient.test_metrics_e2e -*-
"""
``/metrics`` and the access log of the real server while an official client (tailscaled 1.96.4) joins.
"""

from __future__ import annotations

import json

from prometheus_client.parser import text_string_to_metric_families

from headscale_tw.testing.realclient._process import wait_for
from headscale_tw.testing.realclient.scenario import ScenarioMixin
from headscale_tw.testing.realclient.testcase import RealClientTestCase

_ACCESS = "headscale_tw.web.access_log.AccessLog"


def _samples(text: str) -> dict:
    """``{(name, frozenset(labels)): value}`` as prometheus-client's parser reads the exposition."""
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def _value(samples: dict, name: str, **labels) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


class MetricsE2ETests(ScenarioMixin, RealClientTestCase):
    """An official client connecting moves Headscale's map and node-store series; the JSON log parses."""

    def scrape(self) -> dict:
        result = self.namespace.http_get("http://127.0.0.1:9090/metrics", timeout=5.0)
        self.assertEqual(result.status, 200)
        return _samples(result.body.decode())

    def test_official_client_moves_series(self):
        """After tailscaled registers and streams, the mapresponse, nodestore, node-state and HTTP series
        have moved, and every log line (JSON) parses, access-log lines carrying their fields."""
        server = self.start_tls_server(extra={"log": {"level": "debug", "format": "json"}})
        before = self.scrape()
        self.assertEqual(_value(before, "headscale_nodes_by_state", state="online"), 0)
        key = self.auth_key(server)
        (node,) = self.up_nodes(server, key, ["alpha"])
        node.wait_for_state("Running")

        def streaming():
            samples = self.scrape()
            return samples if _value(samples, "headscale_nodes_by_state", state="online") == 1 else None

        during = wait_for(streaming, 30, "the node to be online in /metrics", interval=0.3, details=server.describe)
        self.assertGreaterEqual(_value(during, "headscale_mapresponse_sent_total", status="ok", type="full"), 1)
        self.assertGreaterEqual(_value(during, "headscale_mapresponse_generated_total", response_type="full"), 1)
        self.assertGreaterEqual(_value(during, "headscale_mapresponse_endpoint_updates_total", status="ok"), 1)
        self.assertEqual(_value(during, "headscale_nodestore_operations_total", operation="put"), 1)
        self.assertEqual(_value(during, "headscale_nodestore_nodes"), 1)
        self.assertGreaterEqual(_value(during, "headscale_nodestore_peers_calculation_duration_seconds_count"), 1)
        self.assertEqual(_value(during, "headscale_map_sessions"), 1)
        self.assertEqual(_value(during, "headscale_users"), 1)
        self.assertGreaterEqual(_value(during, "headscale_http_requests_total", listener="noise",
                                       route="/machine/register", method="POST", status="200"), 1)
        self.assertGreaterEqual(_value(during, "headscale_http_requests_total", listener="control", route="/key",
                                       method="GET", status="200"), 1)
        self.assertGreaterEqual(_value(during, "headscale_http_requests_total", listener="unix",
                                       route="/api/v1/preauthkey", method="POST", status="200"), 1)
        self.assertGreater(_value(during, "headscale_db_query_duration_seconds_count"), 0)

        with open(server.log_path, encoding="utf-8") as f:
            records = [json.loads(line) for line in f if line.strip()]
        access = [r for r in records if r.get("namespace") == _ACCESS]
        register = [r for r in access if r.get("route") == "/machine/register"]
        self.assertTrue(register, server.describe())
        self.assertEqual((register[0]["listener"], register[0]["level"], register[0]["status"]),
                         ("noise", "debug", 200))
        self.assertEqual(register[0]["client"], "127.0.0.1")
        self.assertTrue({"time", "message", "method", "path", "bytes", "latency_ms"} <= set(register[0]))
        self.assertTrue([r for r in access if r["listener"] == "unix" and r["level"] == "info"])
        self.assertNotIn(key.rsplit("-", 1)[-1], json.dumps(records))
