# -*- test-case-name: tests.bench.test_load -*-
"""
The control-plane benchmarks (not tests): ``python -m headscale_tw.bench.scenarios``.

For each size N and policy (``all`` = one allow-all rule, everyone sees
everyone; ``groups`` = nodes tagged into groups of 10 that see only their
group) against a freshly spawned server:

1. connect N nodes (the official client's login sequence, 64 in flight):
   registrations/s, time until every node holds its full map, server RSS/CPU;
2. with all N streaming, one change at a time, latency from the change until
   every affected stream received its delta (p50/p99/max) and bytes per change:
   an endpoint update (lite map request), a node joining, that node deleted
   (an ephemeral node logging out), a policy change (policy file + SIGHUP);
3. reconnect storm: every connection dropped at once, every node dials again:
   time until every node holds a full map again, ``/health`` latency meanwhile.

4. the machine's floor for the same N and frame sizes (:mod:`headscale_tw.bench.floor`):
   a bare Twisted fan-out through per-connection ChaCha20-Poly1305 and a bare
   Noise-handshake-plus-one-request login loop, measured with the same
   load-generator processes right after the scenarios; every latency and the
   registration rate is also given as a ratio to it (``ratios``).

Plus the in-process full-map build time for a node with N peers (Mapper
directly, cold = entries serialized, warm = cached). Prints a table and writes
``bench/results/control-<timestamp>.json`` with the machine description.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from typing import Any
from urllib.parse import urlsplit

from twisted.internet.defer import ensureDeferred

from headscale_tw.bench.floor import measure_floor, ratio
from headscale_tw.bench.load import Cluster, _sleep, connect_summary, group_tag, percentile
from headscale_tw.bench.server import SpawnedServer, raise_nofile
from headscale_tw.bench.simnode import TCPConnector, http_get

__all__ = ["policy_text", "run_size", "fullmap_times", "machine", "main", "HUB_TAG"]

#: Under the groups policy, the tag of the hub node every node sees (see :func:`policy_text`).
HUB_TAG = "tag:hub"


def policy_text(kind: str, nodes: int, group_size: int = 10, ports: str = "*") -> str | None:
    """The benchmark policies: ``none`` (no file), ``all`` (allow-all ACL), ``groups`` (tag groups)."""
    if kind == "none":
        return None
    if kind == "all":
        return json.dumps({"acls": [{"action": "accept", "src": ["*"], "dst": [f"*:{ports}"]}]})
    groups = range(nodes // group_size + 2)
    owners = {f"tag:g{g}": ["bench@"] for g in groups}
    owners[HUB_TAG] = ["bench@"]
    return json.dumps({
        "tagOwners": owners,
        "acls": [{"action": "accept", "src": [f"tag:g{g}"], "dst": [f"tag:g{g}:{ports}"]} for g in groups]
        # a hub (think DNS server or monitoring) reaches every node: every node has it as a peer
        + [{"action": "accept", "src": [HUB_TAG], "dst": [f"*:{ports}"]}],
    })


def machine() -> dict:
    """Where the numbers come from."""
    info: dict[str, object] = {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count()}
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu"] = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
        with open("/proc/meminfo") as f:
            info["mem_gib"] = round(int(f.readline().split()[1]) / 1024 / 1024, 1)
    except (OSError, StopIteration):
        pass
    import twisted

    info["twisted"] = twisted.__version__
    return info


def _latency(sent: float, result: dict, expected: int) -> dict:
    lat = [a - sent for a in result["arrivals"]]
    return {
        "streams": expected,
        "received": len(lat),
        "missing": result["missing"],
        "p50_ms": _ms(percentile(lat, 50)),
        "p99_ms": _ms(percentile(lat, 99)),
        "max_ms": _ms(max(lat) if lat else None),
        "bytes_per_stream": percentile(result["bytes"], 50),
        "bytes_total": sum(result["bytes"]),
    }


def rss_per_node(stats: dict, n: int) -> float | None:
    """The server's RSS (summed over its processes) per node, in KiB."""
    return round(stats["rss_mib"] * 1024 / n, 1) if n else None


def _ms(seconds):
    return None if seconds is None else round(seconds * 1000, 1)


