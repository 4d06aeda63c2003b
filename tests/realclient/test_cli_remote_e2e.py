"""
The remote CLI (``HEADSCALE_CLI_ADDRESS`` + ``HEADSCALE_CLI_API_KEY``) against a real
server process, and ``nodes backfillips`` seen by official clients.

A tailnet starts with IPv4 only; the server is restarted with an IPv6 prefix
too, and ``headscale nodes backfillips`` run over HTTP with an API key gives
both nodes an IPv6 address, which each client reports for itself and for its
peer without reconnecting. ``debug create-node`` and ``auth register`` then
add a node over the same path.
"""

from __future__ import annotations

import json

from headscale_tw.testing.realclient._process import wait_for
from headscale_tw.testing.realclient.server import HeadscaleServer
from headscale_tw.testing.realclient.testcase import DEFAULT_CONFIG_YAML, RealClientTestCase

__all__ = ["RemoteCLITests"]

IPV4_ONLY = DEFAULT_CONFIG_YAML + "prefixes:\n  v4: 100.64.0.0/10\n  v6: null\n"
V6_PREFIX = "fd7a:115c:a1e0:"
AUTH_ID = "R" * 24


class RemoteCLITests(RealClientTestCase):
    """The CLI over HTTP with an API key, as an operator runs it from another machine."""

    def remote(self, server, key, *args, check=True):
        """Run the CLI in the namespace with only HEADSCALE_CLI_ADDRESS/_API_KEY to find the server."""
        env = {**server.env, "HEADSCALE_CLI_ADDRESS": server.url, "HEADSCALE_CLI_API_KEY": key}
        argv = [server.python, "-m", "headscale_tw.cli.main", "-c", server.config_path, *args]
        proc = self.namespace.run(argv, env=env, timeout=60, cwd=self.log_dir)
        if check:
            self.assertEqual(proc.returncode, 0, f"headscale {' '.join(args)}: {proc.stderr}\n{server.describe()}")
        return proc

    def peer_ips(self, node, name):
        """The TailscaleIPs ``node`` shows for its peer ``name``."""
        for peer in (node.status_json().get("Peer") or {}).values():
            if peer.get("HostName") == name:
                return peer.get("TailscaleIPs") or []
        return []

    def test_backfill_over_http_reaches_clients(self):
        """Backfilled IPv6 addresses reach both clients (self and peer); debug create-node registers over HTTP."""
        server = HeadscaleServer(self.namespace, IPV4_ONLY).start()
        server.cli("users", "create", "alice")
        authkey = server.cli("preauthkeys", "create", "-u", "alice", "--reusable").stdout.strip()
        apikey = server.cli("apikeys", "create").stdout.strip()
        nodes = {}
        for name in ("one", "two"):
            nodes[name] = self.start_node(name)
            nodes[name].up(server.url, authkey=authkey)
            nodes[name].wait_for_state("Running")
        self.assertNotIn(":", " ".join(nodes["one"].status_json(peers=False)["Self"]["TailscaleIPs"]))

        server.stop()
        server = HeadscaleServer(self.namespace, DEFAULT_CONFIG_YAML).start()  # same folder and database

        def both_online():
            listing = json.loads(self.remote(server, apikey, "nodes", "list", "-o", "json").stdout) or []
            return len(listing) == 2 and all(n.get("online") for n in listing)

        wait_for(both_online, 60, "both clients to reconnect to the restarted server", interval=0.5,
                 details=server.describe)
        changes = json.loads(self.remote(server, apikey, "nodes", "backfillips", "--force", "-o", "json").stdout)
        self.assertEqual(len(changes["changes"]), 2, changes)
        self.assertTrue(all(c.startswith("assigned IPv6") for c in changes["changes"]), changes)

        def has_v6(ips):
            return any(ip.startswith(V6_PREFIX) for ip in ips)

        for name, other in (("one", "two"), ("two", "one")):
            node = nodes[name]
            wait_for(lambda: has_v6(node.status_json(peers=False)["Self"]["TailscaleIPs"]), 30,
                     f"{name} to show its own IPv6 address", interval=0.2, details=node.describe)
            wait_for(lambda: has_v6(self.peer_ips(node, other)), 30,
                     f"{name} to show {other}'s IPv6 address", interval=0.2, details=node.describe)
        again = json.loads(self.remote(server, apikey, "nodes", "backfillips", "--force", "-o", "json").stdout)
        self.assertEqual(again, {})

        created = json.loads(self.remote(server, apikey, "debug", "create-node", "--name", "fake", "-u", "alice",
                                         "-k", AUTH_ID, "-r", "10.20.0.0/16", "-o", "json").stdout)
        self.assertEqual(created["name"], "fake")
        self.assertEqual(self.remote(server, apikey, "auth", "register", "--auth-id", AUTH_ID, "-u", "alice")
                         .stdout.strip(), "Node fake registered")
        listing = json.loads(self.remote(server, apikey, "nodes", "list-routes", "-o", "json").stdout)
        self.assertEqual([(n["name"], n["available_routes"]) for n in listing], [("fake", ["10.20.0.0/16"])])

        refused = self.remote(server, "hskey-api-notakeyatall-" + "x" * 32, "nodes", "list", check=False)
        self.assertEqual(refused.returncode, 1)
        self.assertEqual(len(refused.stderr.splitlines()), 1, refused.stderr)
