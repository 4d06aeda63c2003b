"""
Node lifecycle against official clients: interactive login, admin changes seen by
peers, and ephemeral nodes removed after their inactivity timeout.
"""

from __future__ import annotations

import json
import os
import re

from headscale_tw.testing.realclient._process import wait_for
from headscale_tw.testing.realclient.scenario import BASE_DOMAIN, ScenarioMixin, peers_by_name
from headscale_tw.testing.realclient.testcase import RealClientTestCase


def _nodes(server) -> dict[str, dict]:
    """The server's nodes by given name (``headscale nodes list -o json``)."""
    listing = json.loads(server.cli("nodes", "list", "-o", "json").stdout) or []
    return {n["given_name"]: n for n in listing}


def interactive_up(testcase, server, name: str):
    """Run ``tailscale up`` without a key on a new node ``name`` against ``server``.

    Returns ``(node, up_process, auth_id, up_log_path)`` once the client has printed its login URL.
    """
    node = testcase.start_node(name, ssl_cert_file=testcase.ca.ca_pem)
    up_log = os.path.join(testcase.log_dir, f"up-{name}.log")
    up = testcase.namespace.spawn(
        f"up-{name}",
        [node.binaries.tailscale, f"--socket={node.socket}", "up", f"--login-server={server.url}",
         f"--hostname={name}", "--timeout=60s"],
        env=node.env, log_path=up_log,
    )

    def auth_url():
        with open(up_log) as f:
            return re.search(r"(https://127\.0\.0\.1:\d+/register/(\S+))", f.read())

    m = wait_for(auth_url, 30, "tailscale up to print the login URL", interval=0.2, details=node.describe)
    return node, up, m.group(2), up_log


def wait_registered(node, up, name: str, server, user: str = "alice") -> None:
    """Wait for ``tailscale up`` to finish after ``auth register``; check it is Running as ``user``."""
    wait_for(lambda: up.returncode is not None, 45, "tailscale up to finish", interval=0.2, details=node.describe)
    if up.returncode != 0:
        raise AssertionError(f"tailscale up exited {up.returncode}\n{up.describe()}")
    if node.backend_state() != "Running":
        raise AssertionError(f"{name} is {node.backend_state()}, not Running")
    if _nodes(server)[name]["user"]["name"] != user:
        raise AssertionError(f"{name} does not belong to {user}")


class InteractiveLoginTests(ScenarioMixin, RealClientTestCase):
    """`tailscale up` without a key waits for `headscale auth register`."""

    def test_node_appears_only_after_auth_register(self):
        """The client is shown our /register URL, the node does not exist until an admin
        registers it, and then `tailscale up` finishes and the node is listed."""
        server = self.start_tls_server()
        server.cli("users", "create", "alice")
        node, up, auth_id, _ = interactive_up(self, server, "walker")
        page = server.http_get(f"/register/{auth_id}")
        self.assertEqual(page.status, 200)
        self.assertIn(f"headscale auth register --auth-id {auth_id} --user", page.body.decode())
        self.assertNotIn("walker", _nodes(server))

        server.cli("auth", "register", "--auth-id", auth_id, "--user", "alice")
        wait_registered(node, up, "walker", server)

    def test_auth_reject_refuses_the_client(self):
        """After `headscale auth reject` the waiting `tailscale up` fails with the rejection; no node exists."""
        server = self.start_tls_server()
        server.cli("users", "create", "alice")
        node, up, auth_id, up_log = interactive_up(self, server, "refused")
        self.assertEqual(server.cli("auth", "reject", "--auth-id", auth_id).stdout, "Auth request rejected\n")
        wait_for(lambda: up.returncode is not None, 45, "tailscale up to give up", interval=0.2,
                 details=node.describe)
        self.assertNotEqual(up.returncode, 0)
        with open(up_log) as f:
            self.assertIn("rejected", f.read())
        self.assertNotIn("refused", _nodes(server))
        self.assertEqual(server.http_get(f"/register/{auth_id}").status, 404)

    def test_pending_login_survives_a_restart(self):
        """A login started before the server restarts is finished by `auth register` after it."""
        server = self.start_tls_server()
        server.cli("users", "create", "alice")
        node, up, auth_id, _ = interactive_up(self, server, "patient")
        server = self.restart_server(server)
        self.assertEqual(server.http_get(f"/register/{auth_id}").status, 200)
        server.cli("auth", "register", "--auth-id", auth_id, "--user", "alice")
        wait_registered(node, up, "patient", server)


class AdminChangesTests(ScenarioMixin, RealClientTestCase):
    """What an admin does to a node reaches its peers."""

    def setUp(self):
        super().setUp()
        self.server = self.start_tls_server()
        key = self.auth_key(self.server)
        self.watcher, self.subject = self.up_nodes(self.server, key, ["watcher", "subject"])
        self.subject_id = str(_nodes(self.server)["subject"]["id"])

    def _subject_as_seen(self):
        return peers_by_name(self.watcher.status_json()).get("subject")

    def test_rename_seen_by_peer(self):
        """After `nodes rename` the peer lists the node under its new MagicDNS name."""
        self.server.cli("nodes", "rename", "-i", self.subject_id, "renamed")

        def renamed():
            peer = self._subject_as_seen()
            return peer if peer and peer["DNSName"] == f"renamed.{BASE_DOMAIN}." else None

        wait_for(renamed, 10, "the watcher to see the new name", interval=0.2, details=self.watcher.describe)

    def test_expire_seen_by_peer(self):
        """After `nodes expire` the peer sees the node's key as expired."""
        self.server.cli("nodes", "expire", "-i", self.subject_id)

        def expired():
            peer = self._subject_as_seen()
            return peer if peer and peer.get("Expired") else None

        wait_for(expired, 10, "the watcher to see the node expired", interval=0.2, details=self.watcher.describe)

    def test_delete_gone_from_peer_within_2s(self):
        """After `nodes delete` the node disappears from its peer within 2 seconds."""
        self.server.cli("nodes", "delete", "-i", self.subject_id, "--force")
        wait_for(lambda: self._subject_as_seen() is None, 2, "the watcher to drop the deleted node",
                 interval=0.1, details=self.watcher.describe)
        self.assertNotIn("subject", _nodes(self.server))


class EphemeralTests(ScenarioMixin, RealClientTestCase):
    """Ephemeral nodes are removed once idle past node.ephemeral.inactivity_timeout."""

    def test_ephemeral_node_removed_after_inactivity(self):
        """An ephemeral node's record is gone after its client stops and the timeout passes."""
        server = self.start_tls_server(node={"ephemeral": {"inactivity_timeout": "2s"}})
        key = self.auth_key(server, reusable=False, ephemeral=True)
        keeper, = self.up_nodes(server, self.auth_key(server), ["keeper"])
        brief, = self.up_nodes(server, key, ["brief"])
        self.assertIn("brief", _nodes(server))
        wait_for(lambda: "brief" in peers_by_name(keeper.status_json()), 10, "keeper to see brief",
                 interval=0.2, details=keeper.describe)

        brief.stop()
        wait_for(lambda: "brief" not in _nodes(server), 20, "the ephemeral node to be removed", interval=0.5,
                 details=server.describe)
        wait_for(lambda: "brief" not in peers_by_name(keeper.status_json()), 5,
                 "keeper to drop the removed node", interval=0.2, details=keeper.describe)
        self.assertIn("keeper", _nodes(server))