#: The changes whose latency is compared with the fan-out floor of the same frame size.
CHANGES = ("endpoint_change", "node_join", "node_delete", "policy_change", "hub_join", "hub_endpoint", "hub_delete")


async def run_size(reactor, n: int, policy: str, *, procs: int = 1, group_size: int = 10,
                   concurrency: int = 64, timeout: float = 600.0, floor_rounds: int = 5, log=print,
                   connect_only: bool = False, profile: str | None = None, database: str = "sqlite",
                   workers: int = 1) -> dict:
    """
    Every scenario for one size and policy against a fresh server; returns the results dict.

    With ``floor_rounds`` > 0 the machine's floor follows, with the same
    load-generator processes, and ``ratios`` compares the two. With
    ``connect_only`` only the connect step runs (registrations/s) and the
    floor is its login floor alone. ``profile`` (a path) runs the server under
    cProfile and saves its stats there when it stops. ``database`` (``sqlite`` or
    ``postgres``) and ``workers`` only change the server's config; server CPU
    and RSS are summed over its worker processes.
    """
    server = SpawnedServer(policy=policy_text(policy, n + 1, group_size), profile=profile,
                           database=database, workers=workers).start()
    try:
        out = {"database": database, "workers": workers}
        out.update(await _run_size(reactor, server, n, policy, procs, group_size, concurrency, timeout,
                                   floor_rounds, log, connect_only))
        return out
    finally:
        server.stop()


def floor_ratios(run: dict, floor: dict) -> dict:
    """
    Each change's p99 over the floor's p99 for its frame size; the floor's logins/s over ours.

    The floor fans out to every connection, so only changes that reach every
    stream (all but the changed node's own) get a ratio; a change seen by one
    group of ten is not compared with a fan-out to all N.
    """
    out = {"registrations": ratio(run["connect"]["registrations_per_s"], floor["logins"]["per_s"], rate=True)}
    for change in CHANGES:
        if change in run and run[change]["streams"] >= floor["connections"] - 1:
            size = run[change]["bytes_per_stream"]
            bare = floor["fanout"].get(str(size), {}).get("p99_ms")
            out[change + "_p99"] = ratio(run[change]["p99_ms"], bare)
    return out


