# -*- test-case-name: tests.realclient.test_ha_failover_e2e -*-
"""
Failover and rolling restart of three instances behind the shipped nginx HA site, with official clients.

The cluster is :class:`~headscale_tw.testing.realclient.ha.HACluster`: three
server processes on one PostgreSQL database (unix socket), one meshed DERP
region, Debian's nginx with ``deploy/nginx/headscale-ha.conf`` in front, all in
the test's private namespace. Two official clients log in through nginx and
relay every packet through DERP (``TS_DEBUG_ALWAYS_USE_DERP``), so a pong proves
the DERP path through nginx and the mesh, not a direct loopback path.

Waits are bounded; nothing here asserts a duration (the timed figures come from
``python -m headscale_tw.bench.failover``).
"""

from __future__ import annotations

import json

from headscale_tw.testing.realclient._process import wait_for
from headscale_tw.testing.realclient.ha import INSTANCES, HACluster, postgres_socket_section
from headscale_tw.testing.realclient.scenario import ScenarioMixin, peers_by_name
from headscale_tw.testing.realclient.testcase import RealClientTestCase

__all__ = ["HAFailoverTests", "HARollingRestartTests"]

NAMES = ("xray", "yankee")
RECOVERY = 60.0
"""Bound on every wait for recovery (generous: the test proves recovery, the bench measures it)."""


class _HATestCase(ScenarioMixin, RealClientTestCase):
    """Builds the cluster and two clients logged in through nginx."""

    def start_cluster(self):
        from headscale_tw.testing.db import create_postgres_database

        db = create_postgres_database(self)
        self.ca = self.make_ca()
        cluster = HACluster(self.namespace, self.ca, postgres_socket_section(db.postgres.name, db.postgres.user))
        self.addCleanup(cluster.close)  # runs before the database is dropped
        cluster.start_all()
        key = self.auth_key(cluster.servers["one"])
        nodes = self.up_nodes(cluster.servers["one"], key, list(NAMES), always_use_derp=True)
        self.assertEqual({n.name for n in nodes}, set(NAMES))
        self.assert_connected(cluster, nodes)
        return cluster, nodes

    def assert_connected(self, cluster, nodes, keep_peers=False):
        """Both clients stream from running instances, every running instance (restarted ones included)
        lists both online, each client lists the other with ``Online: true`` and gets a pong from it via DERP.

        With ``keep_peers``, a client whose status lacks the other at any poll fails the test.
        """
        cluster.wait_streams(len(nodes), RECOVERY)
        for name in cluster.running():
            server = cluster.servers[name]

            def all_online(server=server):
                listed = json.loads(server.cli("nodes", "list", "-o", "json").stdout) or []
                online = {n["given_name"] for n in listed if n.get("online")}
                return online >= set(NAMES)

            wait_for(all_online, RECOVERY, f"{name} to list {NAMES} online", interval=0.3,
                     details=cluster.describe)
        for node, peer in ((nodes[0], nodes[1]), (nodes[1], nodes[0])):
            def sees_peer(node=node, peer=peer):
                entry = peers_by_name(node.status_json()).get(peer.name)
                if keep_peers:
                    self.assertIsNotNone(entry, f"{peer.name} vanished from {node.name}'s peers")
                return entry is not None and entry.get("Online") is True

            wait_for(sees_peer, RECOVERY, f"{node.name} to list {peer.name} online", interval=0.3,
                     details=node.describe)
            peer_ip = peer.ip()

            def pong(node=node, peer_ip=peer_ip):
                proc = node.ping(peer_ip, count=1, timeout=5, check=False)
                return proc.stdout if "via DERP(ha)" in proc.stdout else None

            out = wait_for(pong, RECOVERY, f"{node.name} to get a pong from {peer.name} via DERP",
                           interval=0.3, details=lambda node=node: node.describe() + "\n" + cluster.describe())
            self.assertIn(f"pong from {peer.name}", out)

    def peer_names(self, node):
        return set(peers_by_name(node.status_json()))


class HAFailoverTests(_HATestCase):
    """A client whose instance is killed reconnects through nginx to a survivor."""

    def test_kill_streaming_instance(self):
        """``kill -9`` of every instance the two clients stream from (at most two of three): both clients
        stream from the survivors, which list them online, each shows the other online, and they ping each
        other via DERP again."""
        cluster, nodes = self.start_cluster()
        victims = sorted(cluster.streaming())
        self.assertTrue(1 <= len(victims) <= 2, victims)
        for name in victims:
            cluster.kill(name)
        survivors = sorted(set(s.name for s in INSTANCES) - set(victims))
        self.assertEqual(sorted(cluster.running()), survivors)
        self.assert_connected(cluster, nodes)
        self.assertEqual(set(cluster.streaming()) & set(victims), set())

    def test_killed_instance_comes_back(self):
        """An instance killed and started again serves a client that moves to it: the streaming instances
        are killed one at a time until every instance has been killed once, and the clients recover each time;
        a restarted instance lists clients streaming elsewhere online, and clients that move to it see each
        other online."""
        cluster, nodes = self.start_cluster()
        killed: set[str] = set()
        while killed != {s.name for s in INSTANCES}:
            candidates = sorted(set(cluster.streaming()) - killed) or sorted(set(cluster.running()) - killed)
            victim = candidates[0]
            cluster.kill(victim)
            killed.add(victim)
            self.assert_connected(cluster, nodes)
            cluster.start(victim)
            self.assert_connected(cluster, nodes)


class HARollingRestartTests(_HATestCase):
    """Restarting the instances one at a time costs each client at most one reconnect."""

    def test_rolling_restart(self):
        """Each instance in turn is stopped cleanly and started again; after each step every running instance
        lists both clients online, each client shows the other online and gets a pong via DERP, and neither
        ever loses the other from its peer list."""
        cluster, nodes = self.start_cluster()
        for spec in INSTANCES:
            cluster.stop(spec.name)
            for node in nodes:
                self.assertEqual(self.peer_names(node), set(NAMES) - {node.name})
            self.assert_connected(cluster, nodes, keep_peers=True)
            cluster.start(spec.name)
            for node in nodes:
                self.assertEqual(self.peer_names(node), set(NAMES) - {node.name})
            self.assert_connected(cluster, nodes, keep_peers=True)
