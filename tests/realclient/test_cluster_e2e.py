"""
Two headscale-tw processes on one PostgreSQL database serve one tailnet to official clients.

Both servers run in the test's private namespace with their own listener, STUN
port, folder and embedded DERP region (999 and 998); each one also lists the
other's region from a ``derp.paths`` file, so a client can reach a peer whose
home region is the other instance. PostgreSQL is reached through its unix
socket directory, as in ``PostgresMeshTests``.
"""

from __future__ import annotations

import json
import os
import signal

from headscale_tw.testing.realclient._process import wait_for
from headscale_tw.testing.realclient.scenario import OnPostgres, ScenarioMixin, peers_by_name
from headscale_tw.testing.realclient.testcase import RealClientTestCase

INSTANCES = {
    "one": {"listen": "127.0.0.1:8443", "metrics": "127.0.0.1:9090", "stun": 3478, "region": 999},
    "two": {"listen": "127.0.0.1:8444", "metrics": "127.0.0.1:9091", "stun": 3479, "region": 998},
}


def region(name: str) -> dict:
    spec = INSTANCES[name]
    return {
        "RegionID": spec["region"],
        "RegionCode": name,
        "RegionName": name,
        "Nodes": [{
            "Name": str(spec["region"]),
            "RegionID": spec["region"],
            "HostName": "127.0.0.1",
            "STUNPort": spec["stun"],
            "DERPPort": int(spec["listen"].rsplit(":", 1)[1]),
        }],
    }


class ClusterTests(OnPostgres, ScenarioMixin, RealClientTestCase):
    """Nodes on different instances of one cluster see, reach and lose each other."""

    def start_instance(self, name: str):
        spec = INSTANCES[name]
        other = "two" if name == "one" else "one"
        path = os.path.abspath(self.mktemp() + ".json")
        with open(path, "w") as f:
            json.dump({"Regions": {str(INSTANCES[other]["region"]): region(other)}}, f)
        server = self.start_tls_server(
            name=name,
            listen=spec["listen"],
            metrics=spec["metrics"],
            stun=f"127.0.0.1:{spec['stun']}",
            extra={"derp": {"server": {
                "enabled": True, "region_id": spec["region"], "region_code": name, "region_name": name,
                "stun_listen_addr": f"127.0.0.1:{spec['stun']}",
                "private_key_path": "./var/derp_server_private.key",
            }, "paths": [path]}},
        )
        self.addCleanup(server.stop)  # before the database is dropped
        return server

    def test_nodes_on_two_instances(self):
        """X on instance one and Y on instance two list each other online and ping;
        deleting Y through instance one's CLI removes it from X's peers."""
        one = self.start_instance("one")
        two = self.start_instance("two")
        key = self.auth_key(one)
        x, = self.up_nodes(one, key, ["xray"])
        y, = self.up_nodes(two, key, ["yankee"])

        def sees_online(node, other):
            def check():
                peer = peers_by_name(node.status_json()).get(other)
                return peer if peer and peer["Online"] else None
            return check

        wait_for(sees_online(x, "yankee"), 30, "xray to see yankee online", interval=0.3, details=x.describe)
        wait_for(sees_online(y, "xray"), 30, "yankee to see xray online", interval=0.3, details=y.describe)
        self.assertIn("pong from yankee", x.ping(y.ip(), count=3).stdout)
        self.assertIn("pong from xray", y.ping(x.ip(), count=3).stdout)

        nodes = json.loads(one.cli("nodes", "list", "-o", "json").stdout)
        y_id = next(n["id"] for n in nodes if n["given_name"] == "yankee")
        one.cli("nodes", "delete", "-i", str(y_id), "--force")
        wait_for(lambda: "yankee" not in peers_by_name(x.status_json()), 30, "xray to lose yankee",
                 interval=0.3, details=x.describe)

    def test_login_started_on_one_finished_through_two(self):
        """`tailscale up` against instance one is completed by `headscale auth register` run on instance two."""
        from tests.realclient.test_lifecycle_e2e import interactive_up, wait_registered

        one = self.start_instance("one")
        two = self.start_instance("two")
        two.cli("users", "create", "alice")
        node, up, auth_id, _ = interactive_up(self, one, "roamer")
        two.cli("auth", "register", "--auth-id", auth_id, "--user", "alice")
        wait_registered(node, up, "roamer", one)

    def test_node_of_a_killed_instance_goes_offline_on_the_other(self):
        """After kill -9 of the instance xray streams from, instance two lists xray offline (and so does
        yankee's client) within a bounded wait: its session row no longer counts once one's heartbeat runs out."""
        one = self.start_instance("one")
        two = self.start_instance("two")
        key = self.auth_key(one)
        x, = self.up_nodes(one, key, ["xray"])
        y, = self.up_nodes(two, key, ["yankee"])

        def listed_online(server, name):
            nodes = json.loads(server.cli("nodes", "list", "-o", "json").stdout)
            return next((bool(n.get("online")) for n in nodes if n["given_name"] == name), None)

        def peer_online(node, other):
            peer = peers_by_name(node.status_json()).get(other)
            return None if peer is None else bool(peer["Online"])

        wait_for(lambda: listed_online(two, "xray") is True, 30, "instance two to list xray online",
                 interval=0.3, details=two.describe)
        wait_for(lambda: peer_online(y, "xray") is True, 30, "yankee to see xray online", interval=0.3,
                 details=y.describe)
        os.kill(one.process.pid, signal.SIGKILL)  # a process this test started
        wait_for(lambda: not one.process.running(), 10, "instance one to die", interval=0.1)
        # The heartbeat lives 6 s and is read every 2 s: 8 s after the last beat at most, plus slack.
        wait_for(lambda: listed_online(two, "xray") is False, 20, "instance two to list xray offline",
                 interval=0.5, details=two.describe)
        wait_for(lambda: peer_online(y, "xray") is False, 20, "yankee to see xray offline", interval=0.5,
                 details=y.describe)
        self.assertIs(listed_online(two, "yankee"), True)
