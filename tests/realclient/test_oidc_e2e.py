# -*- test-case-name: tests.realclient.test_oidc_e2e -*-
"""
The official client signs a person in through a real OpenID Provider.

In one private namespace: the test provider (``oidc-provider`` over https with
its own throwaway CA), our server (``oidc.*`` set, trusting both CAs) and
``tailscaled``. ``tailscale up`` prints our ``/register/<auth_id>`` URL; a
cookie-keeping ``urllib`` browser, run inside the namespace, follows it through
the provider's login and consent forms, back to our confirmation page, and
confirms. The node then reaches Running as that person.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from datetime import datetime
from typing import Any

from headscale_tw.testing.realclient._process import HarnessError, wait_for
from headscale_tw.testing.realclient.oidc import start_oidc_provider
from headscale_tw.testing.realclient.scenario import ScenarioMixin
from headscale_tw.testing.realclient.server import source_pythonpath
from headscale_tw.testing.realclient.testcase import RealClientTestCase

__all__ = ["OIDCLoginTests"]

SERVER_URL = "https://127.0.0.1:8443"
SECRET = "e2e-client-secret-0123456789"


class OIDCLoginTests(ScenarioMixin, RealClientTestCase):
    """`tailscale up` without a key, finished by a person signing in at the provider."""

    timeout = 240

    def start_everything(self, policy: dict[str, Any] | None = None, id_token_ttl: int = 600,
                         **oidc: Any) -> tuple[Any, Any]:
        """Provider (its ID tokens valid ``id_token_ttl`` s), server (with ``oidc`` settings added, and
        ``policy`` as its section) and one started ``tailscaled``; ``(server, node)``."""
        self.ca = self.make_ca()
        self.provider, bundle = start_oidc_provider(self.namespace, self.log_dir, self.ca, SECRET, SERVER_URL, id_token_ttl=id_token_ttl)
        settings = {"issuer": self.provider.issuer, "client_id": "headscale", "client_secret": SECRET,
                    "scope": ["openid", "profile", "email", "groups"], "pkce": {"enabled": True}, **oidc}
        server = self.start_tls_server(extra={"oidc": settings}, extra_env={"SSL_CERT_FILE": bundle}, policy=policy)
        node = self.start_node("walker", ssl_cert_file=self.ca.ca_pem)
        return server, node

    def tailscale_up(self, server: Any, node: Any, log_name: str = "up-walker",
                     extra_args: tuple[str, ...] = ()) -> tuple[Any, str]:
        """Start ``tailscale up`` in the background; the process and the login URL it prints."""
        up_log = os.path.join(self.log_dir, f"{log_name}.log")
        up = self.namespace.spawn(
            log_name,
            [node.binaries.tailscale, f"--socket={node.socket}", "up", f"--login-server={server.url}",
             "--hostname=walker", "--timeout=90s", *extra_args],
            env=node.env, log_path=up_log)

        def auth_url() -> str | None:
            with open(up_log) as f:
                m = re.search(r"(https://127\.0\.0\.1:8443/register/\S+)", f.read())
            return m.group(1) if m else None

        return up, wait_for(auth_url, 30, "tailscale up to print the login URL", interval=0.2, details=node.describe)

    def browse(self, server: Any, url: str, login: str, cafiles: tuple[str, ...] | None = None) -> dict[str, Any]:
        """Run the urllib browser inside the namespace as ``login`` (trusting both CAs); its JSON outcome."""
        if cafiles is None:
            cafiles = (self.ca.ca_pem, self.provider.ca_pem)
        env = self.namespace.env({"PYTHONPATH": os.pathsep.join(source_pythonpath())})
        argv = [sys.executable, "-m", "headscale_tw.testing.oidc_browser", "--login", login, url]
        for cafile in cafiles:
            argv += ["--cafile", cafile]
        proc = self.namespace.run(argv, env=env, timeout=60)
        try:
            result = json.loads(proc.stdout)
        except ValueError:
            raise HarnessError(f"the browser failed (exit {proc.returncode}): {proc.stderr[-2000:]}")
        if "error" in result:
            raise HarnessError(f"the browser failed: {result['error']}\n{server.describe()}\n{self.namespace.describe()}")
        return result

    def test_person_signs_in_and_node_runs(self) -> None:
        """alice signs in, confirms, and the node runs as her new user with her provider details."""
        server, node = self.start_everything(allowed_domains=["example.com"])
        up, url = self.tailscale_up(server, node)
        page = self.browse(server, url, "alice")
        self.assertEqual(page["status"], 200, page)
        self.assertIn("Machine registered", page["body"])
        confirm_url = url.replace("/register/", "/register/confirm/") + "?token="
        self.assertTrue(page["visited"][-1].startswith(confirm_url), page["visited"])
        wait_for(lambda: up.returncode is not None, 60, "tailscale up to finish", interval=0.2, details=node.describe)
        self.assertEqual(up.returncode, 0, up.describe())
        self.assertEqual(node.backend_state(), "Running")
        nodes = json.loads(server.cli("nodes", "list", "-o", "json").stdout)
        self.assertEqual([(n["given_name"], n["user"]["name"]) for n in nodes], [("walker", "alice")])
        [user] = json.loads(server.cli("users", "list", "-o", "json").stdout)
        self.assertEqual(user["email"], "alice@example.com")
        self.assertEqual((user["provider"], user["provider_id"]), ("oidc", f"{self.provider.issuer}/alice"))

        # Signing in again from the same machine re-uses its node and address, and the same user.
        address, node_id = node.ip(), nodes[0]["id"]
        node.logout()
        up, url = self.tailscale_up(server, node, log_name="up-walker-again")
        self.assertEqual(self.browse(server, url, "alice")["status"], 200)
        wait_for(lambda: up.returncode is not None, 60, "tailscale up to finish", interval=0.2, details=node.describe)
        self.assertEqual(node.backend_state(), "Running")
        again = json.loads(server.cli("nodes", "list", "-o", "json").stdout)
        self.assertEqual([(n["id"], n["user"]["name"]) for n in again], [(node_id, "alice")])
        self.assertEqual(node.ip(), address)
        self.assertEqual(len(json.loads(server.cli("users", "list", "-o", "json").stdout)), 1)

    def test_node_expires_with_the_id_token(self) -> None:
        """With use_expiry_from_token the node's key expiry, as the client shows it, is the ID token's ``exp``."""
        server, node = self.start_everything(id_token_ttl=900, use_expiry_from_token=True)
        before = int(time.time())
        up, url = self.tailscale_up(server, node)
        self.assertEqual(self.browse(server, url, "alice")["status"], 200)
        wait_for(lambda: up.returncode is not None, 60, "tailscale up to finish", interval=0.2, details=node.describe)
        self.assertEqual((up.returncode, node.backend_state()), (0, "Running"), up.describe())
        after = int(time.time()) + 1
        [listed] = json.loads(server.cli("nodes", "list", "-o", "json").stdout)
        expiry = listed["expiry"]["seconds"]
        self.assertTrue(before + 900 <= expiry <= after + 900, (before, expiry, after))
        shown = node.status_json()["Self"]["KeyExpiry"]
        self.assertEqual(datetime.fromisoformat(shown.replace("Z", "+00:00")).timestamp(), expiry)

    def test_idp_group_grants_access(self) -> None:
        """A policy naming idpgroup:engineering lets alice's node and svc's node see each other only while she is in it."""
        policy_path = os.path.join(self.log_dir, "policy.json")
        with open(policy_path, "w") as f:
            json.dump({"acls": [{"action": "accept", "src": ["idpgroup:engineering"], "dst": ["svc@:*"]},
                                {"action": "accept", "src": ["svc@"], "dst": ["svc@:*"]}]}, f)
        server, walker = self.start_everything(policy={"mode": "file", "path": policy_path})
        [srv] = self.up_nodes(server, self.auth_key(server, "svc"), ["srv"])

        def peers(node: Any) -> set[str]:
            return set(self.peers_by_name(node.status_json()))

        def alice_groups() -> list[str]:
            users = json.loads(server.cli("users", "list", "-o", "json").stdout)
            return [u.get("idp_groups", []) for u in users if u["name"] == "alice"][0]

        up, url = self.tailscale_up(server, walker)
        self.assertEqual(self.browse(server, url, "alice")["status"], 200)
        wait_for(lambda: up.returncode is not None, 60, "tailscale up to finish", interval=0.2, details=walker.describe)
        self.assertEqual((up.returncode, walker.backend_state()), (0, "Running"), up.describe())
        self.assertEqual(alice_groups(), ["engineering"])
        wait_for(lambda: peers(walker) == {"srv"} and peers(srv) == {"walker"}, 30,
                 "alice's node and svc's node to see each other", interval=0.2, details=walker.describe)

        # At the provider alice moves to sales; after her next sign-in neither node sees the other.
        self.provider.set_groups("alice", ["sales"])
        walker.logout()
        up, url = self.tailscale_up(server, walker, log_name="up-walker-sales")
        self.assertEqual(self.browse(server, url, "alice")["status"], 200)
        wait_for(lambda: up.returncode is not None, 60, "tailscale up to finish", interval=0.2, details=walker.describe)
        self.assertEqual((up.returncode, walker.backend_state()), (0, "Running"), up.describe())
        self.assertEqual(alice_groups(), ["sales"])
        self.assertEqual(peers(walker), set())  # its netmap is fresh from this sign-in
        # A node joining after the sign-in is a barrier: once svc's node sees it, svc's node
        # has had every update sent before, so alice's node is absent for good, not yet.
        [probe] = self.up_nodes(server, self.auth_key(server, "svc"), ["probe"])
        wait_for(lambda: "probe" in peers(srv), 30, "svc's node to see the probe", interval=0.2,
                 details=srv.describe)
        self.assertEqual(peers(srv), {"probe"})

        # Back in engineering: svc's node, which never signed in again, sees her node once more.
        self.provider.set_groups("alice", ["engineering", "sales"])
        walker.logout()
        up, url = self.tailscale_up(server, walker, log_name="up-walker-engineering")
        self.assertEqual(self.browse(server, url, "alice")["status"], 200)
        wait_for(lambda: up.returncode is not None, 60, "tailscale up to finish", interval=0.2, details=walker.describe)
        self.assertEqual(alice_groups(), ["engineering", "sales"])
        wait_for(lambda: peers(walker) == {"srv", "probe"} and peers(srv) == {"walker", "probe"}, 30,
                 "alice's node and svc's nodes to see each other again", interval=0.2, details=srv.describe)

    def test_refused_person_registers_nothing(self) -> None:
        """bob (sales) is refused when only engineering may sign in; no node and no user appear."""
        server, node = self.start_everything(allowed_groups=["engineering"])
        up, url = self.tailscale_up(server, node)
        page = self.browse(server, url, "bob")
        self.assertEqual(page["status"], 403, page)
        self.assertIn("None of your groups is allowed", page["body"])
        self.assertEqual(json.loads(server.cli("nodes", "list", "-o", "json").stdout) or [], [])
        self.assertEqual(json.loads(server.cli("users", "list", "-o", "json").stdout) or [], [])
        self.assertIsNone(up.returncode)

    def test_provider_down_at_start(self) -> None:
        """With the provider away the server refuses to start, unless told to start anyway; then sign-in says so."""
        self.ca = self.make_ca()
        settings = {"issuer": "https://127.0.0.1:9", "client_id": "headscale", "client_secret": SECRET}
        with self.assertRaises(HarnessError):
            self.start_tls_server(name="strict", extra={"oidc": settings})
        with open(os.path.join(self.log_dir, "strict.log")) as f:
            self.assertIn("oidc.issuer: the provider https://127.0.0.1:9 is not available", f.read())

        server = self.start_tls_server(name="lenient", extra={"oidc": {**settings,
                                                                       "only_start_if_oidc_is_available": False}})
        node = self.start_node("walker", ssl_cert_file=self.ca.ca_pem)
        up, url = self.tailscale_up(server, node)
        page = self.browse(server, url, "alice", cafiles=(self.ca.ca_pem,))
        self.assertEqual(page["status"], 502, page)
        self.assertIn("cannot be reached", page["body"])
        self.assertIsNone(up.returncode)
