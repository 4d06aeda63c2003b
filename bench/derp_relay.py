# -*- test-case-name: tests.derp -*-
"""
DERP relay benchmark: throughput and idle-connection memory, next to a trivial relay.

Method
------
* The relay under test runs in a **separate process** (this script with
  ``--serve derp`` or ``--serve trivial``) on 127.0.0.1, plain TCP, speaking
  raw DERP (no HTTP upgrade, no TLS: the relay path is what is measured).
* ``derp``: :class:`headscale_tw.derp.server.DERPServer` (verify_client off).
* ``trivial``: a minimal Twisted relay that pairs connection 2k with 2k+1 and
  copies bytes between them: the floor cost of moving bytes through Twisted.
* Clients run in this process (one Twisted reactor). Each sender keeps a
  window of 64 packets of 1,200 bytes in flight towards its receiver and sends
  more as its receiver counts arrivals, for ``--seconds`` per case.
  1 and 10 sender/receiver pairs.
* Idle memory: the server's VmRSS (``/proc/<pid>/status``) before and after
  ``--idle`` idle, handshaken clients connect, divided by their number.

Prints a table and writes JSON (``--json``, default ``derp_relay.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

__all__ = ["main"]

PACKET = 1200
WINDOW = 64


def _serve(kind: str) -> None:
    from nacl.public import PrivateKey
    from twisted.internet import reactor
    from twisted.internet.protocol import Factory, Protocol

    if kind == "derp":
        from headscale_tw.derp.server import DERPServer

        factory = DERPServer(PrivateKey.generate(), reactor).factory()
    else:
        waiting: list = []

        class Relay(Protocol):
            peer = None

            def connectionMade(self):
                if waiting:
                    self.peer = waiting.pop()
                    self.peer.peer = self
                else:
                    waiting.append(self)

            def dataReceived(self, data):
                if self.peer is not None and self.peer.transport is not None:
                    self.peer.transport.write(data)

        factory = Factory.forProtocol(Relay)
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    print(port.getHost().port, flush=True)
    reactor.run()


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fp:
        for line in fp:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def _start_server(kind: str):
    env = dict(os.environ)
    proc = subprocess.Popen(
        [sys.executable, __file__, "--serve", kind], stdout=subprocess.PIPE, text=True, env=env
    )
    port = int(proc.stdout.readline())
    return proc, port


def _run_clients(kind: str, port: int, pairs: int, seconds: float, idle: int) -> dict:
    from twisted.internet import defer, reactor, task
    from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
    from twisted.internet.protocol import Protocol

    from headscale_tw.derp import _frames as f
    from headscale_tw.testing.derp_client import RecordingDERPClient

    result: dict = {}
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port)
    payload = os.urandom(PACKET)

    class Raw(Protocol):
        """Trivial-relay client: counts bytes, frames sized like DERP's."""

        def __init__(self):
            self.bytes = 0
            self.on_data = None

        def dataReceived(self, data):
            self.bytes += len(data)
            if self.on_data:
                self.on_data()

    async def derp_pair():
        rx = RecordingDERPClient(record=False)
        tx = RecordingDERPClient(record=False)
        await connectProtocol(endpoint, rx)
        await connectProtocol(endpoint, tx)
        await rx.ready
        await tx.ready
        return tx, rx

    async def trivial_pair():
        a, b = Raw(), Raw()
        await connectProtocol(endpoint, a)
        await connectProtocol(endpoint, b)
        await task.deferLater(reactor, 0.05, lambda: None)
        return a, b

    async def throughput(npairs: int) -> dict:
        made = [await (derp_pair() if kind == "derp" else trivial_pair()) for _ in range(npairs)]
        frame_len = f.FRAME_HEADER_LEN + f.KEY_LEN + PACKET
        state = {"running": True}
        sent = [0] * npairs

        def received(i):
            tx, rx = made[i]
            return rx.packet_count if kind == "derp" else rx.bytes // frame_len

        def pump(i):
            if not state["running"]:
                return
            tx, rx = made[i]
            while sent[i] - received(i) < WINDOW:
                sent[i] += 1
                if kind == "derp":
                    tx.send_packet(rx.public_key, payload)
                else:
                    tx.transport.write(f.send_packet_frame(b"\0" * 32, payload))

        for i, (tx, rx) in enumerate(made):
            if kind == "derp":
                rx.on_packet = lambda s, d, i=i: pump(i)
            else:
                rx.on_data = lambda i=i: pump(i)
        start_counts = [received(i) for i in range(npairs)]
        t0 = time.perf_counter()
        for i in range(npairs):
            pump(i)
        await task.deferLater(reactor, seconds, lambda: None)
        elapsed = time.perf_counter() - t0
        state["running"] = False
        total = sum(received(i) - start_counts[i] for i in range(npairs))
        for tx, rx in made:
            tx.transport.loseConnection()
            rx.transport.loseConnection()
        await task.deferLater(reactor, 0.2, lambda: None)
        return {
            "packets_per_s": total / elapsed,
            "MB_per_s": total * PACKET / elapsed / 1e6,
        }

    async def idle_memory(proc_pid: int) -> dict:
        before = _rss_kib(proc_pid)
        conns = []
        for _ in range(idle):
            if kind == "derp":
                c = RecordingDERPClient(record=False)
                await connectProtocol(endpoint, c)
                conns.append(c)
            else:
                c = Raw()
                await connectProtocol(endpoint, c)
                conns.append(c)
        if kind == "derp":
            await defer.gatherResults([c.ready for c in conns])
        await task.deferLater(reactor, 0.5, lambda: None)
        after = _rss_kib(proc_pid)
        for c in conns:
            c.transport.loseConnection()
        await task.deferLater(reactor, 0.3, lambda: None)
        return {"idle_connections": idle, "rss_kib_before": before, "rss_kib_after": after,
                "bytes_per_idle_conn": (after - before) * 1024 / idle}

    async def all_cases(pid):
        result["pairs_1"] = await throughput(1)
        result["pairs_10"] = await throughput(10)
        result["idle"] = await idle_memory(pid)

    return result, all_cases


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    parser.add_argument("--serve", choices=["derp", "trivial"])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--idle", type=int, default=1000)
    parser.add_argument("--json", default="derp_relay.json")
    args = parser.parse_args(argv)
    if args.serve:
        _serve(args.serve)
        return 0

    from twisted.internet import defer, reactor

    results: dict = {"packet_bytes": PACKET, "window": WINDOW, "seconds": args.seconds,
                     "python": sys.version.split()[0]}

    async def run():
        for kind in ("derp", "trivial"):
            proc, port = _start_server(kind)
            try:
                res, cases = _run_clients(kind, port, 0, args.seconds, args.idle)
                await cases(proc.pid)
                results[kind] = res
            finally:
                proc.terminate()
                proc.wait()

    d = defer.Deferred.fromCoroutine(run())
    failure = []
    d.addErrback(failure.append)
    d.addBoth(lambda _: reactor.stop())
    reactor.run()
    if failure:
        failure[0].printTraceback()
        return 1

    print(f"{'relay':<10}{'pairs':>6}{'MB/s':>10}{'packets/s':>12}")
    for kind in ("derp", "trivial"):
        for n in (1, 10):
            r = results[kind][f"pairs_{n}"]
            print(f"{kind:<10}{n:>6}{r['MB_per_s']:>10.1f}{r['packets_per_s']:>12.0f}")
    for kind in ("derp", "trivial"):
        idle = results[kind]["idle"]
        print(f"{kind:<10} idle memory: {idle['bytes_per_idle_conn'] / 1024:.1f} KiB per connection "
              f"({idle['idle_connections']} connections)")
    with open(args.json, "w") as fp:
        json.dump(results, fp, indent=2)
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
