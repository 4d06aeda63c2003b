# -*- test-case-name: tests.realclient.test_chromium_pages -*-
"""
Our sign-in pages rendered by a real browser: Debian's headless Chromium.

In one private namespace: the test provider (``oidc-provider`` over https),
our server (``oidc.*`` set, only the engineering group allowed) and
``tailscaled``, whose ``tailscale up`` gives a pending ``/register/<auth_id>``.
Chromium (:mod:`headscale_tw.testing.chromium`), also inside the namespace,
loads each page once, prints its DOM and takes a screenshot; the test checks
the DOM text and that the PNG is a real render (its size, and more than one
flat colour). The sign-ins at the provider's forms are done by the urllib
browser, stopped at the redirect to our callback, so that the callback itself
is loaded by Chromium. The screenshots stay in the test's log folder.

A second test does the whole sign-in in Chromium itself: a long-running
headless Chromium (a namespace ``Component`` with DevTools on a loopback port)
is driven by :mod:`headscale_tw.testing.chromium_cdp` through our
``/register`` redirect, the provider's login and consent forms, our
confirmation page and its button; ``tailscale up`` then finishes as alice.
"""

from __future__ import annotations

import json
import os
import re
import sys
from typing import Any

from headscale_tw.testing.chromium import Render, decode_png, render, start_devtools_browser
from headscale_tw.testing.realclient._process import HarnessError, wait_for
from headscale_tw.testing.realclient.oidc import start_oidc_provider
from headscale_tw.testing.realclient.scenario import ScenarioMixin
from headscale_tw.testing.realclient.server import source_pythonpath
from headscale_tw.testing.realclient.testcase import RealClientTestCase

__all__ = ["ChromiumPagesTests"]

SERVER_URL = "https://127.0.0.1:8443"
SECRET = "chromium-client-secret-0123456789"
WINDOW = (800, 600)


