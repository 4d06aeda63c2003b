"""
Hostile load against a spawned server, with ``/health`` latency measured during each attack.

Each attack runs against a fresh server (``SpawnedServer``: SQLite, plain HTTP on
127.0.0.1) while a prober thread asks ``GET /health`` every 50 ms and records how
long each answer took. What an attack does, and what it reports beside the
``/health`` figures:

``routes``        one registered node announces ``--routes`` subnet routes in a lite
                  map request; then the server is restarted (time until healthy).
``routes-peers``  the same with ``--peers`` streaming peers and a policy that
                  auto-approves the routes: every peer's view of the router changes.
``approve``       an admin approves ``--routes`` routes for that node through
                  ``/api/v1/node/N/approve_routes``.
``keyless``       ``--keyless`` register requests without a key, each with a 0.9 MB
                  Hostinfo, on one Noise connection; RSS before and after.
``preauth``       ``--wrong`` register requests with wrong pre-auth keys on one Noise
                  connection; the status/answer counts (throttled or refused).
``apikey``        ``--wrong`` admin requests with wrong API keys; status counts.
``bigpost``       an unauthenticated POST announcing 500 MiB; how many bytes the
                  server read before it answered or closed.
``garbage``       ``--wrong`` connections that send garbage instead of HTTP/Noise.

Run (about a minute per attack on the project's 2-core machines)::

    python bench/hostile.py                 # every attack
    python bench/hostile.py routes keyless  # some

Figures are printed as a table and written to ``bench/results/hostile-<time>.json``.
This is a benchmark, not a test: timing is what it measures. Everything goes to
127.0.0.1 only, and every loop is bounded in count and time.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import threading
import time
import urllib.error
import urllib.request

from twisted.internet import reactor
from twisted.internet.defer import ensureDeferred

from headscale_tw.bench import wire
from headscale_tw.bench.server import SpawnedServer
from headscale_tw.bench.simnode import RegistrationFailed, SimNode, TCPConnector
from headscale_tw.control.framing import encode_json

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


class HealthProbe(threading.Thread):
    """Ask ``/health`` every ``interval`` seconds until stopped; keep each answer's latency in ms."""

    def __init__(self, url: str, interval: float = 0.05, timeout: float = 30.0) -> None:
        super().__init__(daemon=True)
        self.url = url + "/health"
        self.interval = interval
        self.timeout = timeout
        self.latencies: list[float] = []
        #: (when the probe was sent, its latency in ms), for :meth:`during`.
        self.timed: list[tuple[float, float]] = []
        self.failures = 0
        #: The longest any probe waited, answered or not (a probe cut off by a restart still waited).
        self.longest_ms = 0.0
        self._halt = threading.Event()
        self._running = threading.Event()
        self._running.set()

    def run(self) -> None:
        while not self._halt.is_set():
            if not self._running.wait(self.interval):
                continue
            started = time.monotonic()
            try:
                with urllib.request.urlopen(self.url, timeout=self.timeout) as r:
                    r.read()
                self.latencies.append((time.monotonic() - started) * 1000)
                self.timed.append((started, self.latencies[-1]))
            except (OSError, urllib.error.URLError):
                self.failures += 1
            self.longest_ms = max(self.longest_ms, (time.monotonic() - started) * 1000)
            self._halt.wait(self.interval)

    def during(self, start: float, end: float) -> dict:
        """The probes sent between ``start`` and ``end`` (monotonic) or waiting then: count and longest, ms."""
        window = [ms for sent, ms in list(self.timed) if start - ms / 1000 <= sent <= end]
        return {"probes": len(window), "max_ms": round(max(window, default=0.0), 1)}

    def pause(self) -> None:
        """Stop probing for a while (the server is being restarted on purpose)."""
        self._running.clear()

    def resume(self) -> None:
        """Probe again after :meth:`pause`."""
        self._running.set()

    def stop(self) -> dict:
        self._halt.set()
        self._running.set()
        self.join(self.timeout + 1)
        values = sorted(self.latencies) or [0.0]
        return {
            "probes": len(self.latencies),
            "failed": self.failures,
            "p50_ms": round(statistics.median(values), 1),
            "p99_ms": round(values[min(len(values) - 1, int(len(values) * 0.99))], 1),
            "max_ms": round(values[-1], 1),
            "longest_wait_ms": round(self.longest_ms, 1),
        }


