"""
The policy against official Tailscale clients (tailscaled 1.96.4): what actually flows.

Each test runs the server and real clients in a private loopback-only network
namespace (see docs/testing-real-client.md). Traffic is checked by fetching a
page from another node's tailnet address through the fetching node's SOCKS5
proxy (``tailscaled --socks5-server``); a denied fetch times out after a few
seconds because the target's packet filter drops the SYN. Policies are changed
while every client keeps running: by editing the file and sending SIGHUP to the
server (``policy.mode: file``), or by ``headscale policy set`` (``database``).

User ``alice`` owns node ``a``, user ``bob`` owns node ``b``; policies name
them ``alice@`` / ``bob@`` (a user token matches a user's name or email).
"""

from __future__ import annotations

import json
import os
import signal
from concurrent.futures import ThreadPoolExecutor

from headscale_tw.testing.realclient._process import wait_for
from headscale_tw.testing.realclient.scenario import (
    BASE_DOMAIN,
    ScenarioMixin,
    SocksFetchError,
    fetch_via_socks,
    peers_by_name,
    serve_files,
)
from headscale_tw.testing.realclient.testcase import RealClientTestCase

HTTP_PORT = 8000
PAGE = b"served over the tailnet\n"
DENIED_TIMEOUT = 3.0
"""Seconds a fetch may take before we call it denied (an allowed one answers in milliseconds)."""

A_TO_B = """\
// alice's nodes may reach bob's; nothing else is allowed.
{
  "acls": [
    {"action": "accept", "src": ["alice@"], "dst": ["bob@:*"]},
  ],
}
"""

B_TO_A = """\
{
  "acls": [
    {"action": "accept", "src": ["bob@"], "dst": ["alice@:*"]},
  ],
}
"""

INVALID = {
    "bad HuJSON": ('{"acls": [ {"action": "accept",, }', "parsing HuJSON"),
    "unknown group": (
        '{"acls": [{"action": "accept", "src": ["group:nope"], "dst": ["bob@:*"]}]}',
        'group "group:nope" is not defined',
    ),
    "tag without owner": (
        '{"acls": [{"action": "accept", "src": ["tag:orphan"], "dst": ["bob@:*"]}]}',
        'tag not found: "tag:orphan"',
    ),
    # B->A, whose own tests expect A->B: applying it by mistake would flip the traffic.
    "failing tests": (
        '{"acls": [{"action": "accept", "src": ["bob@"], "dst": ["alice@:*"]}],'
        ' "tests": [{"src": "alice@", "accept": ["bob@:80"]}]}',
        "bob@:80",
    ),
}
"""Policies the server must refuse: name -> (text, a part of the reason it gives)."""


class _PolicyTestCase(ScenarioMixin, RealClientTestCase):
    """Two nodes, ``a`` (alice) and ``b`` (bob), each with a SOCKS5 proxy, and a page on the loopback."""

    socks = {"a": 1080, "b": 1081}

    def write(self, name: str, text: str) -> str:
        """Write ``text`` to ``name`` in the runtime folder (reachable by the server and its CLI)."""
        path = os.path.join(self.namespace.runtime_dir, name)
        with open(path, "w") as f:
            f.write(text)
        return path

    def start_pair(self, server):
        """Bring ``a`` and ``b`` up concurrently and serve :data:`PAGE`; return the two nodes."""
        keys = {"a": self.auth_key(server, "alice"), "b": self.auth_key(server, "bob")}
        nodes = [self.start_node(name, ssl_cert_file=self.ca.ca_pem,
                                 extra_args=[f"--socks5-server=127.0.0.1:{self.socks[name]}"])
                 for name in ("a", "b")]
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(lambda n: n.up(server.url, authkey=keys[n.name], hostname=n.name), nodes))
        serve_files(self.namespace, "www", HTTP_PORT, {"page": PAGE})
        self.pids = {n.name: n.pid for n in nodes}
        return nodes

    def fetch(self, src, dst, timeout: float = DENIED_TIMEOUT) -> str | None:
        """Fetch the page from ``dst``'s tailnet IP via ``src``'s proxy; None if it arrived, else why not."""
        try:
            status, body = fetch_via_socks(self.namespace, self.socks[src.name], dst.ip(), HTTP_PORT, "/page",
                                           timeout=timeout)
        except SocksFetchError as e:
            return str(e)
        if " 200 " not in status or body != PAGE:
            return f"unexpected answer {status!r} {body[:80]!r}"
        return None

    def wait_flows(self, src, dst, allowed: bool, timeout: float = 20.0) -> None:
        """Poll until a fetch from ``dst`` via ``src`` succeeds (``allowed``) or is refused."""
        what = f"{src.name} -> {dst.name} to be {'allowed' if allowed else 'denied'}"
        wait_for(lambda: (self.fetch(src, dst) is None) == allowed, timeout, what, interval=0.2,
                 details=lambda: src.describe(15) + "\n" + dst.describe(15))

    def assert_one_way(self, src, dst) -> None:
        """``src`` reaches ``dst`` (at once) and ``dst`` cannot reach ``src`` (its fetch times out)."""
        self.wait_flows(src, dst, allowed=True)
        self.wait_flows(dst, src, allowed=False)
        # Settled: check both once more, and what the netmaps say.
        self.assertIsNone(self.fetch(src, dst))
        self.assertIsNotNone(self.fetch(dst, src))
        self.assertEqual(filter_sources(dst), set(addresses(src)))
        self.assertEqual(filter_sources(src), set())

    def assert_no_restart(self, *nodes) -> None:
        """Every client is the same running ``tailscaled`` as at the start."""
        for node in nodes:
            node.process.check_running()
            self.assertEqual(node.pid, self.pids[node.name])
            self.assertEqual(node.backend_state(), "Running")


