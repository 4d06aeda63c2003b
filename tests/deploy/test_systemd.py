# -*- test-case-name: tests.deploy.test_systemd -*-
"""The shipped systemd unit passes ``systemd-analyze verify`` and a security threshold."""

import os
import re
import shutil
import subprocess
import sys

from twisted.trial import unittest

from headscale_tw.testing.realclient.nginx import deploy_dir

__all__ = ["SystemdUnitTests", "MAX_EXPOSURE"]

UNIT = "headscale-tw.service"
SHIPPED_EXEC = "ExecStart=/opt/headscale-tw/bin/headscale serve"

#: Highest acceptable ``systemd-analyze security`` exposure (0 = locked down, 10 = none).
MAX_EXPOSURE = 2.0


def _unit_text():
    with open(os.path.join(deploy_dir(), "systemd", UNIT)) as f:
        return f.read()


def _settings(text):
    """``{key: [values]}`` of the unit's ``Key=value`` lines."""
    out = {}
    for line in text.splitlines():
        if "=" in line and not line.lstrip().startswith(("#", ";")):
            key, _, value = line.partition("=")
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def _systemd_analyze():
    path = shutil.which("systemd-analyze")
    if path is None:
        raise AssertionError("systemd-analyze is missing: apt-get install systemd "
                             "(tools/ensure-test-services.d/40-nginx-systemd.sh does it)")
    return path


class SystemdUnitTests(unittest.TestCase):
    """deploy/systemd/headscale-tw.service is valid and hardened."""

    def _installed_copy(self):
        """The unit with ExecStart pointing at this test run's installed ``headscale`` script."""
        script = os.path.join(os.path.dirname(sys.executable), "headscale")
        self.assertTrue(os.access(script, os.X_OK), f"{script} is not installed (pip install -e .)")
        text = _unit_text()
        self.assertIn(SHIPPED_EXEC, text)
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        path = os.path.join(directory, UNIT)
        with open(path, "w") as f:
            f.write(text.replace(SHIPPED_EXEC, f"ExecStart={script} serve"))
        return path

    def test_hardening_settings(self):
        """It runs ``headscale serve`` as its own user with the required hardening settings."""
        settings = _settings(_unit_text())
        self.assertEqual(settings["User"], ["headscale"])
        self.assertEqual(settings["Group"], ["headscale"])
        self.assertTrue(settings["ExecStart"][0].endswith("/headscale serve"))
        for key, value in [("StateDirectory", "headscale"), ("ProtectSystem", "strict"),
                           ("NoNewPrivileges", "true"), ("AmbientCapabilities", "CAP_NET_BIND_SERVICE"),
                           ("CapabilityBoundingSet", "CAP_NET_BIND_SERVICE"), ("ProtectHome", "true"),
                           ("PrivateTmp", "true")]:
            self.assertEqual(settings.get(key), [value], key)
        self.assertEqual(settings["ExecReload"], ["/bin/kill -HUP $MAINPID"])

    def test_verify(self):
        """``systemd-analyze verify`` accepts the unit (with ExecStart at the test's install)."""
        path = self._installed_copy()
        result = subprocess.run([_systemd_analyze(), "verify", path], capture_output=True, text=True, timeout=120)
        self.assertEqual(result.returncode, 0, result.stderr)
        problems = [line for line in result.stderr.splitlines() if UNIT in line]
        self.assertEqual(problems, [])

    def test_security_exposure(self):
        """``systemd-analyze security --offline=true`` rates the unit's exposure at most MAX_EXPOSURE."""
        path = self._installed_copy()
        result = subprocess.run([_systemd_analyze(), "security", "--offline=true", "--no-pager", path],
                                capture_output=True, text=True, timeout=120)
        match = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", result.stdout)
        self.assertIsNotNone(match, result.stdout[-2000:] + result.stderr)
        self.assertLessEqual(float(match.group(1)), MAX_EXPOSURE, result.stdout)