class ChromiumPagesTests(ScenarioMixin, RealClientTestCase):
    """The register redirect, the confirmation and the refusal pages, as Chromium renders them."""

    timeout = 300

    def start_everything(self) -> tuple[Any, str]:
        """Provider, server and a ``tailscale up`` waiting for a person; ``(server, login URL)``.

        ``self.up`` is the ``tailscale up`` process, ``self.node`` its node.
        """
        self.ca = self.make_ca()
        self.provider, bundle = start_oidc_provider(self.namespace, self.log_dir, self.ca, SECRET, SERVER_URL)
        settings = {"issuer": self.provider.issuer, "client_id": "headscale", "client_secret": SECRET,
                    "scope": ["openid", "profile", "email", "groups"], "allowed_groups": ["engineering"]}
        server = self.start_tls_server(extra={"oidc": settings}, extra_env={"SSL_CERT_FILE": bundle})
        node = self.node = self.start_node("walker", ssl_cert_file=self.ca.ca_pem)
        up_log = os.path.join(self.log_dir, "up-walker.log")
        self.up = self.namespace.spawn("up-walker", [node.binaries.tailscale, f"--socket={node.socket}", "up",
                                           f"--login-server={server.url}", "--hostname=walker", "--timeout=120s"],
                             env=node.env, log_path=up_log)

        def auth_url() -> str | None:
            with open(up_log) as f:
                m = re.search(r"(https://127\.0\.0\.1:8443/register/\S+)", f.read())
            return m.group(1) if m else None

        return server, wait_for(auth_url, 30, "tailscale up to print the login URL", interval=0.2,
                                details=node.describe)

    def callback_url(self, register_url: str, login: str) -> str:
        """Sign ``login`` in at the provider (urllib browser in the namespace); our callback URL, not yet loaded."""
        env = self.namespace.env({"PYTHONPATH": os.pathsep.join(source_pythonpath())})
        argv = [sys.executable, "-m", "headscale_tw.testing.oidc_browser", "--login", login,
                "--cafile", self.ca.ca_pem, "--cafile", self.provider.ca_pem,
                "--stop-at", SERVER_URL + "/oidc/callback", register_url]
        proc = self.namespace.run(argv, env=env, timeout=60)
        result = json.loads(proc.stdout or "{}")
        if result.get("status") != 302:
            raise HarnessError(f"the browser did not reach our callback: {result or proc.stderr[-2000:]}")
        return result["url"]

    def render(self, name: str, url: str) -> Render:
        """Load ``url`` in Chromium once; the screenshot goes to ``<log_dir>/<name>.png``."""
        page = render(self.namespace, url, os.path.join(self.log_dir, f"{name}.png"),
                      trusted_certs=(self.ca.cert_pem, self.provider.ca.cert_pem), window=WINDOW)
        self.assertEqual((page.image.width, page.image.height), WINDOW, "the screenshot has the window's size")
        self.assertGreater(len(page.image.colours()), 2, f"{name}: the screenshot is not a flat image")
        self.assertGreater(page.image.ink(), 0.002, f"{name}: the screenshot shows something besides background")
        return page

    def test_pages_render(self) -> None:
        """Register leads to the provider's login form; alice's callback shows the confirmation; bob's a refusal."""
        server, url = self.start_everything()

        register = self.render("register", url)
        self.assertIn('name="login"', register.dom, "our /register redirects to the provider's login form")

        confirmation = self.render("confirmation", self.callback_url(url, "alice"))
        self.assertIn("<h1>Confirm machine registration</h1>", confirmation.dom)
        self.assertIn("alice@example.com", confirmation.dom)
        self.assertRegex(confirmation.dom, r'<form method="post" action="/register/confirm/[^"]+\?token=')
        self.assertIn("Register this machine</button>", confirmation.dom)

        refusal = self.render("refusal", self.callback_url(url, "bob"))
        self.assertIn("<h1>Sign-in refused</h1>", refusal.dom)
        self.assertIn("None of your groups is allowed to sign in here.", refusal.dom)
        self.assertNotIn("<form", refusal.dom)

        unknown = self.render("unknown", SERVER_URL + "/register/no-such-registration")
        self.assertIn("<h1>Sign-in failed</h1>", unknown.dom)
        self.assertIn("registration request is unknown", unknown.dom)
        self.assertEqual(json.loads(server.cli("users", "list", "-o", "json").stdout) or [], [],
                         "rendering the pages registered nobody")

    def test_whole_login_in_chromium(self) -> None:
        """alice signs in and confirms in Chromium itself (DevTools), and her machine runs as hers."""
        server, url = self.start_everything()
        browser, port = start_devtools_browser(self.namespace, (self.ca.cert_pem, self.provider.ca.cert_pem),
                                               window=WINDOW)
        env = self.namespace.env({"PYTHONPATH": os.pathsep.join(source_pythonpath())})
        shot = os.path.join(self.log_dir, "registered.png")
        proc = self.namespace.run([sys.executable, "-m", "headscale_tw.testing.chromium_cdp", "--port", str(port),
                                   "--login", "alice", "--until", "Machine registered", "--screenshot", shot, url],
                                  env=env, timeout=120)
        outcome = json.loads(proc.stdout or "{}")
        self.assertNotIn("error", outcome, f"{outcome} {proc.stderr[-2000:]}\n{browser.describe()}")
        self.assertIn("Machine registered", outcome["text"])
        self.assertIn("registered to Alice Example", outcome["text"])
        visited = outcome["visited"]
        self.assertTrue(visited[0].startswith(self.provider.issuer), visited)
        self.assertTrue(any(u.startswith(SERVER_URL + "/oidc/callback?") for u in visited), visited)
        self.assertTrue(visited[-1].startswith(SERVER_URL + "/register/confirm/"), visited)
        with open(shot, "rb") as f:
            image = decode_png(f.read())
        # A screenshot of the viewport: the window's width, its height less the (headless) window frame.
        self.assertEqual(image.width, WINDOW[0])
        self.assertGreater(image.height, WINDOW[1] // 2)
        self.assertGreater(image.ink(), 0.002)

        wait_for(lambda: self.up.returncode is not None, 60, "tailscale up to finish", interval=0.2,
                 details=self.node.describe)
        self.assertEqual(self.up.returncode, 0, self.up.describe())
        self.assertEqual(self.node.backend_state(), "Running")
        nodes = json.loads(server.cli("nodes", "list", "-o", "json").stdout)
        self.assertEqual([(n["given_name"], n["user"]["name"]) for n in nodes], [("walker", "alice")])
        browser.stop()