def netmap(node) -> dict:
    """``tailscale debug netmap`` parsed."""
    return json.loads(node.cli("debug", "netmap", timeout=15).stdout)


def filter_sources(node) -> set[str]:
    """Every source prefix in the node's packet filter (who may open connections to it)."""
    return {src for match in netmap(node).get("PacketFilter") or [] for src in match.get("Srcs") or []}


def addresses(node) -> list[str]:
    """The node's tailnet addresses as /32 and /128 prefixes."""
    return [f"{node.ip(4)}/32", f"{node.ip(6)}/128"]


class PolicyChangeTests(_PolicyTestCase):
    """A one-way policy holds on the data plane and flips without any client restarting."""

    def test_file_mode_sighup(self):
        """With policy.mode file, editing the file and sending SIGHUP flips A->B into B->A."""
        path = self.write("policy.hujson", A_TO_B)
        server = self.start_tls_server(policy={"mode": "file", "path": path})
        a, b = self.start_pair(server)
        self.assert_one_way(a, b)

        self.write("policy.hujson", B_TO_A)
        os.kill(server.process.pid, signal.SIGHUP)  # the server is a process this test started
        self.assert_one_way(b, a)
        self.assertIn("policy reloaded (file)", server.process.log_tail(400))
        self.assert_no_restart(a, b)

    def test_database_mode_policy_set(self):
        """With policy.mode database, `headscale policy set -f` flips A->B into B->A."""
        server = self.start_tls_server(policy={"mode": "database"})
        a, b = self.start_pair(server)
        server.cli("policy", "set", "-f", self.write("a-to-b.hujson", A_TO_B))
        self.assert_one_way(a, b)

        server.cli("policy", "set", "-f", self.write("b-to-a.hujson", B_TO_A))
        self.assert_one_way(b, a)
        self.assertEqual(server.cli("policy", "get").stdout.strip(), B_TO_A.strip())
        self.assert_no_restart(a, b)