def _node(server: SpawnedServer, index: int, key: str) -> SimNode:
    connector = TCPConnector(reactor, "127.0.0.1", server.port, timeout=60)
    return SimNode(index, connector, f"127.0.0.1:{server.port}".encode(), key)


def _count(counts: dict, what: str) -> None:
    counts[what] = counts.get(what, 0) + 1


def _api_key(server: SpawnedServer) -> str:
    return server.cli("apikeys", "create", "-e", "1h").strip().splitlines()[-1]


def _api(server: SpawnedServer, method: str, path: str, key: str, body: dict | None = None) -> tuple[int, bytes]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(server.url + path, data=data, method=method,
                                     headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _routes(count: int) -> list[str]:
    return [f"10.{i // 256 % 256}.{i % 256}.0/24" for i in range(count)]


async def attack_routes(server: SpawnedServer, args: argparse.Namespace) -> dict:
    keys = server.make_keys()
    node = _node(server, 1, keys["reusable"])
    await node.fetch_key()
    await node.dial()
    await node.register()
    info = node._hostinfo(netinfo=True)
    info["RoutableIPs"] = _routes(args.routes)
    body = wire.map_body(node.node_key, node.disco_key, info, stream=False, endpoints=["127.0.0.1:41641"])
    started = time.monotonic()
    response = await node.client.request(b"POST", b"/machine/map", encode_json(body),
                                         wire.request_headers(node.node_key))
    answered = time.monotonic() - started
    args.probe.pause()
    server.keep = True
    server.stop()
    server.keep = False
    started = time.monotonic()
    server.start(timeout=300)
    args.probe.resume()
    return {"status": response.status, "answer": response.body[:160].decode(errors="replace"),
            "answered_s": round(answered, 2), "restart_healthy_s": round(time.monotonic() - started, 2)}


#: For ``routes-peers``: the bench user's nodes reach 10.0.0.0/8 and may have routes there auto-approved.
ROUTER_POLICY = json.dumps({
    "acls": [{"action": "accept", "src": ["bench@"], "dst": ["bench@:*", "10.0.0.0/8:*"]}],
    "autoApprovers": {"routes": {"10.0.0.0/8": ["bench@"]}},
})


async def attack_routes_peers(server: SpawnedServer, args: argparse.Namespace) -> dict:
    keys = server.make_keys()
    peers = [_node(server, 10 + i, keys["reusable"]) for i in range(args.peers)]
    for peer in peers:
        await peer.up()
    node = _node(server, 1, keys["reusable"])
    await node.up()
    info = node._hostinfo(netinfo=True)
    info["RoutableIPs"] = _routes(args.routes)
    body = wire.map_body(node.node_key, node.disco_key, info, stream=False, endpoints=["127.0.0.1:41641"])
    frames = sum(len(p.frames) for p in peers)
    cpu_before = server.stats()["cpu_s"]
    started = time.monotonic()
    response = await node.client.request(b"POST", b"/machine/map", encode_json(body),
                                         wire.request_headers(node.node_key))
    answered = time.monotonic() - started
    ended = time.monotonic()
    await _in_thread(time.sleep, 0.5)  # let the probes sent meanwhile come back
    cpu = server.stats()["cpu_s"] - cpu_before  # the announcement, its fan-out and 0.5 s of probes
    api = _api_key(server)
    listed = json.loads(_api(server, "GET", "/api/v1/node", api)[1])["nodes"]
    router = [n for n in listed if n["name"] == node.hostname or n.get("givenName") == node.hostname]
    served = len(router[0].get("subnetRoutes") or router[0].get("approvedRoutes") or []) if router else None
    return {"status": response.status, "answer": response.body[:160].decode(errors="replace"),
            "answered_s": round(answered, 3), "peers": args.peers, "routes_served": served,
            "health_during": args.probe.during(started, ended), "server_cpu_s": round(cpu, 2),
            "peer_frames_after": sum(len(p.frames) for p in peers) - frames}


async def attack_approve(server: SpawnedServer, args: argparse.Namespace) -> dict:
    keys = server.make_keys()
    node = _node(server, 1, keys["reusable"])
    await node.up()
    api = _api_key(server)
    nodes = json.loads(_api(server, "GET", "/api/v1/node", api)[1])["nodes"]
    started = time.monotonic()
    status, answer = await _in_thread(_api, server, "POST", f"/api/v1/node/{nodes[0]['id']}/approve_routes", api,
                                      {"routes": _routes(args.routes)})
    return {"status": status, "answer": answer[:160].decode(errors="replace"),
            "answered_s": round(time.monotonic() - started, 2)}


async def attack_keyless(server: SpawnedServer, args: argparse.Namespace) -> dict:
    node = _node(server, 1, "")
    await node.fetch_key()
    await node.dial()
    before = server.stats()["rss_mib"]
    counts: dict = {}
    padding = "x" * 900_000
    for i in range(args.keyless):
        info = node._hostinfo()
        info["OSVersion"] = padding
        body = wire.register_body(wire.random_key("nodekey"), "", info, node.nl_key)
        body["Auth"] = None
        try:
            response = await node.client.request(b"POST", b"/machine/register", encode_json(body),
                                                 wire.request_headers(body["NodeKey"]))
            _count(counts, str(response.status))
        except Exception as e:  # the server may close the connection: that is an answer too
            _count(counts, type(e).__name__)
            node.client = None
            await node.dial()
    after = server.stats()["rss_mib"]
    return {"answers": counts, "rss_before_mib": before, "rss_after_mib": after,
            "rss_growth_mib": round(after - before, 1)}


async def attack_preauth(server: SpawnedServer, args: argparse.Namespace) -> dict:
    node = _node(server, 1, "")
    await node.fetch_key()
    await node.dial()
    counts: dict = {}
    started = time.monotonic()
    for i in range(args.wrong):
        body = wire.register_body(wire.random_key("nodekey"), f"hskey-auth-wrong{i:08d}-{'A' * 64}",
                                  node._hostinfo(), node.nl_key)
        try:
            response = await node.client.request(b"POST", b"/machine/register", encode_json(body),
                                                 wire.request_headers(body["NodeKey"]))
            answer = json.loads(response.body or b"{}")
            error = answer.get("Error") or ""
            _count(counts, f"{response.status} " + ("throttled" if error.startswith("too many") else
                                                    "refused" if error else "other"))
        except (RegistrationFailed, ValueError, ConnectionError) as e:
            _count(counts, type(e).__name__)
        except Exception as e:
            _count(counts, type(e).__name__)
            await node.dial()
    elapsed = time.monotonic() - started
    return {"answers": counts, "rate_per_s": round(args.wrong / elapsed, 1)}


async def attack_apikey(server: SpawnedServer, args: argparse.Namespace) -> dict:
    counts: dict = {}
    started = time.monotonic()
    for i in range(args.wrong):
        status, _ = await _in_thread(_api, server, "GET", "/api/v1/user", f"hskey-api-wrong{i:06d}-{'B' * 40}")
        _count(counts, str(status))
    elapsed = time.monotonic() - started
    return {"answers": counts, "rate_per_s": round(args.wrong / elapsed, 1)}


def _big_post(port: int, announced: int, limit_s: float = 60.0) -> dict:
    sent = 0
    chunk = b"{" * (1 << 20)
    answer = b""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"POST /api/v1/user HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: %d\r\n\r\n" % announced)
        s.setblocking(False)
        deadline = time.monotonic() + limit_s
        while sent < announced and time.monotonic() < deadline:
            try:
                answer += s.recv(4096)
                if answer:
                    break
            except BlockingIOError:
                pass
            except OSError:
                break
            try:
                sent += s.send(chunk[: min(len(chunk), announced - sent)])
            except BlockingIOError:
                time.sleep(0.001)
            except OSError:
                break
    first_line = answer.split(b"\r\n", 1)[0].decode(errors="replace")
    return {"announced_bytes": announced, "sent_before_answer_bytes": sent, "answer": first_line or "(closed)"}


