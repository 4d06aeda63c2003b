# -*- test-case-name: tests.deploy.test_nginx -*-
"""The shipped nginx sites are accepted by Debian bookworm's nginx and keep their promises."""

import os
import re

from twisted.trial import unittest

from headscale_tw.testing.realclient._process import HarnessError
from headscale_tw.testing.realclient.nginx import NginxSites, deploy_dir, site_copy
from headscale_tw.testing.realclient.tlsca import make_test_ca

__all__ = ["NginxConfigTests", "NginxHASiteTests", "NginxSiteRulesTests", "SiteCopyTests"]

PRODUCTION = "headscale-production.conf"
DEVELOPMENT = "headscale-development.conf"
HA = "headscale-ha.conf"


def _read(name):
    with open(os.path.join(deploy_dir(), "nginx", name)) as f:
        return f.read()


def _directives(text):
    """The site without its comments (these sites have no ``#`` inside quotes)."""
    return re.sub(r"#[^\n]*", "", text)


def _substitutions(name, ca):
    """The test certificate in place of the site's (each site names its own paths)."""
    if name in (PRODUCTION, HA):
        return {"/etc/letsencrypt/live/headscale.example.com/fullchain.pem": ca.cert_pem,
                "/etc/letsencrypt/live/headscale.example.com/privkey.pem": ca.key_pem}
    return {"/etc/headscale-tw/dev-tls/cert.pem": ca.cert_pem, "/etc/headscale-tw/dev-tls/key.pem": ca.key_pem}


def _locations(text):
    """``{location argument: body}`` of a site's locations (flat, as these sites are)."""
    pattern = re.compile(r"^\s*location\s+([^{]+)\{(.*?)\n    \}", re.S | re.M)
    return {m.group(1).strip(): m.group(2) for m in pattern.finditer(_directives(text))}


class SiteCopyTests(unittest.TestCase):
    """Substitution into a site copy is exact."""

    def test_missing_key_fails(self):
        """A substitution whose text is not in the site raises, naming it."""
        e = self.assertRaises(HarnessError, site_copy, "listen 443;", {"/etc/x.pem": "/tmp/x.pem"})
        self.assertIn("/etc/x.pem", str(e))


class NginxConfigTests(unittest.TestCase):
    """``nginx -t`` (Debian's 1.22) accepts each site, and both together."""

    def _test(self, sites, ca):
        result = NginxSites(self.mktemp(), {name: _substitutions(name, ca) for name in sites}).test()
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("test is successful", result.stderr)

    def test_each_and_both(self):
        """Each site alone, and all three in one http block, pass ``nginx -t``."""
        ca = make_test_ca(os.path.abspath(self.mktemp()))
        for sites in ([PRODUCTION], [DEVELOPMENT], [HA], [PRODUCTION, DEVELOPMENT, HA]):
            self._test(sites, ca)