class InvalidPolicyTests(_PolicyTestCase):
    """An invalid policy is refused with its reason and the old one stays in force."""

    def test_database_mode_refused(self):
        """`policy check` and `policy set` refuse each invalid policy, naming why; A->B still holds."""
        server = self.start_tls_server(policy={"mode": "database"})
        a, b = self.start_pair(server)
        good = self.write("good.hujson", A_TO_B)
        server.cli("policy", "check", "-f", good)
        server.cli("policy", "set", "-f", good)
        self.assert_one_way(a, b)

        for name, (text, reason) in INVALID.items():
            path = self.write("bad.hujson", text)
            for command in ("check", "set"):
                proc = server.cli("policy", command, "-f", path, check=False)
                self.assertNotEqual(proc.returncode, 0, f"policy {command} accepted the {name} policy")
                self.assertIn(reason, proc.stderr + proc.stdout, f"policy {command}, {name}")
            self.assertEqual(server.cli("policy", "get").stdout.strip(), A_TO_B.strip(), name)
        self.assert_one_way(a, b)
        self.assert_no_restart(a, b)

    def test_file_mode_sighup_refused(self):
        """A SIGHUP with each invalid file logs the reason and keeps A->B; a valid edit then applies."""
        path = self.write("policy.hujson", A_TO_B)
        server = self.start_tls_server(policy={"mode": "file", "path": path})
        a, b = self.start_pair(server)
        self.assert_one_way(a, b)

        for count, (name, (text, reason)) in enumerate(INVALID.items(), 1):
            self.write("policy.hujson", text)
            os.kill(server.process.pid, signal.SIGHUP)  # the server is a process this test started

            def logged(count=count, reason=reason):
                with open(server.log_path) as f:
                    lines = [line for line in f if "policy reload rejected" in line]
                return len(lines) >= count and reason in lines[count - 1]

            wait_for(logged, 10, f"the server to log why the {name} policy was rejected", interval=0.1,
                     details=server.describe)
        self.assert_one_way(a, b)

        self.write("policy.hujson", B_TO_A)
        os.kill(server.process.pid, signal.SIGHUP)
        self.assert_one_way(b, a)
        self.assert_no_restart(a, b)


ROUTE = "10.33.0.0/16"
ROUTE_HOST = "10.33.0.1"

ROUTES_POLICY = """\
{
  "acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}],
  "autoApprovers": {
    "routes": {"10.33.0.0/16": ["alice@"]},
    "exitNode": ["alice@"],
  },
}
"""


class RoutesTests(ScenarioMixin, RealClientTestCase):
    """Subnet routes and exit nodes approved by autoApprovers, HA failover, as official clients see them."""

    def start(self):
        """A server with :data:`ROUTES_POLICY` in database mode (set before any node joins)."""
        server = self.start_tls_server(policy={"mode": "database"})
        path = os.path.join(self.namespace.runtime_dir, "routes.hujson")
        with open(path, "w") as f:
            f.write(ROUTES_POLICY)
        server.cli("users", "create", "alice")
        server.cli("users", "create", "bob")
        server.cli("policy", "set", "-f", path)
        return server

    def test_subnet_route_auto_approved_and_failover(self):
        """Two routers of 10.33.0.0/16 are auto-approved; the first is primary, traffic reaches the
        subnet through it, and when it stops the second takes over and traffic flows again."""
        server = self.start()
        # A host of the subnet: an extra address on the namespace's lo, serving a blob.
        self.namespace.run(["ip", "addr", "add", f"{ROUTE_HOST}/32", "dev", "lo"])
        self.namespace.assert_safe()
        blob = os.urandom(64 * 1024)
        serve_files(self.namespace, "www-subnet", HTTP_PORT, {"blob": blob}, bind=ROUTE_HOST)

        key = self.auth_key(server, "alice")
        r1, r2 = self.up_nodes(server, key, ["r1", "r2"], up_args=[f"--advertise-routes={ROUTE}"])
        (client,) = self.up_nodes(server, self.auth_key(server, "bob"), ["client"], up_args=["--accept-routes"],
                                  extra_args=["--socks5-server=127.0.0.1:1080"])

        def primary_router():
            peers = peers_by_name(client.status_json())
            serving = [name for name, p in peers.items() if ROUTE in (p.get("PrimaryRoutes") or [])]
            return serving[0] if len(serving) == 1 and peers[serving[0]].get("Online") else None

        self.assertEqual(wait_for(primary_router, 20, f"one primary router for {ROUTE}", interval=0.2,
                                  details=client.describe), "r1")
        routes = json.loads(server.cli("nodes", "list-routes", "-o", "json").stdout)
        approved = {n["given_name"]: n.get("approved_routes") for n in routes}
        self.assertIn(ROUTE, approved["r1"])
        self.assertIn(ROUTE, approved["r2"])

        def fetched_via(router):
            # The proxy would also reach ROUTE_HOST directly through the namespace if
            # the route were not in use, so the router's WireGuard counter must grow by the blob.
            before = peers_by_name(client.status_json())[router]["RxBytes"]
            try:
                _, body = fetch_via_socks(self.namespace, 1080, ROUTE_HOST, HTTP_PORT, "/blob", timeout=3)
            except SocksFetchError:
                return False
            received = peers_by_name(client.status_json())[router]["RxBytes"] - before
            return body == blob and received >= len(blob)

        wait_for(lambda: fetched_via("r1"), 20, f"the client to fetch from {ROUTE_HOST} through r1",
                 interval=0.2, details=lambda: client.describe(15) + "\n" + r1.describe(15))

        r1.stop()
        # The server waits out its offline grace (10 s) before electing r2.
        wait_for(lambda: primary_router() == "r2", 30, "r2 to become the primary router", interval=0.5,
                 details=client.describe)
        self.assertFalse(peers_by_name(client.status_json())["r1"]["Online"])
        wait_for(lambda: fetched_via("r2"), 20, f"the client to fetch from {ROUTE_HOST} through r2",
                 interval=0.2, details=lambda: client.describe(15) + "\n" + r2.describe(15))

    def test_exit_nodes(self):
        """An exit node auto-approved by autoApprovers.exitNode is listed by `tailscale exit-node list`;
        one that is not auto-approved is listed only after `headscale nodes approve-routes`."""
        server = self.start()
        auto, manual = self.up_nodes(server, {"auto": self.auth_key(server, "alice"),
                                              "manual": self.auth_key(server, "bob")},
                                     ["auto", "manual"], up_args=["--advertise-exit-node"], concurrent=True)
        (client,) = self.up_nodes(server, self.auth_key(server, "bob"), ["client"])

        def exit_nodes():
            out = client.cli("exit-node", "list", timeout=15).stdout
            return {line.split()[1].split(".")[0] for line in out.splitlines()
                    if line.strip() and line.split()[0][:1].isdigit()}

        wait_for(lambda: exit_nodes() == {"auto"}, 20, "the client to list only 'auto' as an exit node",
                 interval=0.3, details=client.describe)
        self.assertTrue(peers_by_name(client.status_json())["auto"]["ExitNodeOption"])

        manual_id = next(n["id"] for n in json.loads(server.cli("nodes", "list", "-o", "json").stdout)
                         if n["given_name"] == "manual")
        server.cli("nodes", "approve-routes", "-i", str(manual_id), "-r", "0.0.0.0/0,::/0")
        wait_for(lambda: exit_nodes() == {"auto", "manual"}, 20, "the client to list 'manual' too",
                 interval=0.3, details=client.describe)
        self.assertTrue(peers_by_name(client.status_json())["manual"]["ExitNodeOption"])


