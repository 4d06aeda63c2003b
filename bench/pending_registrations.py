# -*- test-case-name: tests.storage.test_auth_requests -*-
"""
Keyless register requests with a huge Hostinfo against a real server: how much does it keep?

Starts ``twistd -n headscale`` from this checkout on a loopback port (SQLite in
a temporary folder), opens one Noise connection and sends ``--count`` register
requests without an auth key, each with a new node key and a Hostinfo padded
to ``--hostinfo-bytes``. Prints what the client was answered (login URLs,
refusals naming the cap), the server's RSS before, right after and
``--settle`` seconds after, and the rows in ``auth_requests``.

    PYTHONPATH=src:. python bench/pending_registrations.py --count 300 --hostinfo-bytes 900000

Everything goes to 127.0.0.1. This is a timed run, so it is a bench script,
not a test; ``tests/control/test_registration.py`` proves the bounds by size.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time

__all__ = ["main"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def _start_server(directory: str, port: int, top: str) -> subprocess.Popen:
    config = {
        "server_url": f"http://127.0.0.1:{port}",
        "listen_addr": f"127.0.0.1:{port}",
        "noise": {"private_key_path": "./var/noise_private.key"},
        "database": {"type": "sqlite", "sqlite": {"path": "./var/db.sqlite"}},
        "dns": {"base_domain": "bench.example"},
        "log": {"level": "warn"},
    }
    path = os.path.join(directory, "config.yaml")
    with open(path, "w") as f:
        json.dump(config, f)  # JSON is YAML
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.join(top, "src"), top]))
    proc = subprocess.Popen(
        [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n", "headscale", "-c", path],
        cwd=directory, env=env, stdout=subprocess.DEVNULL, stderr=open(os.path.join(directory, "server.log"), "w"),
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return proc
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit(f"the server did not start; see {directory}/server.log")


def _flood(port: int, count: int, hostinfo_bytes: int) -> dict[str, int]:
    from twisted.internet import reactor
    from twisted.internet.defer import ensureDeferred
    from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

    from headscale_tw.testing.noise_client import KeyClient, NoiseClient

    outcome: dict[str, int] = {}

    async def run() -> None:
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port)
        key_client = KeyClient(host=f"127.0.0.1:{port}".encode())
        await connectProtocol(endpoint, key_client)
        server_public = await key_client.result
        client = NoiseClient(server_public, host=f"127.0.0.1:{port}".encode())
        await connectProtocol(endpoint, client)
        await client.ready
        pad = "x" * hostinfo_bytes
        for _ in range(count):
            body = json.dumps({
                "Version": 133, "NodeKey": "nodekey:" + os.urandom(32).hex(),
                "Hostinfo": {"Hostname": "flood", "OS": "linux", "Userspace": True,
                             "Services": [{"Proto": "tcp", "Port": 1, "Description": pad}]},
            }).encode()
            response = await client.request(b"POST", b"/machine/register", body)
            if response.status != 200:
                kind = f"HTTP {response.status}"
            else:
                answer = json.loads(response.body)
                kind = "AuthURL" if "AuthURL" in answer else "Error: " + answer.get("Error", "?")[:60]
            outcome[kind] = outcome.get(kind, 0) + 1
        client.close()

    def stop(result):
        reactor.stop()
        return result

    reactor.callWhenRunning(lambda: ensureDeferred(run()).addBoth(stop))
    reactor.run()
    return outcome


def main(argv: list[str] | None = None) -> None:
    """Run the flood and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=300)
    parser.add_argument("--hostinfo-bytes", type=int, default=900_000)
    parser.add_argument("--settle", type=float, default=5.0, help="seconds to wait before the last RSS reading")
    parser.add_argument("--tree", default=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                        help="the checkout whose server to run (default: this one), e.g. to compare with main")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as directory:
        port = _free_port()
        server = _start_server(directory, port, os.path.abspath(args.tree))
        try:
            time.sleep(1.0)
            before = _rss_kib(server.pid)
            started = time.monotonic()
            outcome = _flood(port, args.count, args.hostinfo_bytes)
            elapsed = time.monotonic() - started
            after = _rss_kib(server.pid)
            time.sleep(args.settle)
            settled = _rss_kib(server.pid)
            with sqlite3.connect(os.path.join(directory, "var", "db.sqlite")) as db:
                try:
                    rows, size = db.execute(
                        "SELECT COUNT(*), COALESCE(SUM(length(details) + length(machine_key) + length(node_key)"
                        " + length(hostname) + length(source) + length(auth_id)), 0) FROM auth_requests").fetchone()
                except sqlite3.OperationalError:  # a tree from before schema version 2
                    rows = size = 0
        finally:
            server.terminate()
            server.wait(10)
    print(f"{args.count} keyless register requests, Hostinfo {args.hostinfo_bytes} bytes each, {elapsed:.1f} s")
    for kind, n in sorted(outcome.items()):
        print(f"  {n:5d}  {kind}")
    print(f"server RSS: before {before / 1024:.1f} MiB, after {after / 1024:.1f} MiB "
          f"(+{(after - before) / 1024:.1f}), {args.settle:.0f} s later {settled / 1024:.1f} MiB "
          f"(+{(settled - before) / 1024:.1f})")
    print(f"auth_requests: {rows} rows, {size} bytes of stored text")


if __name__ == "__main__":
    main()