async def attack_bigpost(server: SpawnedServer, args: argparse.Namespace) -> dict:
    return await _in_thread(_big_post, server.port, 500 << 20)


def _garbage(port: int, count: int) -> dict:
    counts: dict = {}
    for i in range(count):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                s.sendall(os.urandom(64) + b"\r\n\r\n")
                s.settimeout(10)
                _count(counts, "answered" if s.recv(64) else "closed")
        except OSError as e:
            _count(counts, type(e).__name__)
    return counts


async def attack_garbage(server: SpawnedServer, args: argparse.Namespace) -> dict:
    return {"connections": await _in_thread(_garbage, server.port, args.wrong)}


def _in_thread(fn, *a):
    from twisted.internet.threads import deferToThread

    return deferToThread(fn, *a)


ATTACKS = {
    "routes": attack_routes,
    "routes-peers": attack_routes_peers,
    "approve": attack_approve,
    "keyless": attack_keyless,
    "preauth": attack_preauth,
    "apikey": attack_apikey,
    "bigpost": attack_bigpost,
    "garbage": attack_garbage,
}


async def run(args: argparse.Namespace) -> list[dict]:
    results = []
    for name in args.attacks or list(ATTACKS):
        server = SpawnedServer(policy=ROUTER_POLICY if name == "routes-peers" else None).start()
        probe = HealthProbe(server.url, interval=args.interval)
        probe.start()
        args.probe = probe
        started = time.monotonic()
        try:
            outcome = await ATTACKS[name](server, args)
        except Exception as e:  # report and go on: one broken attack must not hide the others
            outcome = {"error": f"{type(e).__name__}: {e}"}
        health = probe.stop()
        alive = server.process is not None and server.process.poll() is None
        stats = server.stats() if alive else {}
        server.stop()
        row = {"attack": name, "seconds": round(time.monotonic() - started, 1), "health": health,
               "server_alive": alive, "rss_mib": stats.get("rss_mib"), **outcome}
        print(json.dumps(row), flush=True)
        results.append(row)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("attacks", nargs="*", help=f"attacks to run, of {', '.join(ATTACKS)} (default: all)")
    parser.add_argument("--routes", type=int, default=10_000)
    parser.add_argument("--interval", type=float, default=0.05, help="seconds between /health probes")
    parser.add_argument("--peers", type=int, default=20, help="streaming peers for routes-peers")
    parser.add_argument("--keyless", type=int, default=300)
    parser.add_argument("--wrong", type=int, default=2_000)
    args = parser.parse_args()
    unknown = set(args.attacks) - set(ATTACKS)
    if unknown:
        parser.error(f"unknown attack(s): {', '.join(sorted(unknown))}")
    outcome: dict = {}

    def done(results):
        outcome["results"] = results
        reactor.stop()

    def failed(failure):
        outcome["error"] = failure
        reactor.stop()

    reactor.callWhenRunning(lambda: ensureDeferred(run(args)).addCallbacks(done, failed))
    reactor.run()
    if "error" in outcome:
        outcome["error"].printTraceback()
        raise SystemExit(1)
    os.makedirs(RESULTS, exist_ok=True)
    path = os.path.join(RESULTS, time.strftime("hostile-%Y%m%d-%H%M%S.json"))
    with open(path, "w") as f:
        json.dump({"args": {k: v for k, v in vars(args).items() if k != "probe"}, "results": outcome["results"]}, f, indent=1)
    print(f"{'attack':<9} {'health p50':>10} {'p99':>8} {'max':>8} {'longest':>8} {'failed':>6}  outcome")
    for row in outcome["results"]:
        h = row["health"]
        rest = {k: v for k, v in row.items() if k not in ("attack", "health", "seconds", "server_alive")}
        print(f"{row['attack']:<9} {h['p50_ms']:>9}ms {h['p99_ms']:>6}ms {h['max_ms']:>6}ms "
              f"{h['longest_wait_ms']:>6}ms {h['failed']:>6}  {json.dumps(rest)[:300]}")
    print(f"written to {path}")


if __name__ == "__main__":
    main()
