"""The shipped Prometheus files pass Debian's promtool, and docs/metrics.md shows the alert rules as shipped."""

import os
import re
import subprocess

import yaml
from twisted.trial import unittest

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
PROMTOOL = "/usr/bin/promtool"
ALERTS = os.path.join(ROOT, "deploy", "prometheus", "alerts.yml")


def promtool(*args: str) -> subprocess.CompletedProcess:
    """Run promtool; fail (never skip) when tools/ensure-test-services.d/70-prometheus.sh has not installed it."""
    if not os.access(PROMTOOL, os.X_OK):
        raise AssertionError(f"{PROMTOOL} is missing: run tools/ensure-test-services.sh (step 70-prometheus)")
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=60)


class PromtoolTests(unittest.TestCase):
    """promtool accepts the alert rules and the scrape example."""

    def test_alert_rules(self):
        """``promtool check rules`` accepts deploy/prometheus/alerts.yml and finds every rule."""
        proc = promtool("check", "rules", ALERTS)
        self.assertEqual(proc.returncode, 0, proc.stdout + proc.stderr)
        with open(ALERTS) as f:
            count = sum(len(group["rules"]) for group in yaml.safe_load(f)["groups"])
        self.assertIn(f"SUCCESS: {count} rules found", proc.stdout)

    def test_scrape_config(self):
        """``promtool check config`` accepts deploy/prometheus/prometheus.yml."""
        proc = promtool("check", "config", os.path.join(ROOT, "deploy", "prometheus", "prometheus.yml"))
        self.assertEqual(proc.returncode, 0, proc.stdout + proc.stderr)

    def test_docs_show_the_shipped_rules(self):
        """The alert rules in docs/metrics.md are those of deploy/prometheus/alerts.yml."""
        with open(os.path.join(ROOT, "docs", "metrics.md")) as f:
            shown = re.search(r"```yaml\n(groups:.*?)```", f.read(), re.S).group(1)
        with open(ALERTS) as f:
            self.assertEqual(yaml.safe_load(shown), yaml.safe_load(f))
