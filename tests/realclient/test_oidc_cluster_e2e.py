# -*- test-case-name: tests.realclient.test_oidc_cluster_e2e -*-
"""
An OIDC sign-in started on one headscale-tw process and finished on another.

Two server processes on one PostgreSQL database (reached through its unix
socket), as behind a load balancer: the same ``server_url`` (so the same
redirect URI at the provider), their own listeners, STUN ports and DERP regions.
In the test's private namespace with the real provider and ``tailscaled``:
``tailscale up`` against instance one prints ``/register/<auth_id>``; the
urllib browser opens it on instance one, signs alice in at the provider and
stops at the redirect to ``/oidc/callback``; that callback is then loaded from
instance two, where alice confirms. The client, still long-polling instance
one, reaches Running as alice. The same callback replayed on instance one is
refused: the started login was taken, in the database, by instance two.
"""

from __future__ import annotations

import json
import os
import re
import sys
from typing import Any

from headscale_tw.testing.realclient._process import HarnessError, wait_for
from headscale_tw.testing.realclient.oidc import start_oidc_provider
from headscale_tw.testing.realclient.scenario import OnPostgres, ScenarioMixin
from headscale_tw.testing.realclient.server import source_pythonpath
from headscale_tw.testing.realclient.testcase import RealClientTestCase
from tests.realclient import test_cluster_e2e as cluster

__all__ = ["OIDCClusterTests"]

SERVER_URL = "https://127.0.0.1:8443"
SECRET = "cluster-client-secret-0123456789"


class OIDCClusterTests(OnPostgres, ScenarioMixin, RealClientTestCase):
    """The provider's callback and the confirmation land on another instance than the login started on."""

    timeout = 300

    def start_instance(self, name: str, oidc: dict[str, Any], bundle: str) -> Any:
        """Instance ``name`` of the cluster test's instances, with ``server_url`` shared and ``oidc`` set."""
        spec = cluster.INSTANCES[name]
        other = "two" if name == "one" else "one"
        path = os.path.abspath(self.mktemp() + ".json")
        with open(path, "w") as f:
            json.dump({"Regions": {str(cluster.INSTANCES[other]["region"]): cluster.region(other)}}, f)
        server = self.start_tls_server(
            name=name, listen=spec["listen"], metrics=spec["metrics"], stun=f"127.0.0.1:{spec['stun']}",
            server_url=SERVER_URL, extra_env={"SSL_CERT_FILE": bundle},
            extra={"oidc": oidc, "derp": {"server": {
                "enabled": True, "region_id": spec["region"], "region_code": name, "region_name": name,
                "stun_listen_addr": f"127.0.0.1:{spec['stun']}",
                "private_key_path": "./var/derp_server_private.key",
            }, "paths": [path]}},
        )
        self.addCleanup(server.stop)  # before the database is dropped
        return server

    def browse(self, url: str, login: str, stop_at: str | None = None) -> dict[str, Any]:
        """The urllib browser inside the namespace, trusting the two test CAs; its JSON outcome."""
        env = self.namespace.env({"PYTHONPATH": os.pathsep.join(source_pythonpath())})
        argv = [sys.executable, "-m", "headscale_tw.testing.oidc_browser", "--login", login,
                "--cafile", self.ca.ca_pem, "--cafile", self.provider.ca_pem, url]
        if stop_at:
            argv += ["--stop-at", stop_at]
        proc = self.namespace.run(argv, env=env, timeout=60)
        result = json.loads(proc.stdout or "{}")
        if not result or "error" in result:
            raise HarnessError(f"the browser failed: {result or proc.stderr[-2000:]}")
        return result

    def test_callback_and_confirmation_on_the_other_instance(self) -> None:
        """Started on one, called back and confirmed on two: the node on one runs as alice; a replay on one fails."""
        self.ca = self.make_ca()
        self.provider, bundle = start_oidc_provider(self.namespace, self.log_dir, self.ca, SECRET, SERVER_URL)
        oidc = {"issuer": self.provider.issuer, "client_id": "headscale", "client_secret": SECRET,
                "scope": ["openid", "profile", "email", "groups"], "pkce": {"enabled": True}}
        one = self.start_instance("one", oidc, bundle)
        two = self.start_instance("two", oidc, bundle)
        node = self.start_node("walker", ssl_cert_file=self.ca.ca_pem)
        up_log = os.path.join(self.log_dir, "up-walker.log")
        up = self.namespace.spawn("up-walker", [node.binaries.tailscale, f"--socket={node.socket}", "up",
                                                f"--login-server={one.url}", "--hostname=walker", "--timeout=120s"],
                                  env=node.env, log_path=up_log)

        def auth_url() -> str | None:
            with open(up_log) as f:
                m = re.search(r"(https://127\.0\.0\.1:8443/register/\S+)", f.read())
            return m.group(1) if m else None

        url = wait_for(auth_url, 30, "tailscale up to print the login URL", interval=0.2, details=node.describe)
        callback = self.browse(url, "alice", stop_at=SERVER_URL + "/oidc/callback")["url"]
        self.assertTrue(callback.startswith(SERVER_URL + "/oidc/callback?"), callback)
        on_two = callback.replace("https://127.0.0.1:8443/", "https://127.0.0.1:8444/", 1)

        page = self.browse(on_two, "alice")
        self.assertEqual(page["status"], 200, page)
        self.assertIn("Machine registered", page["body"])
        self.assertTrue(page["visited"][-1].startswith("https://127.0.0.1:8444/register/confirm/"), page["visited"])

        replay = self.browse(callback, "alice")
        self.assertEqual(replay["status"], 400, replay)
        self.assertIn("already used", replay["body"])

        wait_for(lambda: up.returncode is not None, 60, "tailscale up to finish", interval=0.2, details=node.describe)
        self.assertEqual(up.returncode, 0, up.describe())
        self.assertEqual(node.backend_state(), "Running")
        nodes = json.loads(one.cli("nodes", "list", "-o", "json").stdout)
        self.assertEqual([(n["given_name"], n["user"]["name"]) for n in nodes], [("walker", "alice")])
        [user] = json.loads(two.cli("users", "list", "-o", "json").stdout)
        self.assertEqual((user["provider"], user["provider_id"]), ("oidc", f"{self.provider.issuer}/alice"))
