# -*- test-case-name: tests.bench.test_haswarm -*-
"""
Simulated nodes that keep a map stream open through a load balancer and come back after losing it.

Run inside the benchmark's namespace by :mod:`headscale_tw.bench.failover`::

    python -m headscale_tw.bench.haswarm --nodes 100 --key KEY --ca CA.pem [--endpoints-every 5]

Each :class:`~headscale_tw.bench.simnode.SimNode` logs in through
``https://127.0.0.1:8443`` (TLS verified against ``--ca``), opens its stream,
and when the stream ends (its instance died, nginx closed the connection)
reconnects: a fresh Noise channel and a new stream, first at once and then
after 0.25 s doubling to 4 s with up to 25 % jitter (:func:`retry_delay`). With
``--endpoints-every S`` each node also sends a lite map with new endpoints every
about S seconds (a write; an answer 200 is an acknowledgement).

Every event is one JSON line on stdout, times from ``time.monotonic()`` (the
system-wide clock the driver also reads): ``up``, ``lost``, ``back``,
``endpoints`` (acknowledged), ``failed`` (a write not acknowledged), ``retry``.
With ``--gauges 9091,9092,9093`` it also reads each instance's
``headscale_nodes_connected`` on ``127.0.0.1:PORT/metrics`` every 50 ms and
emits ``gauges`` (``{port: streams}``, an instance that does not answer counts
0) whenever they change, so the driver sees the official clients' streams on
the same clock as the simulated nodes' events (:class:`GaugeWatch`).

Signals steer it (it runs under ``nsenter`` with output to a log file, so there
is no pipe): ``SIGUSR2`` stops the endpoint changes (``quiet``); ``SIGUSR1``
prints one ``state`` line per node (its node key, last acknowledged endpoints,
whether it streams, and the node keys and endpoints of the peers in its own
map), then ``state-done``; ``SIGTERM`` stops it.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
import time
from typing import Any

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.endpoints import HostnameEndpoint, connectProtocol, wrapClientTLS
from twisted.internet.protocol import Protocol
from twisted.internet.ssl import Certificate, optionsForClientTLS

from headscale_tw.bench.simnode import SimNode

__all__ = ["GaugeWatch", "SwarmNode", "TLSConnector", "main", "parse_connected", "retry_delay"]

_CONNECTED = re.compile(rb"^headscale_nodes_connected\s+([0-9.eE+]+)\s*$", re.M)


def parse_connected(body: bytes) -> int:
    """``headscale_nodes_connected`` from a metrics page (0 when absent)."""
    match = _CONNECTED.search(body)
    return int(float(match.group(1))) if match else 0


def retry_delay(attempt: int, rng: random.Random) -> float:
    """Seconds before reconnect attempt ``attempt`` (0-based): 0, then 0.25 s doubling to 4 s, +0-25 % jitter."""
    if attempt == 0:
        return 0.0
    base = min(4.0, 0.25 * 2 ** (attempt - 1))
    return base * (1 + 0.25 * rng.random())


class TLSConnector:
    """Dials ``host:port`` with TLS verified against one CA (the load balancer's)."""

    def __init__(self, reactor: Any, host: str, port: int, ca_pem: bytes, timeout: float = 10.0) -> None:
        self.reactor = reactor
        self.host = host
        self.port = port
        self.options = optionsForClientTLS(host, trustRoot=Certificate.loadPEM(ca_pem))
        self.timeout = timeout

    def connect(self, protocol: Protocol) -> Deferred:
        """Connect ``protocol`` over TLS."""
        endpoint = wrapClientTLS(self.options, HostnameEndpoint(self.reactor, self.host, self.port,
                                                                timeout=self.timeout))
        return connectProtocol(endpoint, protocol)


def _emit(event: str, **fields: Any) -> None:
    sys.stdout.write(json.dumps({"event": event, "t": time.monotonic(), **fields}) + "\n")
    sys.stdout.flush()


class SwarmNode:
    """One simulated node that stays connected: logs in, streams, and reconnects when the stream ends."""

    def __init__(self, reactor: Any, node: SimNode, rng: random.Random, endpoints_every: float = 0.0) -> None:
        self.reactor = reactor
        self.node = node
        self.rng = rng
        self.endpoints_every = endpoints_every
        self.streaming = False
        self.acked: list[str] = []
        self.writes = 0
        self.stopping = False
        self._timer: Any = None

    def _sleep(self, seconds: float) -> Deferred:
        d: Deferred = Deferred()
        self._timer = self.reactor.callLater(seconds, d.callback, None)
        return d

    def _endpoints(self) -> list[str]:
        self.writes += 1
        return [f"127.0.0.{1 + self.node.index % 250}:{20000 + (self.writes * 7 + self.node.index) % 40000}"]

    async def run(self) -> None:
        """Log in, then keep the stream: on loss, reconnect with :func:`retry_delay` between attempts."""
        node = self.node
        endpoints = self._endpoints()
        await node.up(endpoints)
        self.acked = endpoints
        self.streaming = True
        _emit("up", index=node.index)
        self._watch()
        if self.endpoints_every:
            self.reactor.callLater(self.rng.uniform(0, self.endpoints_every), self._change_endpoints)

    def _watch(self) -> None:
        done = self.node.stream_done
        assert done is not None  # _watch runs once the stream is open
        done.addBoth(lambda _: self.reactor.callLater(0, self._lost))

    def _lost(self) -> None:
        if self.stopping:
            return
        self.streaming = False
        _emit("lost", index=self.node.index)
        ensureDeferred(self._reconnect())

    async def _reconnect(self) -> None:
        attempt = 0
        while not self.stopping:
            await self._sleep(retry_delay(attempt, self.rng))
            attempt += 1
            try:
                await self.node.reconnect()
            except Exception as e:  # any failure: the next attempt, as tailscaled does
                _emit("retry", index=self.node.index, attempt=attempt, error=f"{type(e).__name__}: {e}"[:200])
                continue
            self.streaming = True
            _emit("back", index=self.node.index, attempts=attempt)
            self._watch()
            return

    def _change_endpoints(self) -> None:
        if self.stopping or not self.endpoints_every:
            return
        ensureDeferred(self._write()).addBoth(lambda _: self._next_change())

    def _next_change(self) -> None:
        if not self.stopping and self.endpoints_every:
            self.reactor.callLater(self.endpoints_every * self.rng.uniform(0.5, 1.5), self._change_endpoints)

    async def _write(self) -> None:
        if not self.streaming:
            return
        endpoints = self._endpoints()
        try:
            await self.node.lite(endpoints)
        except Exception as e:
            _emit("failed", index=self.node.index, endpoints=endpoints, error=f"{type(e).__name__}: {e}"[:200])
            return
        self.acked = endpoints
        _emit("endpoints", index=self.node.index, endpoints=endpoints)

    def state(self) -> dict[str, Any]:
        """This node's view: its key, acknowledged endpoints, and the peers in its map."""
        applier = self.node.applier
        peers = {}
        if applier is not None:
            peers = {p["Key"]: {"endpoints": sorted(p.get("Endpoints") or []), "online": p.get("Online")}
                     for p in applier.peers.values()}
        return {"index": self.node.index, "node_key": self.node.node_key, "streaming": self.streaming,
                "acked": self.acked, "peers": peers}

    def stop(self) -> None:
        """Stop reconnecting and writing."""
        self.stopping = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self.node.drop()


class GaugeWatch:
    """Polls the instances' stream gauges every ``interval`` seconds and emits ``gauges`` on a change."""

    def __init__(self, reactor: Any, ports: list[int], interval: float = 0.05) -> None:
        from twisted.web.client import Agent

        self.reactor = reactor
        self.ports = ports
        self.interval = interval
        self.agent = Agent(reactor, connectTimeout=0.5)
        self.last: dict[int, int] | None = None

    async def _read(self, port: int) -> int:
        from twisted.web.client import readBody

        try:
            d = self.agent.request(b"GET", f"http://127.0.0.1:{port}/metrics".encode())
            d.addTimeout(1.0, self.reactor)
            response = await d
            return parse_connected(await readBody(response))
        except Exception:
            return 0

    async def run(self) -> None:
        """Poll until the process ends."""
        while True:
            counts = {}
            for port in self.ports:
                counts[port] = await self._read(port)
            if counts != self.last:
                self.last = counts
                _emit("gauges", counts=counts)
            d: Deferred = Deferred()
            self.reactor.callLater(self.interval, d.callback, None)
            await d


def _dump(swarm: list[SwarmNode]) -> None:
    for member in swarm:
        _emit("state", **member.state())
    _emit("state-done")


def _quiet(swarm: list[SwarmNode]) -> None:
    for member in swarm:
        member.endpoints_every = 0.0
    _emit("quiet")


def main(argv: list[str] | None = None) -> int:
    """Start the swarm and run until ``SIGTERM``."""
    parser = argparse.ArgumentParser(prog="headscale_tw.bench.haswarm")
    parser.add_argument("--nodes", type=int, default=100)
    parser.add_argument("--key", required=True, help="a reusable pre-auth key")
    parser.add_argument("--ca", required=True, help="PEM file of the CA that signed the front's certificate")
    parser.add_argument("--front", default="127.0.0.1:8443")
    parser.add_argument("--endpoints-every", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--gauges", default="", help="metrics ports to watch, comma-separated")
    args = parser.parse_args(argv)

    import signal

    from twisted.internet import reactor
    from twisted.internet.interfaces import IReactorThreads

    host, port = args.front.rsplit(":", 1)
    with open(args.ca, "rb") as f:
        connector = TLSConnector(reactor, host, int(port), f.read())
    rng = random.Random(args.seed)
    swarm = [SwarmNode(reactor, SimNode(i, connector, args.front.encode(), args.key, verify=True), rng,
                       args.endpoints_every) for i in range(args.nodes)]

    async def start() -> None:
        if args.gauges:
            ensureDeferred(GaugeWatch(reactor, [int(p) for p in args.gauges.split(",")]).run())
        for member in swarm:  # one at a time: logins are not what is measured
            await member.run()
        _emit("ready", nodes=len(swarm))

    def failed(failure: Any) -> None:
        _emit("error", error=str(failure.value)[:500])
        reactor.stop()

    threads = IReactorThreads(reactor)  # a signal handler may run between reactor turns
    signal.signal(signal.SIGUSR1, lambda *_: threads.callFromThread(_dump, swarm))
    signal.signal(signal.SIGUSR2, lambda *_: threads.callFromThread(_quiet, swarm))
    reactor.callWhenRunning(lambda: ensureDeferred(start()).addErrback(failed))
    reactor.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