MAGICDNS_AAAA = """\
{
  "nodeAttrs": [{"target": ["*"], "attr": ["magicdns-aaaa"]}],
}
"""


class MagicDNSTests(ScenarioMixin, RealClientTestCase):
    """MagicDNS names resolve on the clients (`tailscale dns query` asks the internal resolver)."""

    def query(self, node, name, rtype):
        """The answers (``Body`` values) to ``tailscale dns query --json NAME TYPE`` on ``node``."""
        out = json.loads(node.cli("dns", "query", "--json", name, rtype, timeout=15).stdout)
        self.assertEqual(out["ResponseCode"], "RCodeSuccess", out)
        return [answer["Body"] for answer in out.get("Answers") or []]

    def test_peer_name_resolves(self):
        """A node resolves another's MagicDNS name to its IPv4 address; its IPv6 address is answered
        once the policy gives the node the magicdns-aaaa attribute (as the client requires)."""
        server = self.start_tls_server(policy={"mode": "database"})
        a, b = self.up_nodes(server, self.auth_key(server), ["a", "b"], concurrent=True)
        name = f"b.{BASE_DOMAIN}."
        wait_for(lambda: self.query(a, name, "A") == [b.ip(4)], 15, f"a to resolve {name} to {b.ip(4)}",
                 interval=0.3, details=a.describe)
        self.assertEqual(self.query(a, name, "AAAA"), [])
        self.assertEqual(self.query(b, f"a.{BASE_DOMAIN}.", "A"), [a.ip(4)])

        path = os.path.join(self.namespace.runtime_dir, "aaaa.hujson")
        with open(path, "w") as f:
            f.write(MAGICDNS_AAAA)
        server.cli("policy", "set", "-f", path)
        wait_for(lambda: self.query(a, name, "AAAA") == [b.ip(6)], 15, f"a to resolve {name} AAAA to {b.ip(6)}",
                 interval=0.3, details=a.describe)
        self.assertEqual(self.query(a, name, "A"), [b.ip(4)])
