"""
What one simulated login costs the load generator (client CPU only).

::

    python -m headscale_tw.bench.client_cost --nodes 500 [--concurrency 64] [--profile out.prof]

Spawns a server as a child process (its CPU is not counted), builds the
nodes (key generation happens there, before timing starts), then runs the
whole login sequence of every node in this process and reports
``time.process_time()`` of this process divided by the number of logins.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import sys
import time

from twisted.internet.defer import ensureDeferred

from headscale_tw.bench.load import Worker
from headscale_tw.bench.server import SpawnedServer, raise_nofile

__all__ = ["main"]


async def _run(reactor, options) -> dict:
    from headscale_tw.bench.scenarios import policy_text

    server = SpawnedServer(policy=policy_text(options.policy, options.nodes, options.group_size))
    server.start()
    try:
        keys = server.make_keys()
        parts = server.url.split("//", 1)[1].rsplit(":", 1)
        worker = Worker(reactor, parts[0], int(parts[1]), verify=options.verify)
        indices = list(range(options.nodes))
        built = time.process_time()
        group_size = options.group_size if options.policy == "groups" else 0
        worker.build(indices, keys["reusable"], group_size)
        start_cpu = time.process_time()
        start_wall = time.monotonic()
        profile = cProfile.Profile() if options.profile else None
        if profile is not None:
            profile.enable()
        result = await worker.cmd_connect(indices, keys["reusable"], options.concurrency, group_size)
        if profile is not None:
            profile.disable()
            profile.dump_stats(options.profile)
        cpu = time.process_time() - start_cpu
        wall = time.monotonic() - start_wall
        for node in worker.nodes.values():
            node.drop()
        return {
            "nodes": options.nodes,
            "policy": options.policy,
            "errors": len(result["errors"]),
            "first_error": result["errors"][:1],
            "keygen_ms_per_node": round((start_cpu - built) * 1000 / options.nodes, 3),
            "client_cpu_ms_per_login": round(cpu * 1000 / options.nodes, 3),
            "wall_s": round(wall, 2),
            # Work behind the figure: every login also sends a delta to the streams already open.
            "map_frames_per_login": round(sum(len(n.frames) for n in worker.nodes.values()) / options.nodes, 1),
            "map_bytes_per_login": round(sum(n.stream_bytes for n in worker.nodes.values()) / options.nodes),
        }
    finally:
        server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m headscale_tw.bench.client_cost",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--policy", choices=["none", "all", "groups"], default="all",
                        help="all: every login sends a delta to every open stream; groups: only to its group")
    parser.add_argument("--group-size", type=int, default=10)
    parser.add_argument("--verify", type=int, default=0)
    parser.add_argument("--profile", help="write a cProfile of the login phase here")
    options = parser.parse_args(argv)
    raise_nofile()
    from twisted.internet.task import react

    def run(reactor):
        async def go():
            print(json.dumps(await _run(reactor, options)))
        return ensureDeferred(go())

    react(run)
    return 0


if __name__ == "__main__":
    sys.exit(main())
