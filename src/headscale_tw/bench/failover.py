# -*- test-case-name: tests.bench.test_haswarm -*-
"""
Failover behind nginx, measured: ``kill -9`` of a streaming instance, time until every node streams again.

Run as root (it builds a private namespace, like the real-client tests)::

    python -m headscale_tw.bench.failover --kills 10 --nodes 100 [--json bench/results/failover.json]

Set-up (:class:`HABench`): :class:`~headscale_tw.testing.realclient.ha.HACluster`
(three instances on one fresh PostgreSQL database, the shipped nginx HA site in
front), two official clients (tailscale 1.96.4, DERP only) and ``--nodes``
simulated nodes (:mod:`headscale_tw.bench.haswarm`, one process in the
namespace), all logged in through nginx.

Each round: wait until all ``nodes + 2`` map streams are open; kill the next
instance in turn that holds streams (``SIGKILL`` by PID) and note the time; poll the
survivors' ``headscale_nodes_connected`` gauges every 50 ms and read the swarm's
events. A simulated node's recovery is its ``back`` event minus the kill; an
official client's is when the survivors' gauges (minus the swarm's streaming
nodes) count it again; a round's total is when every stream is back. Then the
victim is started again and the next round begins.

Prints and writes p50/p99 of the per-node recoveries (simulated and official
separately) and of the round totals.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

from headscale_tw.bench.load import percentile
from headscale_tw.testing.realclient._process import HarnessError, ManagedProcess
from headscale_tw.testing.realclient.fetch import LATEST, ensure_client
from headscale_tw.testing.realclient.ha import FRONT, INSTANCES, HACluster, postgres_socket_section
from headscale_tw.testing.realclient.namespace import Namespace, require_tools
from headscale_tw.testing.realclient.node import TailscaleNode
from headscale_tw.testing.realclient.server import source_pythonpath
from headscale_tw.testing.realclient.tlsca import make_test_ca

__all__ = ["HABench", "SwarmEvents", "main", "summary"]

OFFICIAL = ("xray", "yankee")


class _Cleanups:
    """What ``create_postgres_database`` needs of a test case, for a script."""

    def __init__(self) -> None:
        self._calls: list[Callable[[], object]] = []

    def addCleanup(self, call: Callable[[], object]) -> None:  # noqa: N802 (the TestCase name)
        self._calls.append(call)

    def fail(self, message: str) -> None:
        raise HarnessError(message)

    def run(self) -> None:
        while self._calls:
            self._calls.pop()()


class SwarmEvents:
    """The swarm's JSON lines, read incrementally from its log."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._offset = 0
        self._partial = b""
        self.events: list[dict[str, Any]] = []
        self.streaming: set[int] = set()
        self.gauges: dict[str, int] = {}

    def poll(self) -> list[dict[str, Any]]:
        """New events since the last call (``streaming`` kept up to date)."""
        try:
            with open(self.path, "rb") as f:
                f.seek(self._offset)
                data = f.read()
        except FileNotFoundError:
            return []
        self._offset += len(data)
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        new = []
        for line in lines:
            try:
                event = json.loads(line)
            except ValueError:
                continue  # a Twisted log line or a traceback
            if not isinstance(event, dict) or "event" not in event:
                continue
            new.append(event)
            if event["event"] in ("up", "back"):
                self.streaming.add(event["index"])
            elif event["event"] == "lost":
                self.streaming.discard(event["index"])
            elif event["event"] == "gauges":
                self.gauges = event["counts"]
        self.events.extend(new)
        return new

    def wait(self, kind: str, timeout: float) -> dict[str, Any]:
        """The first new event of ``kind`` (an ``error`` event raises)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for event in self.poll():
                if event["event"] == "error":
                    raise HarnessError(f"the swarm failed: {event['error']}")
                if event["event"] == kind:
                    return event
            time.sleep(0.05)
        raise HarnessError(f"no {kind!r} from the swarm within {timeout:g}s (log {self.path})")


class HABench:
    """The cluster, two official clients and the swarm, in one namespace; :meth:`close` undoes it all."""

    def __init__(self, nodes: int, workdir: str, endpoints_every: float = 0.0) -> None:
        self.nodes = nodes
        self.workdir = workdir
        self.endpoints_every = endpoints_every
        self.cleanups = _Cleanups()
        self.namespace: Namespace | None = None
        self.cluster: HACluster | None = None
        self.clients: list[TailscaleNode] = []
        self.swarm: ManagedProcess | None = None
        self.events: SwarmEvents | None = None
        self.database_name = ""

    @property
    def total(self) -> int:
        """Map streams when everyone is connected."""
        return self.nodes + len(OFFICIAL)

    def start(self) -> None:
        """Build everything; the swarm is up when this returns."""
        from headscale_tw.testing.db import create_postgres_database

        require_tools()
        binaries = ensure_client(LATEST)
        db = create_postgres_database(self.cleanups)
        self.database_name = db.postgres.name
        logs = os.path.join(self.workdir, "logs")
        os.makedirs(logs, exist_ok=True)
        namespace = self.namespace = Namespace(log_dir=logs)
        namespace.start()
        self.cleanups.addCleanup(namespace.close)
        ca = make_test_ca(os.path.join(self.workdir, "tls"))
        cluster = self.cluster = HACluster(namespace, ca, postgres_socket_section(db.postgres.name, db.postgres.user))
        self.cleanups.addCleanup(cluster.close)
        cluster.start_all()
        one = cluster.servers["one"]
        one.cli("users", "create", "bench")
        key = json.loads(one.cli("preauthkeys", "create", "--user", "bench", "--reusable", "--expiration", "24h",
                                 "-o", "json").stdout)["key"]
        for name in OFFICIAL:
            node = TailscaleNode(namespace, binaries, name, ssl_cert_file=ca.ca_pem, always_use_derp=True).start()
            self.clients.append(node)
            node.up(FRONT, authkey=key, hostname=name, timeout=45)
        argv = [sys.executable, "-m", "headscale_tw.bench.haswarm", "--nodes", str(self.nodes), "--key", key,
                "--ca", ca.ca_pem, "--endpoints-every", str(self.endpoints_every),
                "--gauges", ",".join(str(spec.metrics) for spec in INSTANCES)]
        assert namespace.log_dir is not None  # the namespace is started
        log = os.path.join(namespace.log_dir, "swarm.log")
        env = namespace.env({"PYTHONPATH": os.pathsep.join(source_pythonpath()), "PYTHONUNBUFFERED": "1"})
        self.swarm = namespace.spawn("swarm", argv, env=env, log_path=log)
        self.cleanups.addCleanup(self.swarm.stop)
        self.events = SwarmEvents(log)
        self.events.wait("ready", 60 + self.nodes)
        cluster.wait_streams(self.total, 60)

    def signal_swarm(self, sig: int) -> None:
        """Send ``sig`` to the swarm's PID."""
        if self.swarm is None:
            raise HarnessError("the swarm is not running")
        os.kill(self.swarm.pid, sig)

    def swarm_state(self, timeout: float = 30.0) -> list[dict[str, Any]]:
        """Every simulated node's view (``SIGUSR1``)."""
        assert self.events is not None
        self.events.poll()
        self.signal_swarm(signal.SIGUSR1)
        self.events.wait("state-done", timeout)
        states: dict[int, dict[str, Any]] = {}
        for event in self.events.events:
            if event["event"] == "state":
                states[event["index"]] = event
        return [states[i] for i in sorted(states)]

    def total_streams(self) -> int:
        """Map streams the running instances hold now."""
        assert self.cluster is not None
        return sum(self.cluster.streaming().values())

    def close(self) -> None:
        """Stop everything this run started, by PID, and drop the database."""
        for node in self.clients:
            node.stop()
        self.cleanups.run()


