# -*- test-case-name: tests.bench.test_haswarm -*-
"""
Chaos run: instances killed and restarted while nodes write, then a consistency audit.

Run as root, bounded by ``--duration``::

    python -m headscale_tw.bench.chaos --duration 180 --interval 30 --nodes 50 [--json FILE]

Set-up as :class:`~headscale_tw.bench.failover.HABench`: three instances on one
PostgreSQL behind the shipped nginx HA site, two official clients, ``--nodes``
simulated nodes that each send new endpoints every ``--endpoints-every`` seconds
(about; an answer 200 acknowledges the write). During the run, every
``--interval`` seconds a random running instance is killed (``SIGKILL``) and
started again ``--down`` seconds later; between those steps the official
clients ping each other (one ping, 5 s bound) and the outcome is counted.

At the end the endpoint changes stop, every stream must be back (bounded wait),
the run waits ``--settle`` seconds, and then it checks:

1. **Acknowledged writes are present**: for each simulated node the database
   holds its last acknowledged endpoints (or a later write whose answer was
   lost with its instance).
2. **Peers agree with the database**: each simulated node's own map lists
   exactly the other nodes in the database, each with the database's endpoints;
   each official client lists every other node.
3. **No node is offline**: every node streams (the gauges count them all;
   ``not_streaming``), every peer in every simulated node's map is online
   (``offline_in_node_maps``, counted per viewer and peer), the official clients
   list every peer online, and each instance's ``nodes list`` says online.

Prints the figures and the failures (at most 10 of each kind) and exits 1 if a
check failed.
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import sys
import tempfile
import time
from typing import Any

from headscale_tw.bench.failover import OFFICIAL, HABench
from headscale_tw.testing.realclient._process import HarnessError

__all__ = ["audit", "main"]


def _bare(key: str) -> str:
    return key.split(":", 1)[-1]


def _database_nodes(bench: HABench) -> dict[str, dict[str, Any]]:
    """``{bare node key: {"name", "endpoints"}}`` straight from PostgreSQL."""
    import psycopg2

    from headscale_tw.testing.db import postgres_dsn

    dsn: dict[str, Any] = {**postgres_dsn(), "dbname": bench.database_name, "connect_timeout": 5}
    conn = psycopg2.connect(**dsn)
    try:
        with conn.cursor() as cursor:
            cursor.execute("SELECT node_key, given_name, endpoints FROM nodes")
            rows = cursor.fetchall()
    finally:
        conn.close()
    return {_bare(key): {"name": name, "endpoints": sorted(json.loads(endpoints or "[]"))}
            for key, name, endpoints in rows}


def audit(bench: HABench) -> dict[str, list[str]]:
    """The end-of-run checks; ``{check: [failures]}`` (empty lists when all hold)."""
    assert bench.cluster is not None and bench.events is not None
    failures: dict[str, list[str]] = {
        "acknowledged_writes": [], "peers_match_database": [], "not_streaming": [],
        "offline_in_node_maps": [], "offline_in_official_views": [], "offline_in_instance_lists": [],
    }
    db = _database_nodes(bench)
    states = bench.swarm_state()
    attempts: dict[int, list[list[str]]] = {}
    for event in bench.events.events:  # the writes after the last acknowledgement may have landed too
        if event["event"] == "endpoints":
            attempts[event["index"]] = [sorted(event["endpoints"])]
        elif event["event"] == "failed":
            attempts.setdefault(event["index"], []).append(sorted(event["endpoints"]))
    for state in states:
        me = _bare(state["node_key"])
        row = db.get(me)
        if row is None:
            failures["acknowledged_writes"].append(f"bench-{state['index']}: not in the database")
            continue
        allowed = attempts.get(state["index"]) or [sorted(state["acked"])]
        if row["endpoints"] not in allowed:
            failures["acknowledged_writes"].append(
                f"bench-{state['index']}: database {row['endpoints']}, acknowledged {allowed[0]}")
        peers = {_bare(k): v for k, v in state["peers"].items()}
        expected = {k for k in db if k != me}
        if set(peers) != expected:
            failures["peers_match_database"].append(
                f"bench-{state['index']}: {len(set(peers) - expected)} extra, {len(expected - set(peers))} missing")
        for key in sorted(set(peers) & expected):
            if peers[key]["endpoints"] != db[key]["endpoints"]:
                failures["peers_match_database"].append(
                    f"bench-{state['index']} sees {db[key]['name']} at {peers[key]['endpoints']}, "
                    f"database {db[key]['endpoints']}")
            if peers[key]["online"] is not True:
                failures["offline_in_node_maps"].append(f"bench-{state['index']} sees {db[key]['name']} "
                                                        f"online={peers[key]['online']}")
        if not state["streaming"]:
            failures["not_streaming"].append(f"bench-{state['index']}")
    names = {row["name"] for row in db.values()}
    for node in bench.clients:
        status = node.status_json()
        listed = {p["HostName"]: p for p in (status.get("Peer") or {}).values()}
        if set(listed) != names - {node.name}:
            failures["peers_match_database"].append(
                f"{node.name}: lists {len(listed)} peers, database has {len(names) - 1} others")
        off = sorted(name for name, p in listed.items() if not p.get("Online"))
        failures["offline_in_official_views"].extend(f"{node.name} sees {name} offline" for name in off)
    streams = bench.total_streams()
    if streams != bench.total:
        failures["not_streaming"].append(f"the instances hold {streams} streams, {bench.total} expected")
    for name in bench.cluster.running():
        rows: list[dict[str, Any]] = json.loads(bench.cluster.servers[name].cli("nodes", "list", "-o", "json").stdout) or []
        off = sorted(n["given_name"] for n in rows if not n.get("online"))
        failures["offline_in_instance_lists"].extend(f"instance {name} lists {node} offline" for node in off)
    return failures


def main(argv: list[str] | None = None) -> int:
    """Run the chaos for ``--duration`` seconds, then audit."""
    parser = argparse.ArgumentParser(prog="headscale_tw.bench.chaos")
    parser.add_argument("--duration", type=float, default=180.0)
    parser.add_argument("--interval", type=float, default=30.0)
    parser.add_argument("--down", type=float, default=5.0, help="seconds a killed instance stays down")
    parser.add_argument("--nodes", type=int, default=50)
    parser.add_argument("--endpoints-every", type=float, default=5.0)
    parser.add_argument("--settle", type=float, default=5.0)
    parser.add_argument("--seed", type=int, default=16)
    parser.add_argument("--json", default="")
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    workdir = tempfile.mkdtemp(prefix="hstw-chaos-")
    bench = HABench(args.nodes, workdir, endpoints_every=args.endpoints_every)
    kills: list[dict[str, Any]] = []
    viewers: dict[str, int] = {}
    pings = {"ok": 0, "failed": 0}
    try:
        bench.start()
        cluster = bench.cluster
        assert cluster is not None and bench.events is not None
        a, b = bench.clients
        ips = {a.name: a.ip(), b.name: b.ip()}
        started = time.monotonic()
        next_kill = started + min(args.interval, args.duration) / 2
        down: tuple[str, float] | None = None
        turn = 0
        while time.monotonic() < started + args.duration:
            now = time.monotonic()
            if down is not None and now >= down[1]:
                cluster.start(down[0])
                down = None
            elif down is None and now >= next_kill:
                victim = rng.choice(cluster.running())
                cluster.kill(victim)
                kills.append({"at_s": round(now - started, 1), "victim": victim})
                print(json.dumps(kills[-1]), flush=True)
                down = (victim, now + args.down)
                next_kill += args.interval
            else:
                src, dst = (a, b) if turn % 2 == 0 else (b, a)
                turn += 1
                proc = src.ping(ips[dst.name], count=1, timeout=5, check=False)
                pings["ok" if f"pong from {dst.name}" in proc.stdout else "failed"] += 1
        if down is not None:
            cluster.start(down[0])
        bench.signal_swarm(signal.SIGUSR2)
        bench.events.wait("quiet", 10)
        cluster.wait_streams(bench.total, 60)
        time.sleep(args.settle)
        bench.events.poll()
        writes = sum(1 for e in bench.events.events if e["event"] == "endpoints")
        unacked = sum(1 for e in bench.events.events if e["event"] == "failed")
        reconnects = sum(1 for e in bench.events.events if e["event"] == "back")
        failures = audit(bench)
        for line in failures["offline_in_node_maps"]:  # how many nodes see at least one peer offline
            viewer = line.split(" ", 1)[0]
            viewers[viewer] = viewers.get(viewer, 0) + 1
    except HarnessError as e:
        print(f"chaos run failed: {e}", file=sys.stderr)
        bench.close()
        return 2
    bench.close()
    out = {"duration_s": args.duration, "interval_s": args.interval, "down_s": args.down, "nodes": args.nodes,
           "official": len(OFFICIAL), "kills": kills, "acknowledged_writes": writes,
           "unacknowledged_writes": unacked, "sim_reconnects": reconnects, "pings": pings,
           "failures": {k: v[:10] for k, v in failures.items()},
           "failure_counts": {k: len(v) for k, v in failures.items()},
           "nodes_seeing_offline_peers": len(viewers), "logs": workdir}
    print(json.dumps(out, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return 1 if any(failures.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
