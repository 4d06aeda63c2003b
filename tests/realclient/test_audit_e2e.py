"""
The audit log against an official client: a registration with a pre-auth key
appears in ``headscale audit list -o json``, named by the key's prefix, with
the admin actions before it named by the unix socket's peer user.
"""

from __future__ import annotations

import json
import os
import pwd

from headscale_tw.testing.realclient.scenario import ScenarioMixin
from headscale_tw.testing.realclient.testcase import RealClientTestCase


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
