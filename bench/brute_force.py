"""
Brute force against a spawned server: is it throttled, visible, and does everyone else keep being served?

Method
------
* ``twistd -n headscale`` in a temp dir (:class:`SpawnedServer`: plain HTTP on
  loopback, SQLite), one user and a reusable pre-auth key made with the CLI.
* The attacker dials from ``127.0.0.66`` and the honest clients from
  ``127.0.0.7`` (both loopback: Linux routes all of 127/8 to ``lo``), so the
  server sees two source addresses.
* Three attacks, one after the other, each ``--attempts`` long with
  ``--concurrency`` requests in flight:

  - ``preauth``: wrong pre-auth keys (half unknown prefixes, half the real
    key's prefix with a wrong secret) in ``/machine/register`` on **one** Noise
    connection, the case of issue 10 (800/s unthrottled);
  - ``apikey``: ``GET /api/v1/user`` with wrong API keys, over HTTP/1.1;
  - ``handshake``: ``/ts2021`` upgrades whose initiation the codec refuses.

  During each attack the honest side polls ``/health`` every 50 ms (from a
  separate process, so the attacker's client work here is not counted as
  server latency) and, 0.2 s in, a simulated node (:class:`SimNode`, the full ``tailscale up``
  sequence) logs in with the valid key.
* A first phase without attack gives the baseline.
* Printed per attack: wall time, what the attacker was answered (refused
  as wrong vs throttled), ``/health`` latency (p50 / max), the honest
  login's time, and the server's CPU. At the end the script waits for the
  summary lines (one per source and minute) and counts the server log's
  lines that mention the attacker, and reads the throttle counters from
  ``/metrics``.

Run::

    python bench/brute_force.py --attempts 2000 --concurrency 50
"""

from __future__ import annotations

import argparse
import base64
import json
import re
import subprocess
import sys
import time

from twisted.internet import defer, task
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

from headscale_tw import secrets as keysecrets
from headscale_tw.bench import wire
from headscale_tw.bench.load import percentile
from headscale_tw.bench.server import SpawnedServer
from headscale_tw.bench.simnode import KeyFetch, SimNode

ATTACKER = "127.0.0.66"
HONEST = "127.0.0.7"


class BoundConnector:
    """Dials the server from a chosen loopback source address."""

    def __init__(self, reactor, port: int, source: str) -> None:
        self.reactor = reactor
        self.port = port
        self.source = source

    def connect(self, protocol):
        endpoint = TCP4ClientEndpoint(self.reactor, "127.0.0.1", self.port, timeout=30,
                                      bindAddress=(self.source, 0))
        return connectProtocol(endpoint, protocol)


def _wrong_keys(real_key: str, n: int) -> list[str]:
    _, real_prefix, _ = keysecrets.parse_key(real_key)
    keys = []
    for i in range(n):
        text, prefix, _ = keysecrets.generate_key("auth")
        keys.append(text.replace(prefix, real_prefix) if i % 2 else text)
    return keys


async def _bounded(jobs, concurrency: int) -> list:
    sem = defer.DeferredSemaphore(concurrency)
    return await defer.gatherResults([sem.run(lambda job=job: defer.Deferred.fromCoroutine(job())) for job in jobs])


async def attack_preauth(reactor, server, key, n, concurrency):
    attacker = SimNode(0, BoundConnector(reactor, server.port, ATTACKER), b"127.0.0.1", "")
    await attacker.fetch_key()
    await attacker.dial()

    def job_for(wrong):
        async def job():
            body = wire.register_body(wire.random_key("nodekey"), wrong, attacker._hostinfo(), attacker.nl_key)
            response = await attacker.client.request(b"POST", b"/machine/register", json.dumps(body).encode(),
                                                     wire.request_headers(attacker.node_key))
            error = json.loads(response.body).get("Error", "")
            return "throttled" if error.startswith("too many") else error or f"HTTP {response.status}"
        return job

    return await _bounded([job_for(k) for k in _wrong_keys(key, n)], concurrency)


async def attack_apikey(reactor, server, key, n, concurrency):
    def job():
        async def run():
            wrong, _, _ = keysecrets.generate_key("api")
            fetch = KeyFetch(b"GET /api/v1/user HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer "
                             + wrong.encode() + b"\r\nConnection: close\r\n\r\n")
            await BoundConnector(reactor, server.port, ATTACKER).connect(fetch)
            status, _ = await fetch.result
            return {401: "wrong", 429: "throttled"}.get(status, f"HTTP {status}")
        return run

    return await _bounded([job() for _ in range(n)], concurrency)