async def _run_size(reactor, server, n, policy, procs, group_size, concurrency, timeout, floor_rounds,
                    log, connect_only=False) -> dict:
    keys = server.make_keys()
    parts = urlsplit(server.url)
    cluster = Cluster(reactor, parts.hostname, parts.port, procs=procs, verify=min(n, 3))
    group = group_size if policy == "groups" else 0
    out: dict = {"nodes": n, "policy": policy, "procs": procs, "server_before": server.stats()}

    def affected(index: int, among, tag_as: int | None = None) -> list[int]:
        if not group:
            return [i for i in among if i != index]
        tag = group_tag(index if tag_as is None else tag_as, group)
        return [i for i in among if i != index and group_tag(i, group) == tag]

    try:
        log(f"[{n} {policy}] connecting")
        connected = await cluster.connect(range(n), keys["reusable"], concurrency, group)
        out["connect"] = connect_summary(connected, n)
        out["connect"]["quiet_after_s"] = round(await cluster.quiet(1.0, timeout=timeout), 2)
        out["server_after_connect"] = server.stats()
        out["rss_kib_per_node"] = rss_per_node(out["server_after_connect"], n)
        out["clients_after_connect"] = await cluster.stats()
        log(f"[{n} {policy}] connected: {out['connect']}")
        if connect_only:
            await _floor(reactor, cluster, out, n, policy, concurrency, timeout, floor_rounds, log)
            return out
        everyone = list(range(n))

        # An endpoint change (lite map request from node 0).
        await cluster.mark()
        sent = await cluster.lite(0, ["198.51.100.7:41641", "192.0.2.1:41641"])
        targets = affected(0, everyone)
        out["endpoint_change"] = _latency(sent, await cluster.wait(targets, timeout), len(targets))
        await cluster.quiet(0.5, timeout=timeout)

        # A node joins (ephemeral key, so its logout deletes it).
        joiner = n  # joins group 0 under the group policy
        targets = affected(joiner, everyone, tag_as=0)
        await cluster.mark()
        joined = await cluster.connect([joiner], keys["ephemeral"], 1, group, tag_as=0)
        start = joined["noise"][0] or joined["start"][0]  # from the moment the RegisterRequest is sent
        out["node_join"] = _latency(start, await cluster.wait(targets, timeout), len(targets))
        out["node_join"]["errors"] = joined["errors"]
        await cluster.quiet(0.5, timeout=timeout)

        # That node is deleted (ephemeral logout).
        await cluster.mark()
        sent = await cluster.logout(joiner)
        out["node_delete"] = _latency(sent, await cluster.wait(targets, timeout), len(targets))
        await cluster.quiet(0.5, timeout=timeout)

        # A policy change every node's filter depends on.
        if policy != "none":
            await cluster.mark()
            server.write_policy(policy_text(policy, n + 1, group_size, ports="22,443,1000-2000"))
            sent = time.monotonic()
            server.reload()
            out["policy_change"] = _latency(sent, await cluster.wait(everyone, timeout), n)
            await cluster.quiet(0.5, timeout=timeout)

        if policy == "groups":
            # Changes that reach every stream without a full mesh: a hub every node sees
            # joins, updates its endpoints and is deleted.
            hub = n + 1
            await cluster.mark()
            joined = await cluster.connect([hub], keys["ephemeral"], 1, tags=[HUB_TAG])
            start = joined["noise"][0] or joined["start"][0]
            out["hub_join"] = _latency(start, await cluster.wait(everyone, timeout), n)
            out["hub_join"]["errors"] = joined["errors"]
            out["hub_join"]["hub_full_map_bytes"] = joined["full_map_bytes"][0]
            await cluster.quiet(0.5, timeout=timeout)
            await cluster.mark()
            sent = await cluster.lite(hub, ["198.51.100.9:41641", "192.0.2.9:41641"])
            out["hub_endpoint"] = _latency(sent, await cluster.wait(everyone, timeout), n)
            await cluster.quiet(0.5, timeout=timeout)
            await cluster.mark()
            sent = await cluster.logout(hub)
            out["hub_delete"] = _latency(sent, await cluster.wait(everyone, timeout), n)
            await cluster.quiet(0.5, timeout=timeout)

        out["server_streaming"] = server.stats()

        # Reconnect storm.
        connector = TCPConnector(reactor, parts.hostname, parts.port)
        health: list[float] = []
        storm_done: list[bool] = []

        async def probe():
            while not storm_done:
                t = time.monotonic()
                try:
                    status, _ = await http_get(connector, f"{parts.hostname}:{parts.port}".encode(), b"/health")
                    if status == 200:
                        health.append(time.monotonic() - t)
                except Exception:
                    pass
                await _sleep(reactor, 0.1)

        cpu_before = server.stats()["cpu_s"]
        dropped = await cluster.drop()
        await _sleep(reactor, 0.2)
        prober = ensureDeferred(probe())
        back = await cluster.reconnect(concurrency=256)
        storm_done.append(True)
        await prober
        maps = [t for t in back["map"] if t is not None]
        out["reconnect_storm"] = {
            "nodes": n,
            "reconnected": len(maps),
            "errors": len(back["errors"]),
            "converge_s": round(max(maps) - dropped, 3) if maps else None,
            "health_probes": len(health),
            "health_p50_ms": _ms(percentile(health, 50)),
            "health_p99_ms": _ms(percentile(health, 99)),
            "health_max_ms": _ms(max(health) if health else None),
            "server_cpu_s": round(server.stats()["cpu_s"] - cpu_before, 2),
        }
        await cluster.quiet(1.0, timeout=timeout)
        out["verified"] = await cluster.verify()
        out["server_end"] = server.stats()
        out["rss_kib_per_node"] = rss_per_node(out["server_streaming"], n)
        out["clients_end"] = await cluster.stats()
        await _floor(reactor, cluster, out, n, policy, concurrency, timeout, floor_rounds, log)
        return out
    finally:
        await cluster.stop()