class NginxSiteRulesTests(unittest.TestCase):
    """Every site follows the deployment rules (read from the files themselves)."""

    def test_nginx_122_syntax(self):
        """HTTP/2 is switched on in the listen line, never with the 1.25+ ``http2 on;``."""
        for name in (PRODUCTION, DEVELOPMENT, HA):
            text = _read(name)
            self.assertRegex(text, r"listen\s+[^;]*443 ssl http2;", name)
            self.assertNotRegex(text, r"^\s*http2\s+on\s*;", name)

    def test_upgrade_locations(self):
        """/ts2021 and /derp pass Upgrade and Connection on, unbuffered, with long timeouts."""
        for name in (PRODUCTION, DEVELOPMENT, HA):
            locations = _locations(_read(name))
            for where in ("= /ts2021", "/derp"):
                body = locations[where]
                self.assertIn("proxy_set_header Upgrade $http_upgrade;", body, (name, where))
                self.assertRegex(body, r"proxy_set_header Connection \$\w+connection_upgrade;")
                self.assertIn("proxy_buffering off;", body)
                self.assertIn("proxy_read_timeout 1h;", body)

    def test_headers_redirect_health_metrics(self):
        """HSTS, CSP and X-Frame-Options are set; HTTP redirects to HTTPS; /health is unlogged; /metrics is 404."""
        for name in (PRODUCTION, DEVELOPMENT, HA):
            text = _read(name)
            for header in ("Strict-Transport-Security", "Content-Security-Policy", "X-Frame-Options"):
                self.assertRegex(text, rf'add_header {header} "[^"]+" always;', (name, header))
            self.assertRegex(text, r"return 301 https://\$host[^;]*\$request_uri;")
            locations = _locations(text)
            self.assertIn("access_log off;", locations["= /health"])
            self.assertIn("proxy_pass", locations["= /health"])
            self.assertEqual(locations["= /metrics"].strip(), "return 404;")
            self.assertNotIn("9090", _directives(text))

    def test_three_rate_tiers(self):
        """Three request-rate zones, each used by some location, and a 429 when exceeded."""
        for name in (PRODUCTION, DEVELOPMENT, HA):
            text = _read(name)
            zones = re.findall(r"limit_req_zone \$binary_remote_addr zone=(\w+):", text)
            self.assertEqual(len(zones), 3, name)
            for zone in zones:
                self.assertIn(f"limit_req zone={zone} ", text)
            self.assertIn("limit_req_status 429;", text)

    def test_stun_direct(self):
        """STUN is documented as going straight to the server on UDP 3478, not through nginx."""
        for name in (PRODUCTION, DEVELOPMENT, HA):
            text = _read(name)
            self.assertIn("3478", text)
            self.assertNotIn("udp", _directives(text).lower())


class NginxHASiteTests(unittest.TestCase):
    """The high-availability site fails over between three instances."""

    def _upstream(self, name):
        text = _directives(_read(HA))
        body = re.search(rf"upstream {name} \{{(.*?)\}}", text, re.S).group(1)
        return body, re.findall(r"^\s*server\s+(\S+)\s+([^;]*);", body, re.M)

    def test_three_servers_passive_health(self):
        """Short requests go to three servers, each taken out after one failure for a bounded time."""
        body, servers = self._upstream("headscale_tw_ha")
        self.assertEqual(len(servers), 3, body)
        for _, params in servers:
            self.assertRegex(params, r"max_fails=1\b")
            self.assertRegex(params, r"fail_timeout=\d+s\b")
        self.assertIn("least_conn;", body)

    def test_streams_never_marked_down(self):
        """/ts2021 and /derp go to the same three servers with passive health off, as the site explains."""
        body, servers = self._upstream("headscale_tw_ha_streams")
        self.assertEqual([address for address, _ in servers], [a for a, _ in self._upstream("headscale_tw_ha")[1]])
        for _, params in servers:
            self.assertEqual(params.strip(), "max_fails=0")
        self.assertIn("least_conn;", body)
        locations = _locations(_read(HA))
        for where in ("= /ts2021", "/derp"):
            self.assertIn("proxy_pass http://headscale_tw_ha_streams;", locations[where])
        for where, location in locations.items():
            if "proxy_pass" in location and where not in ("= /ts2021", "/derp"):
                self.assertIn("proxy_pass http://headscale_tw_ha;", location, where)

    def test_next_upstream_on_connect_failure(self):
        """Only a refused or timed-out connect moves a request on (answers such as 503 are not failures),
        with a short connect timeout and bounded tries."""
        text = _directives(_read(HA))
        self.assertRegex(text, r"proxy_next_upstream error timeout;")
        self.assertNotIn("non_idempotent", text)
        self.assertNotRegex(text, r"proxy_next_upstream [^;]*http_")
        self.assertRegex(text, r"proxy_connect_timeout [1-5]s;")
        self.assertRegex(text, r"proxy_next_upstream_tries 3;")
        self.assertRegex(text, r"proxy_next_upstream_timeout \d+s;")