async def attack_handshake(reactor, server, key, n, concurrency):
    garbage = base64.b64encode(bytes(101))
    request = (b"POST /ts2021 HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: tailscale-control-protocol\r\n"
               b"Connection: upgrade\r\nX-Tailscale-Handshake: " + garbage + b"\r\nContent-Length: 0\r\n\r\n")

    def job():
        async def run():
            fetch = KeyFetch(request)
            await BoundConnector(reactor, server.port, ATTACKER).connect(fetch)
            status, _ = await fetch.result
            return {101: "refused handshake", 429: "throttled"}.get(status, f"HTTP {status}")
        return run

    return await _bounded([job() for _ in range(n)], concurrency)


#: The /health poller runs in its own process, so the attacker's client work (in this
#: process) does not show up as server latency. It polls until its stdin closes.
_POLLER = '''
import http.client, json, select, sys, time
port, source = int(sys.argv[1]), sys.argv[2]
latencies = []
while not select.select([sys.stdin], [], [], 0)[0]:
    started = time.monotonic()
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10, source_address=(source, 0))
        conn.request("GET", "/health")
        ok = conn.getresponse().status == 200
        conn.close()
    except OSError:
        ok = False
    latencies.append((time.monotonic() - started) * 1000 if ok else 1e9)
    time.sleep(0.05)
print(json.dumps(latencies))
'''


def start_health_poller(server) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", _POLLER, str(server.port), HONEST],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def stop_health_poller(poller: subprocess.Popen) -> list[float]:
    out, _ = poller.communicate("", timeout=30)
    return json.loads(out)


async def honest_login(reactor, server, key, index, delay):
    await task.deferLater(reactor, delay, lambda: None)
    node = SimNode(index, BoundConnector(reactor, server.port, HONEST), b"127.0.0.1", key)
    started = time.monotonic()
    await node.up()
    node.client.transport.loseConnection()
    return (time.monotonic() - started) * 1000


async def no_attack(reactor, server, key, n, concurrency):
    """The baseline: three quiet seconds."""
    await task.deferLater(reactor, 3, lambda: None)
    return []


async def run_attack(reactor, server, key, name, attack, n, concurrency, index):
    cpu0 = server.stats()["cpu_s"]
    poller = start_health_poller(server)
    login = defer.Deferred.fromCoroutine(honest_login(reactor, server, key, index, 0.2))
    started = time.monotonic()
    answers = await attack(reactor, server, key, n, concurrency)
    wall = time.monotonic() - started
    login_ms = await login
    latencies = stop_health_poller(poller)
    counts: dict = {}
    for answer in answers:
        counts[answer] = counts.get(answer, 0) + 1
    return {
        "attack": name, "attempts": len(answers), "wall_s": round(wall, 2), "per_s": round(len(answers) / wall),
        "answers": counts, "health_p50_ms": round(percentile(latencies, 50), 1),
        "health_max_ms": round(max(latencies), 1), "health_polls": len(latencies),
        "honest_login_ms": round(login_ms), "server_cpu_s": round(server.stats()["cpu_s"] - cpu0, 2),
    }


def _metrics(server) -> dict:
    import urllib.request

    with open(server.config_path) as f:
        port = re.search(r"metrics_listen_addr: 127.0.0.1:(\d+)", f.read()).group(1)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    return {m.group(1) + "{" + m.group(2) + "}": float(m.group(3))
            for m in re.finditer(r"^(headscale_auth_\w+)\{kind=\"(\w+)\"\} (\S+)$", text, re.M)}


async def main(reactor, options) -> None:
    server = SpawnedServer().start()
    try:
        key = server.make_keys()["reusable"]
        attacks = [("none", no_attack), ("preauth", attack_preauth), ("apikey", attack_apikey),
                   ("handshake", attack_handshake)]
        for index, (name, attack) in enumerate(attacks, start=1):
            result = await run_attack(reactor, server, key, name, attack, options.attempts, options.concurrency,
                                      index)
            print(json.dumps(result), flush=True)
        # The summary job runs every 60 s from start-up: wait for one after the attacks.
        deadline = time.monotonic() + 75
        while time.monotonic() < deadline:
            with open(server.log_path, errors="replace") as f:
                lines = [line.rstrip() for line in f if ATTACKER in line]
            summaries = [line[line.find("]") + 2:] for line in lines if " in the last " in line]
            if len(summaries) >= 3:
                break
            await task.deferLater(reactor, 1, lambda: None)
        print(json.dumps({"log_lines_naming_attacker": len(lines), "summary_lines": summaries}), flush=True)
        print(json.dumps({"metrics": _metrics(server)}), flush=True)
    finally:
        server.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--attempts", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=50)
    task.react(lambda reactor: defer.Deferred.fromCoroutine(main(reactor, parser.parse_args())))