def _official_timeline(events: list[dict[str, Any]], since: float) -> list[tuple[float, dict[str, int], int]]:
    """``(time, gauges, official streams)`` for each ``gauges`` event after ``since``; official streams are
    the gauges' sum minus the swarm's streaming nodes, replayed in the swarm's own order (one process,
    one clock)."""
    streaming: set[int] = set()
    timeline = []
    for e in events:
        kind = e["event"]
        if kind in ("up", "back"):
            streaming.add(e["index"])
        elif kind == "lost":
            streaming.discard(e["index"])
        elif kind == "gauges" and e["t"] >= since:
            timeline.append((e["t"], e["counts"], sum(e["counts"].values()) - len(streaming)))
    return timeline


def _round(bench: HABench, turn: int, timeout: float) -> dict[str, Any]:
    cluster, events = bench.cluster, bench.events
    assert cluster is not None and events is not None
    cluster.wait_streams(bench.total, timeout)
    events.poll()
    counts = cluster.streaming()
    # The instances in turn (skipping one without streams), so the official clients' instance is hit too.
    order = [spec.name for spec in INSTANCES]
    victim = next(name for name in order[turn % 3:] + order[:turn % 3] if counts.get(name))
    held = counts[victim]
    killed_at = time.monotonic()
    cluster.kill(victim)
    all_back_at = None
    deadline = killed_at + timeout
    while time.monotonic() < deadline:
        events.poll()
        if (sum(events.gauges.values()) == bench.total and len(events.streaming) == bench.nodes
                and events.events[-1]["t"] - killed_at > 0.3):
            all_back_at = events.events[-1]["t"]
            break
        time.sleep(0.05)
    lost = {e["index"]: e["t"] for e in events.events if e["event"] == "lost" and e["t"] >= killed_at - 0.01}
    back: dict[int, float] = {}
    for e in events.events:
        if e["event"] == "back" and e["t"] >= killed_at and e["index"] in lost and e["index"] not in back:
            back[e["index"]] = e["t"]
    # Official clients on the victim: its streams minus the simulated nodes that lost theirs. Their
    # recovery is the first gauge reading that no longer counts the victim and counts them again.
    official_lost = max(0, held - len(lost))
    port = str(cluster.instance(victim).metrics)
    official_back = None
    if official_lost:
        for t, gauges, official in _official_timeline(events.events, killed_at):
            if gauges.get(port, 0) == 0 and official >= len(OFFICIAL):
                official_back = t
                break
    result = {
        "victim": victim, "streams_on_victim": held,
        "sim_lost": len(lost), "sim_back": len(back),
        "sim_recovery_s": sorted(round(t - killed_at, 3) for t in back.values()),
        "official_lost": official_lost,
        "official_recovery_s": round(official_back - killed_at, 3) if official_back else None,
        "all_back_s": round(all_back_at - killed_at, 3) if all_back_at else None,
    }
    cluster.start(victim)
    return result


