"""
The audit log against official clients and real components: a registration with
a pre-auth key appears in ``headscale audit list -o json``, named by the key's
prefix, with the admin actions before it named by the unix socket's peer user; a
sign-in through a real OpenID Provider (oidc-provider) is listed by the person's
OIDC identity; two instances on one PostgreSQL database each write their own rows.
"""

from __future__ import annotations

import json
import os
import pwd

from headscale_tw.testing.realclient._process import wait_for
from headscale_tw.testing.realclient.scenario import OnPostgres, ScenarioMixin
from headscale_tw.testing.realclient.testcase import RealClientTestCase
from tests.realclient import test_cluster_e2e as cluster_e2e
from tests.realclient import test_oidc_e2e as oidc_e2e


class AuditLogTests(ScenarioMixin, RealClientTestCase):
    """What an official client's registration leaves in the audit log."""

    def test_preauth_registration_listed(self):
        """`tailscale up --authkey` reaches Running; `audit list -o json` shows node.register by the key's
        prefix, the CLI's own user and key creation by the socket user, and never the key itself."""
        server = self.start_tls_server()
        key = self.auth_key(server, "alice")
        [node] = self.up_nodes(server, key, ["audited"])
        self.assertEqual(node.backend_state(), "Running")

        events = json.loads(server.cli("audit", "list", "--action", "node.register", "-o", "json").stdout)
        self.assertEqual(len(events), 1, events)
        [registered] = events
        prefix = key.split("-")[2]
        self.assertEqual((registered["actorKind"], registered["actor"]), ("preauth_key", f"hskey-auth-{prefix}"))
        self.assertEqual((registered["targetKind"], registered["targetName"]), ("node", "audited"))
        self.assertEqual((registered["result"], registered["detail"]["method"]), ("ok", "authkey"))
        self.assertTrue(registered["source"])

        everything = server.cli("audit", "list", "-o", "json").stdout
        self.assertNotIn(key.split("-", 3)[3], everything)
        by_action = {e["action"]: e for e in json.loads(everything)}
        socket_user = f"{pwd.getpwuid(os.getuid()).pw_name} (uid {os.getuid()})"
        for action in ("user.create", "preauth_key.create"):
            self.assertEqual((by_action[action]["actorKind"], by_action[action]["actor"]),
                             ("unix_socket", socket_user))


class OIDCAuditTests(ScenarioMixin, RealClientTestCase):
    """What a person's sign-in through a real OpenID Provider leaves in the audit log."""

    timeout = 240
    start_everything = oidc_e2e.OIDCLoginTests.start_everything
    tailscale_up = oidc_e2e.OIDCLoginTests.tailscale_up
    browse = oidc_e2e.OIDCLoginTests.browse

    def test_sign_in_listed(self):
        """After alice signs in at oidc-provider and the client runs, `audit list -o json` shows her
        user.login and the node.register it finished, both by her OIDC identity."""
        server, node = self.start_everything(allowed_domains=["example.com"])
        up, url = self.tailscale_up(server, node)
        self.assertEqual(self.browse(server, url, "alice")["status"], 200)
        wait_for(lambda: up.returncode is not None, 60, "tailscale up to finish", interval=0.2, details=node.describe)
        self.assertEqual(node.backend_state(), "Running")
        events = json.loads(server.cli("audit", "list", "--actor", "oidc", "-o", "json").stdout)
        self.assertEqual([(e["action"], e["targetName"]) for e in events],
                         [("node.register", "walker"), ("user.login", "alice")])
        for event in events:
            self.assertEqual(event["actor"], f"alice ({self.provider.issuer}/alice)")
            self.assertTrue(event["source"])
        self.assertEqual(events[0]["detail"]["method"], "interactive")
        self.assertNotIn(oidc_e2e.SECRET, server.cli("audit", "list", "-o", "json").stdout)


class ClusterAuditTests(OnPostgres, ScenarioMixin, RealClientTestCase):
    """Two instances on one PostgreSQL database write their own rows to the one audit table."""

    start_instance = cluster_e2e.ClusterTests.start_instance

    def test_each_instance_writes_its_rows(self):
        """A client registered on each instance: either instance's `audit list` shows both registrations,
        each written by the instance the client registered with."""
        one = self.start_instance("one")
        two = self.start_instance("two")
        key = self.auth_key(one)
        self.up_nodes(one, key, ["xray"])
        self.up_nodes(two, key, ["yankee"])
        for server in (one, two):
            events = json.loads(server.cli("audit", "list", "--action", "node.register", "-o", "json").stdout)
            writers = {e["targetName"]: e["instance"] for e in events}
            self.assertEqual(sorted(writers), ["xray", "yankee"])
            self.assertNotEqual(writers["xray"], writers["yankee"])
            self.assertEqual({e["actorKind"] for e in events}, {"preauth_key"})
