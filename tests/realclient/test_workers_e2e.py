"""
``workers: 2``: one server on two processes, with official clients (tailscale, in the test's private
loopback-only namespace).

The server runs ``twistd -n headscale`` with ``workers: 2`` on PostgreSQL and TLS on 127.0.0.1:443:
both workers accept on the one control/DERP port (``SO_REUSEPORT``) and mesh their DERP servers over
private unix sockets. Clients forced onto DERP register and ping each other through the embedded DERP
region; the kernel decides which worker each DERP connection lands on, so the test reads each worker's
metrics (port 9090 for worker 0, 9091 for worker 1) and, while every client sits on one worker, restarts
one client's tailscaled (a new DERP connection, a new pick) until both workers hold clients. Then some ring
neighbours are on different workers, and the mesh counters on both show their packets crossed.
See docs/workers.md.
"""

from __future__ import annotations

from headscale_tw.testing.prometheus import unlabelled_samples
from headscale_tw.testing.realclient._process import wait_for
from headscale_tw.testing.realclient.scenario import OnPostgres, ScenarioMixin
from headscale_tw.testing.realclient.testcase import RealClientTestCase

METRICS = {0: "127.0.0.1:9090", 1: "127.0.0.1:9091"}
CLIENTS = ("a", "b", "c", "d")
RECONNECT_ATTEMPTS = 12  # each lands on the other worker about half the time


class WorkersTests(OnPostgres, ScenarioMixin, RealClientTestCase):
    """Two workers serve one tailnet: registration through either, DERP relayed across their mesh."""

    def metrics(self, index: int) -> dict[str, float]:
        """The unlabelled samples of worker ``index``'s ``/metrics``."""
        result = self.namespace.http_get(f"http://{METRICS[index]}/metrics", timeout=5.0)
        self.assertEqual(result.status, 200, result.error)
        return unlabelled_samples(result.body.decode())

    def test_clients_on_two_workers_ping_over_derp(self):
        """Four DERP-only clients register through the shared port and ping each other via DERP; each worker
        counts its share of the clients plus the other worker's mesh link, and packets between clients on
        different workers crossed the mesh (forwarded counters on both)."""
        server = self.start_tls_server(listen="127.0.0.1:443", metrics=METRICS[0], stun="127.0.0.1:3478",
                                       extra={"workers": 2})
        self.addCleanup(server.stop)  # before the database is dropped
        wait_for(lambda: "serving with 2 workers" in server.process.log_tail(400), 60,
                 "both workers to serve", details=server.describe)
        wait_for(lambda: server.process.log_tail(1000).count("DERP mesh: connected to peer") >= 2, 30,
                 "the workers' DERP mesh", details=server.describe)
        key = self.auth_key(server)
        nodes = self.up_nodes(server, key, list(CLIENTS), always_use_derp=True)

        def clients() -> tuple[float, float]:
            # Each worker's DERP clients include the other worker's mesh link.
            return (self.metrics(0).get("headscale_derp_clients", 0) - 1,
                    self.metrics(1).get("headscale_derp_clients", 0) - 1)

        def connected(count: int) -> None:
            wait_for(lambda: sum(clients()) == count, 30, f"{count} clients connected to the workers' DERP servers",
                     interval=0.3, details=self.namespace.describe)

        # The kernel picks the worker per connection; while every client sits on one worker, reconnect one
        # client (a new source port, so a new pick) until both workers hold some: then ring neighbours on
        # different workers exist and their pings must cross the mesh.
        connected(len(CLIENTS))
        for attempt in range(RECONNECT_ATTEMPTS):
            if all(clients()):
                break
            mover = nodes[attempt % len(nodes)]
            mover.stop()
            mover.process = None
            connected(len(CLIENTS) - 1)
            mover.start()
            mover.wait_for_state("Running")
            connected(len(CLIENTS))
        spread = clients()
        self.assertTrue(all(spread), f"after {RECONNECT_ATTEMPTS} reconnects every client was still on one "
                                     f"worker (clients per worker: {spread}); the mesh was not exercised")
        for node, peer in zip(nodes, nodes[1:] + nodes[:1]):
            ip = peer.ip()
            wait_for(lambda node=node, ip=ip: "via DERP" in node.ping(ip, count=1, timeout=5, check=False).stdout,
                     30, f"{node.name} to get a pong from {peer.name} via DERP", interval=0.2, details=node.describe)
        self.assertEqual(clients(), spread, "a client moved between workers while pinging")
        # Some ring neighbours sit on different workers: pings and pongs crossed the mesh both ways.
        for index in (0, 1):
            samples = self.metrics(index)
            self.assertGreater(samples.get("headscale_derp_packets_forwarded_out_total", 0), 0,
                               f"worker {index} forwarded nothing to its mesh peer")
            self.assertGreater(samples.get("headscale_derp_packets_forwarded_in_total", 0), 0,
                               f"worker {index} received nothing from its mesh peer")
        self.assertIn("[worker 1]", server.process.log_tail(2000))