def summary(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """p50/p99/max of the simulated nodes' recoveries, the official clients' and the round totals."""
    sim = [t for r in rounds for t in r["sim_recovery_s"]]
    official = [r["official_recovery_s"] for r in rounds if r["official_recovery_s"] is not None]
    totals = [r["all_back_s"] for r in rounds if r["all_back_s"] is not None]

    def stats(values: list[float]) -> dict[str, Any]:
        return {"n": len(values), "p50": percentile(values, 50), "p99": percentile(values, 99),
                "max": max(values) if values else None}

    return {"rounds": len(rounds), "unrecovered_rounds": sum(1 for r in rounds if r["all_back_s"] is None),
            "sim_node": stats(sim), "official_client_rounds": stats(official), "round_total": stats(totals)}


def main(argv: list[str] | None = None) -> int:
    """Run ``--kills`` rounds and print the summary."""
    parser = argparse.ArgumentParser(prog="headscale_tw.bench.failover")
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--nodes", type=int, default=100)
    parser.add_argument("--timeout", type=float, default=60.0, help="bound on one round's recovery")
    parser.add_argument("--json", default="", help="write the rounds and summary here")
    args = parser.parse_args(argv)
    workdir = tempfile.mkdtemp(prefix="hstw-failover-")
    bench = HABench(args.nodes, workdir)
    try:
        bench.start()
        rounds = []
        for i in range(args.kills):
            result = _round(bench, i, args.timeout)
            rounds.append(result)
            print(json.dumps({"round": i + 1, **{k: v for k, v in result.items() if k != "sim_recovery_s"}}),
                  flush=True)
    finally:
        bench.close()
    out = {"nodes": args.nodes, "official": len(OFFICIAL), "summary": summary(rounds), "rounds": rounds,
           "logs": workdir}
    print(json.dumps(out["summary"], indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0 if out["summary"]["unrecovered_rounds"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