async def _floor(reactor, cluster, out, n, policy, concurrency, timeout, floor_rounds, log) -> None:
    """The machine's floor for the run in ``out`` (nothing when ``floor_rounds`` is 0), and the ratios."""
    if not floor_rounds:
        return
    await cluster.drop()
    sizes = [out[change]["bytes_per_stream"] for change in CHANGES
             if change in out and out[change]["streams"] >= n - 1]
    log(f"[{n} {policy}] floor for frames of {sorted(set(sizes))} bytes")
    out["floor"] = await measure_floor(reactor, cluster, n, sizes, rounds=floor_rounds,
                                       logins=min(max(n, 1000), 5000), concurrency=concurrency,
                                       timeout=timeout)
    out["ratios"] = floor_ratios(out, out["floor"])
    log(f"[{n} {policy}] ratios to the floor: {out['ratios']}")


def fullmap_times(sizes: list[int], repeat: int = 20) -> list[dict]:
    """In-process: build the full map of one node with N peers (Mapper directly), cold and warm."""
    from headscale_tw.bench.inprocess import fullmap_times as measure

    return measure(sizes, repeat)


def _ratio_table(rows: list[dict]) -> str:
    """The ratios to the machine's floor (``×``: times the floor; registrations: times slower)."""
    lines = ["| N | policy | db | workers | registrations × | endpoint p99 × | join p99 × | delete p99 × | policy p99 × "
             "| hub join/endpoint/delete p99 × | floor logins/s | floor fan-out p99 ms (bytes) |",
             "|---:|---|---|---:|---:|---:|---:|---:|---:|---|---:|---|"]
    for r in rows:
        if "ratios" not in r:
            continue
        q = r["ratios"]
        hub = "/".join(str(q.get(k + "_p99")) for k in ("hub_join", "hub_endpoint", "hub_delete")) \
            if "hub_join_p99" in q else "–"
        fanout = ", ".join(f"{v['p99_ms']} ({size})" for size, v in r["floor"]["fanout"].items())
        lines.append(f"| {r['nodes']} | {r['policy']} | {r.get('database', 'sqlite')} | {r.get('workers', 1)} "
                     f"| {q['registrations']} | {q.get('endpoint_change_p99')} "
                     f"| {q.get('node_join_p99')} | {q.get('node_delete_p99')} | {q.get('policy_change_p99', '–')} "
                     f"| {hub} | {r['floor']['logins']['per_s']} | {fanout} |")
    return "\n".join(lines)


def _table(rows: list[dict]) -> str:
    lines = ["| N | policy | db | workers | reg/s | all maps (s) | RSS MiB | RSS KiB/node | CPU s | endpoint p50/p99/max ms | join p99 | delete p99 "
             "| policy p99 | hub join/endpoint/delete p99 (all N) | storm converge s | /health p99 ms | full map B |",
             "|---:|---|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---|---:|---:|---:|"]
    for r in rows:
        c = r["connect"]
        if "endpoint_change" not in r:  # --connect-only
            cpu = r["server_after_connect"]["cpu_s"] - r["server_before"]["cpu_s"]
            lines.append(f"| {r['nodes']} | {r['policy']} | {r.get('database', 'sqlite')} | {r.get('workers', 1)} "
                         f"| {c['registrations_per_s']} | {c['all_maps_s']} "
                         f"| {r['server_after_connect']['rss_mib']} | {r.get('rss_kib_per_node')} "
                         f"| {round(cpu, 2)} (connect) | – | – | – | – | – "
                         f"| – | – | {c['full_map_bytes_median']} |")
            continue
        e = r["endpoint_change"]
        hub = "/".join(str(r[k]["p99_ms"]) for k in ("hub_join", "hub_endpoint", "hub_delete")) if "hub_join" in r else "–"
        lines.append("| {} | {} | {} | {} | {} | {} | {} | {} | {} | {}/{}/{} | {} | {} | {} | {} | {} | {} | {} |".format(
            r["nodes"], r["policy"], r.get("database", "sqlite"), r.get("workers", 1),
            c["registrations_per_s"], c["all_maps_s"],
            r["server_streaming"]["rss_mib"], r.get("rss_kib_per_node"), r["server_streaming"]["cpu_s"],
            e["p50_ms"], e["p99_ms"], e["max_ms"], r["node_join"]["p99_ms"], r["node_delete"]["p99_ms"],
            r.get("policy_change", {}).get("p99_ms"), hub, r["reconnect_storm"]["converge_s"],
            r["reconnect_storm"]["health_p99_ms"], c["full_map_bytes_median"]))
    return "\n".join(lines)


