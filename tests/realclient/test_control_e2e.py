"""
The control plane against official Tailscale clients (tailscaled 1.96.4 and 1.78.1).

Each test runs our server and real clients in a private loopback-only network
namespace (see docs/testing-real-client.md). Control and DERP share one TLS
listener with a throwaway CA, as in production, so clients reach ``Running``.
"""

from __future__ import annotations

import itertools

from headscale_tw.testing.realclient._process import wait_for
from headscale_tw.testing.realclient.scenario import BASE_DOMAIN, OnPostgres, ScenarioMixin, peers_by_name
from headscale_tw.testing.realclient.testcase import RealClientTestCase


class MeshTests(ScenarioMixin, RealClientTestCase):
    """Several official clients form a tailnet through our control plane."""

    def test_three_nodes_one_reusable_key(self):
        """Three nodes register with one reusable key, reach Running, list each other online
        by MagicDNS name, and ping every pair."""
        server = self.start_tls_server()
        key = self.auth_key(server)
        nodes = self.up_nodes(server, key, ["alpha", "bravo", "charlie"])
        names = {n.name for n in nodes}
        ips = {}
        for node in nodes:
            status = node.wait_for_state("Running")
            self.assertEqual(status["Self"]["DNSName"], f"{node.name}.{BASE_DOMAIN}.")
            ips[node.name] = node.ip()

        for node in nodes:
            def all_peers_online(node=node):
                peers = peers_by_name(node.status_json())
                others = names - {node.name}
                if set(peers) == others and all(peers[o]["Online"] for o in others):
                    return peers
                return None

            peers = wait_for(all_peers_online, 30, f"{node.name} to see both peers online", interval=0.3,
                             details=node.describe)
            for other in names - {node.name}:
                self.assertEqual(peers[other]["DNSName"], f"{other}.{BASE_DOMAIN}.")
                self.assertIn(ips[other], peers[other]["TailscaleIPs"])

        for a, b in itertools.permutations(nodes, 2):
            out = a.ping(ips[b.name], count=3).stdout
            self.assertIn(f"pong from {b.name}", out)

    def test_restart_keeps_addresses_and_names(self):
        """After a server restart every client reconnects with the same addresses and names,
        and the nodes reach each other again."""
        server = self.start_tls_server()
        key = self.auth_key(server)
        nodes = self.up_nodes(server, key, ["alpha", "bravo"])
        before = {n.name: (n.ip(4), n.ip(6)) for n in nodes}

        server = self.restart_server(server)

        for node, other in ((nodes[0], nodes[1]), (nodes[1], nodes[0])):
            def peer_back_online(node=node, other=other):
                peer = peers_by_name(node.status_json()).get(other.name)
                return peer if peer and peer["Online"] else None

            peer = wait_for(peer_back_online, 60, f"{node.name} to see {other.name} online after restart",
                            interval=0.5, details=node.describe)
            self.assertEqual(peer["DNSName"], f"{other.name}.{BASE_DOMAIN}.")
            self.assertEqual(sorted(peer["TailscaleIPs"]), sorted(before[other.name]))
            self.assertEqual((node.ip(4), node.ip(6)), before[node.name])
        self.assertIn("pong from bravo", nodes[0].ping(before["bravo"][0]).stdout)


class PostgresMeshTests(OnPostgres, MeshTests):
    """The same tailnet with PostgreSQL as the server's database.

    PostgreSQL runs outside the test's private network namespace; the server
    reaches it through its unix socket directory (sockets on the filesystem are
    not tied to a network namespace). The database is created fresh and dropped
    by the test.
    """


class ClientVersionTests(ScenarioMixin, RealClientTestCase):
    """Which client versions we serve, and how an old one is turned away."""

    def test_1_78_and_1_96_together(self):
        """tailscale 1.78.1 (capver 109) and 1.96.4 (133) join one tailnet and ping each other."""
        server = self.start_tls_server()
        key = self.auth_key(server)
        old, = self.up_nodes(server, key, ["old"], version="1.78.1")
        new, = self.up_nodes(server, key, ["new"])
        self.assertEqual(old.version(), "1.78.1")
        self.assertIn("pong from old", new.ping(old.ip()).stdout)
        self.assertIn("pong from new", old.ping(new.ip()).stdout)

    def test_too_old_client_told_why(self):
        """A client below noise.min_capability_version gets our message from `tailscale up`, not a hang."""
        server = self.start_tls_server(noise={"min_capability_version": 113})
        key = self.auth_key(server)
        node = self.start_node("old", version="1.78.1", ssl_cert_file=self.ca.ca_pem)
        proc = node.up(server.url, authkey=key, timeout=30, check=False)
        self.assertNotEqual(proc.returncode, 0)
        self.assertIn("older than this server's minimum 113", proc.stderr + proc.stdout)
