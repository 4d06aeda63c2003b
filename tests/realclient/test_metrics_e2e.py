# -*- test-case-name: tests.realclient.test_metrics_e2e -*-
"""
``/metrics`` and the access log of the real server while an official client (tailscaled 1.96.4) joins.
"""

from __future__ import annotations

import json
import os
from urllib.parse import quote

from headscale_tw import secrets
from headscale_tw.testing.prometheus import labelled_samples, sample_value
from headscale_tw.testing.realclient._process import wait_for
from headscale_tw.testing.realclient.component import http_ready
from headscale_tw.testing.realclient.scenario import ScenarioMixin
from headscale_tw.testing.realclient.testcase import RealClientTestCase

_ACCESS = "headscale_tw.web.access_log.AccessLog"

_ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
_PROMETHEUS = "/usr/bin/prometheus"
_PROMETHEUS_URL = "http://127.0.0.1:9099"


class MetricsE2ETests(ScenarioMixin, RealClientTestCase):
    """An official client connecting moves Headscale's map and node-store series; the JSON log parses."""

    def scrape(self) -> dict:
        result = self.namespace.http_get("http://127.0.0.1:9090/metrics", timeout=5.0)
        self.assertEqual(result.status, 200)
        return labelled_samples(result.body.decode())

    def test_official_client_moves_series(self):
        """After tailscaled registers and streams, the mapresponse, nodestore, node-state and HTTP series
        have moved, and every log line (JSON) parses, access-log lines carrying their fields."""
        server = self.start_tls_server(extra={"log": {"level": "debug", "format": "json"}})
        before = self.scrape()
        self.assertEqual(sample_value(before, "headscale_nodes_by_state", state="online"), 0)
        key = self.auth_key(server)
        (node,) = self.up_nodes(server, key, ["alpha"])
        node.wait_for_state("Running")

        def streaming():
            samples = self.scrape()
            return samples if sample_value(samples, "headscale_nodes_by_state", state="online") == 1 else None

        during = wait_for(streaming, 30, "the node to be online in /metrics", interval=0.3, details=server.describe)
        self.assertGreaterEqual(sample_value(during, "headscale_mapresponse_sent_total", status="ok", type="full"), 1)
        self.assertGreaterEqual(sample_value(during, "headscale_mapresponse_generated_total", response_type="full"), 1)
        self.assertGreaterEqual(sample_value(during, "headscale_mapresponse_endpoint_updates_total", status="ok"), 1)
        self.assertEqual(sample_value(during, "headscale_nodestore_operations_total", operation="put"), 1)
        self.assertEqual(sample_value(during, "headscale_nodestore_nodes"), 1)
        self.assertGreaterEqual(sample_value(during, "headscale_nodestore_peers_calculation_duration_seconds_count"), 1)
        self.assertEqual(sample_value(during, "headscale_map_sessions"), 1)
        self.assertEqual(sample_value(during, "headscale_users"), 1)
        self.assertGreaterEqual(sample_value(during, "headscale_http_requests_total", listener="noise",
                                       route="/machine/register", method="POST", status="200"), 1)
        self.assertGreaterEqual(sample_value(during, "headscale_http_requests_total", listener="control", route="/key",
                                       method="GET", status="200"), 1)
        self.assertGreaterEqual(sample_value(during, "headscale_http_requests_total", listener="unix",
                                       route="/api/v1/preauthkey", method="POST", status="200"), 1)
        self.assertGreater(sample_value(during, "headscale_db_query_duration_seconds_count"), 0)

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
        self.assertNotIn(secrets.parse_key(key)[2], json.dumps(records))

    def start_prometheus(self):
        """Debian's Prometheus in the namespace, scraping the server every second and loading the shipped alerts."""
        if not os.access(_PROMETHEUS, os.X_OK):
            raise AssertionError(f"{_PROMETHEUS} is missing: run tools/ensure-test-services.sh (step 70-prometheus)")
        folder = os.path.join(self.namespace.runtime_dir, "prometheus")
        os.makedirs(os.path.join(folder, "data"), exist_ok=True)
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [os.path.abspath(os.path.join(_ROOT, "deploy", "prometheus", "alerts.yml"))],
            "scrape_configs": [{"job_name": "headscale-tw", "static_configs": [{"targets": ["127.0.0.1:9090"]}]}],
        }
        config_path = os.path.join(folder, "prometheus.yml")
        with open(config_path, "w") as f:
            json.dump(config, f)  # JSON is YAML
        argv = [_PROMETHEUS, f"--config.file={config_path}", f"--storage.tsdb.path={folder}/data",
                "--web.listen-address=127.0.0.1:9099", "--log.level=warn"]
        return self.start_component("prometheus", argv, ready=http_ready(self.namespace, _PROMETHEUS_URL + "/-/ready",
                                                                          {200}))

    def query(self, expr: str) -> dict:
        result = self.namespace.http_get(f"{_PROMETHEUS_URL}/api/v1/query?query={quote(expr)}", timeout=5.0)
        return json.loads(result.body or b"{}")

    def test_real_prometheus_evaluates_dashboard_and_alerts(self):
        """A real Prometheus scraping the server while an official client is connected evaluates every
        Grafana panel query and every shipped alert rule without error; the online node shows in its answers."""
        server = self.start_tls_server()
        prometheus = self.start_prometheus()
        (node,) = self.up_nodes(server, self.auth_key(server), ["alpha"])
        node.wait_for_state("Running")

        def online_in_prometheus():
            answer = self.query('sum(headscale_nodes_by_state{job="headscale-tw",state="online"})')
            values = [float(r["value"][1]) for r in answer.get("data", {}).get("result", [])]
            return values == [1.0]

        wait_for(online_in_prometheus, 30, "Prometheus to scrape the online node", interval=0.5,
                 details=prometheus.describe)
        # rate() needs two samples inside its window: a few more scrapes
        def scrapes() -> float:
            answer = self.query('count_over_time(up{job="headscale-tw"}[1m])')
            return max([float(r["value"][1]) for r in answer.get("data", {}).get("result", [])], default=0.0)

        wait_for(lambda: scrapes() >= 4, 30, "four scrapes", interval=0.5, details=prometheus.describe)

        with open(os.path.join(_ROOT, "deploy", "grafana", "headscale-tw.json")) as f:
            dashboard = json.load(f)
        exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", ())]
        empty = []
        for expr in exprs:
            answer = self.query(expr.replace("$__rate_interval", "1m").replace("$job", ".*"))
            self.assertEqual(answer.get("status"), "success", f"{expr}: {answer}")
            if not answer["data"]["result"]:
                empty.append(expr)
        # every panel has data, except those waiting for a 5xx answer or a map stream to end
        self.assertEqual([e for e in empty if 'status=~"5.."' not in e and "mapresponse_ended" not in e], [])

        def rules_evaluated():
            rules = json.loads(self.namespace.http_get(f"{_PROMETHEUS_URL}/api/v1/rules", timeout=5.0).body)
            found = [r for g in rules["data"]["groups"] for r in g["rules"]]
            return found if found and all(r.get("lastEvaluation", "").startswith("20") for r in found) else None

        rules = wait_for(rules_evaluated, 30, "the alert rules to be evaluated", interval=0.5,
                         details=prometheus.describe)
        self.assertEqual([r["name"] for r in rules if r["health"] != "ok"], [])
        with open(os.path.join(_ROOT, "deploy", "prometheus", "alerts.yml")) as f:
            self.assertEqual(len(rules), f.read().count("- alert:"))