def _runs(text: str) -> list[tuple[int, str]]:
    """``--runs 1000:none,10000:groups`` -> [(1000, "none"), (10000, "groups")]."""
    out = []
    for part in text.split(","):
        size, _, policy = part.strip().partition(":")
        if policy not in ("none", "all", "groups"):
            raise argparse.ArgumentTypeError(f"{part!r}: expected SIZE:none|all|groups")
        out.append((int(size), policy))
    return out


def _workers(text: str) -> list[int]:
    """``--workers 1,2`` -> [1, 2]."""
    try:
        counts = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected worker counts like 1,2") from None
    if not counts or any(c < 1 for c in counts):
        raise argparse.ArgumentTypeError(f"{text!r}: expected worker counts of 1 or more, like 1,2")
    return counts


async def _main(reactor, options) -> None:
    results: dict[str, Any] = {"machine": machine(), "database": options.database, "workers": options.workers,
                               "started": time.strftime("%Y-%m-%dT%H:%M:%S"), "runs": [], "fullmap": []}
    os.makedirs(options.out, exist_ok=True)
    path = os.path.join(options.out, f"control-{time.strftime('%Y%m%d-%H%M%S')}.json")

    def save():
        with open(path, "w") as f:
            json.dump(results, f, indent=1)

    if options.fullmap:
        results["fullmap"] = fullmap_times(options.fullmap)
        save()
    runs = options.runs or [(n, policy) for n in options.sizes for policy in options.policies]
    for n, policy in runs:
        for workers in options.workers:
            started = time.monotonic()
            profile = options.profile_server and f"{options.profile_server}.{n}-{policy}-w{workers}"
            run = await run_size(reactor, n, policy, procs=options.procs, concurrency=options.concurrency,
                                 timeout=options.timeout, floor_rounds=options.floor_rounds,
                                 connect_only=options.connect_only, profile=profile,
                                 database=options.database, workers=workers)
            run["wall_s"] = round(time.monotonic() - started, 1)
            results["runs"].append(run)
            save()
    print(json.dumps(results["machine"]))
    if results["fullmap"]:
        print("| peers | cold ms | warm ms | bytes |\n|---:|---:|---:|---:|")
        for row in results["fullmap"]:
            print(f"| {row['peers']} | {row['cold_ms']} | {row['warm_ms']} | {row['bytes']} |")
    if results["runs"]:
        print(_ratio_table(results["runs"]))
        print(_table(results["runs"]))
    print(f"results: {path}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m headscale_tw.bench.scenarios")
    parser.add_argument("--sizes", type=lambda s: [int(x) for x in s.split(",") if x], default=[100, 1000])
    parser.add_argument("--policies", type=lambda s: s.split(","), default=["all", "groups"])
    parser.add_argument("--fullmap", type=lambda s: [int(x) for x in s.split(",") if x], default=[100, 1000])
    parser.add_argument("--runs", type=_runs, default=None,
                        help="SIZE:POLICY pairs, e.g. 1000:none,1000:groups,10000:groups (instead of sizes x policies)")
    parser.add_argument("--procs", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--timeout", type=float, default=600.0, help="bound on every wait")
    parser.add_argument("--floor-rounds", type=int, default=5,
                        help="fan-outs per frame size for the machine's floor (0: no floor, no ratios)")
    parser.add_argument("--connect-only", action="store_true",
                        help="run only the connect step (registrations/s) and the login floor")
    parser.add_argument("--profile-server", default=None, metavar="PATH",
                        help="run the server under cProfile; stats saved to PATH.<size>-<policy>")
    parser.add_argument("--database", choices=("sqlite", "postgres"), default="sqlite",
                        help="the server's database: SQLite in its temp dir, or a throwaway PostgreSQL "
                             "database over the unix socket (HEADSCALE_BENCH_PG_HOST, default /var/run/postgresql)")
    parser.add_argument("--workers", type=_workers, default=[1],
                        help="worker counts, e.g. 1,2: every run is done at each (above 1 needs --database postgres)")
    parser.add_argument("--out", default=os.path.join("bench", "results"))
    options = parser.parse_args(argv)
    if options.database != "postgres" and any(w > 1 for w in options.workers):
        parser.error("--workers above 1 needs --database postgres")
    raise_nofile()
    from twisted.internet.task import react

    react(lambda r: ensureDeferred(_main(r, options)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
