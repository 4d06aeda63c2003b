# -*- test-case-name: tests.realclient.test_throttle_e2e -*-
"""
Brute-force throttling as the official client meets it (tailscaled 1.96.4).

All clients of the harness share one source address (127.0.0.1 in the test's
namespace), so the same client that guessed is the one that is throttled.
"""

from __future__ import annotations

__all__ = ["PreauthThrottleE2ETests"]

import json
import math
import re
import time

from headscale_tw.testing.realclient.scenario import ScenarioMixin
from headscale_tw.testing.realclient.testcase import RealClientTestCase
from headscale_tw.throttle import PREAUTH_KEYS


class PreauthThrottleE2ETests(ScenarioMixin, RealClientTestCase):
    """tailscaled with a wrong key is throttled, is told why, backs off, and gets in with the right key."""

    def _failures(self) -> tuple[float, float]:
        body = self.namespace.http_get("http://127.0.0.1:9090/metrics").body.decode()

        def value(name):
            match = re.search(rf'^{name}{{kind="preauth_key"}} (\S+)$', body, re.M)
            return float(match.group(1)) if match else 0.0

        return value("headscale_auth_failures_total"), value("headscale_auth_throttled_total")

    def test_wrong_key_throttled_then_right_key(self):
        """`tailscale up` with a wrong key soon shows the throttle's message; the failures stay within
        the bucket however fast tailscaled retries; the right key then brings the node up."""
        server = self.start_tls_server()
        key = self.auth_key(server)
        wrong = key[:-6] + ("AAAAAA" if not key.endswith("AAAAAA") else "BBBBBB")  # right prefix, wrong secret
        node = self.start_node("guesser", ssl_cert_file=self.ca.ca_pem)
        started = time.monotonic()
        outputs = []
        for _ in range(PREAUTH_KEYS.burst + 5):
            proc = node.up(server.url, authkey=wrong, timeout=10, check=False)
            outputs.append((proc.returncode, (proc.stderr + proc.stdout).strip()))
            if "too many failed" in outputs[-1][1]:
                break
        self.assertEqual(outputs[0], (1, "backend error: invalid auth key"))
        code, text = outputs[-1]
        self.assertEqual(code, 1)
        self.assertRegex(text, r"^backend error: too many failed pre-auth keys from 127\.0\.0\.1; try again in \d+ s$")
        # tailscaled keeps retrying in the background (n-squared back-off); the throttle holds it.
        failures, refused = self._failures()
        elapsed = time.monotonic() - started
        self.assertLessEqual(failures, PREAUTH_KEYS.burst + math.ceil(elapsed * PREAUTH_KEYS.per_second))
        self.assertGreaterEqual(refused, 1)

        # The right key: refused while the bucket is empty, then tailscaled's own retry gets in.
        node.up(server.url, authkey=key, timeout=10, check=False)
        node.wait_for_state("Running", timeout=90)
        self.assertEqual(len(json.loads(server.cli("nodes", "list", "-o", "json").stdout)), 1)
