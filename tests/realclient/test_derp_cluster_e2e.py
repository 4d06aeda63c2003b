"""
The DERP mesh taken from the database: two headscale-tw processes on one PostgreSQL database,
with a mesh key and no ``mesh_peers``, relay for official clients (tailscale 1.96.4).

Instance one listens on 127.0.0.1:443 and instance two on 192.0.2.1:443 (STUN on port 3478
of the same address), in the test's private loopback-only namespace. Each finds the other
through the ``instances`` table and links to its DERP URL; both send the same DERP map: region
999 with one node per instance, the older (one) first. Clients that follow the map home on
instance one; ``TS_DEBUG_USE_DERP_ADDR`` pins two more on one instance each (as
``DERPMeshTests`` does), so every packet between those two crosses the mesh link.
See docs/derp.md, *Mesh from the database*.
"""

from __future__ import annotations

import json
import os

from headscale_tw.testing.prometheus import unlabelled_samples
from headscale_tw.testing.realclient._process import wait_for
from headscale_tw.testing.realclient.scenario import REGION_ID, OnPostgres, ScenarioMixin
from headscale_tw.testing.realclient.testcase import RealClientTestCase

ADDRESSES = {"one": "127.0.0.1", "two": "192.0.2.1"}


class DERPClusterTests(OnPostgres, ScenarioMixin, RealClientTestCase):
    """Instances of one database mesh their DERP servers by themselves and list each other in the map."""

    def start_instance(self, name: str, mesh_key: str):
        address = ADDRESSES[name]
        server = self.start_tls_server(name=name, listen=f"{address}:443", metrics=f"{address}:9090",
                                       stun=f"{address}:3478", derp={"mesh_key_path": mesh_key})
        self.addCleanup(server.stop)  # before the database is dropped
        return server

    def metrics(self, name: str) -> dict[str, float]:
        """The unlabelled samples of instance ``name``'s ``/metrics``."""
        result = self.namespace.http_get(f"http://{ADDRESSES[name]}:9090/metrics", timeout=5.0)
        self.assertEqual(result.status, 200, result.error)
        return unlabelled_samples(result.body.decode())

    def region_hosts(self, node) -> list[str]:
        """The host names of region 999's nodes in ``node``'s current DERP map, in order."""
        derp_map = json.loads(node.cli("debug", "derp-map", timeout=15).stdout)
        region = (derp_map.get("Regions") or {}).get(str(REGION_ID)) or {}
        return [n["HostName"] for n in region.get("Nodes") or []]

    def test_mesh_and_map_from_the_database(self):
        """Two instances link to each other with no mesh_peers and send one map listing both, oldest first;
        clients following it home on the first, including one registered through the other instance; two
        clients pinned to different instances ping via DERP through the mesh link, both ways; once instance two
        stops, the map clients of instance one hold lists only instance one."""
        mesh_key = os.path.join(self.namespace.runtime_dir, "mesh.key")
        with open(mesh_key, "w") as f:
            f.write(os.urandom(32).hex() + "\n")
        one = self.start_instance("one", mesh_key)
        two = self.start_instance("two", mesh_key)
        for server in (one, two):
            wait_for(lambda server=server: "DERP mesh: connected to peer" in server.process.log_tail(400), 20,
                     f"{server.name} to link to the other instance's DERP server", details=server.describe)

        key = self.auth_key(one)
        # c and d follow the map; d registers through instance two, yet its `up` (which needs a live DERP
        # connection) succeeds against instance one's relay: verify_clients knows nodes of every instance.
        (c,) = self.up_nodes(one, key, ["c"])
        (d,) = self.up_nodes(two, key, ["d"])
        self.assertEqual(self.region_hosts(c), ["127.0.0.1", "192.0.2.1"])
        self.assertEqual(self.region_hosts(d), ["127.0.0.1", "192.0.2.1"])
        # TS_DEBUG_USE_DERP_ADDR replaces a client's map with one node (region 999, port 443) at that address.
        (a,) = self.up_nodes(one, key, ["a"], always_use_derp=True, extra_env={"TS_DEBUG_USE_DERP_ADDR": "127.0.0.1"})
        (b,) = self.up_nodes(two, key, ["b"], always_use_derp=True, extra_env={"TS_DEBUG_USE_DERP_ADDR": "192.0.2.1"})
        # DERP clients: a, c, d and two's mesh link on instance one; b and one's mesh link on instance two.
        for name, count in (("one", 4), ("two", 2)):
            wait_for(lambda name=name, count=count: self.metrics(name).get("headscale_derp_clients") == count, 20,
                     f"{count} DERP clients on instance {name}", interval=0.3, details=self.namespace.describe)

        for node, peer in ((a, b), (b, a)):
            ip = peer.ip()
            wait_for(lambda node=node, ip=ip: "via DERP" in node.ping(ip, count=1, timeout=5, check=False).stdout,
                     30, f"{node.name} to get a pong from {peer.name} via DERP", interval=0.2, details=node.describe)
        for name in ("one", "two"):
            samples = self.metrics(name)
            self.assertGreater(samples.get("headscale_derp_packets_forwarded_out_total", 0), 0, name)
            self.assertGreater(samples.get("headscale_derp_packets_forwarded_in_total", 0), 0, name)

        two.stop()
        wait_for(lambda: self.region_hosts(c) == ["127.0.0.1"], 20,
                 "c's DERP map to drop the stopped instance two", interval=0.5, details=c.describe)
        self.assertIn("left, closing the link to https://192.0.2.1:443/derp", one.process.log_tail(400))
