"""
Server CPU of one policy change to every stream, in-process (issue #15).

The control plane alone (the test ``Harness``: threadless SQLite, a Clock,
fake streams) with N streaming nodes in tag groups of 10 plus a hub reaching
every node (the benchmark's groups policy, ``bench.scenarios.policy_text``);
the policy is then set with other ports, the change ``scenarios`` makes, so
every node's filter changes and no peer list does. Prints ``time.process_time``
of the change (store, check, apply, push to every stream), the collector's share,
and the work counters. Run from a worktree root::

    PYTHONPATH=$PWD/src:$PWD python bench/policy_change.py 2000 [--profile]
"""

from __future__ import annotations

import cProfile
import gc
import json
import pstats
import sys
import time

from twisted.trial import unittest

from headscale_tw.bench.scenarios import HUB_TAG, policy_text
from tests.control._harness import Harness


class _NoApplier:
    def feed(self, data: bytes) -> None:
        pass


class _Case(unittest.TestCase):
    def runTest(self):  # pragma: no cover - only a holder for the harness
        pass


def main(argv: list[str]) -> None:
    n = int(argv[0])
    profile = "--profile" in argv
    case = _Case()
    text = policy_text("groups", n + 1).replace("bench@", "alice@")
    h = Harness(case, policy=text)
    nodes = []
    for i in range(n):
        tag = f"tag:g{i // 10}"
        node, response = h.register(f"n{i}", Hostinfo={"Hostname": f"n{i}", "OS": "linux", "RequestTags": [tag]})
        assert "Error" not in response, response
        nodes.append(node)
    hub, response = h.register("hub", Hostinfo={"Hostname": "hub", "OS": "linux", "RequestTags": [HUB_TAG]})
    streams = [h.stream(node) for node in nodes]
    for s in streams:  # count writes only: decoding them is the test client's work, not the server's
        s.applier = _NoApplier()
    counts = [len(s.writes) for s in streams]
    new_text = policy_text("groups", n + 1, ports="22,443,1000-2000").replace("bench@", "alice@")
    views = h.policy.views
    views.views_built = 0
    compilation = h.policy.compilation
    compilations = getattr(compilation, "compilations", None)  # None: a tree from before the counter
    gc_time = [0.0]
    started: list[float] = []

    def on_gc(phase, info):
        if phase == "start":
            started.append(time.process_time())
        elif started:
            gc_time[0] += time.process_time() - started.pop()

    gc.callbacks.append(on_gc)
    profiler = cProfile.Profile() if profile else None
    t0 = time.process_time()
    if profiler:
        profiler.enable()
    h.run(h.set_policy(new_text))
    if profiler:
        profiler.disable()
    cpu = time.process_time() - t0
    gc.callbacks.remove(on_gc)
    written = sum(1 for s, c in zip(streams, counts) if len(s.writes) > c)
    print(json.dumps({
        "streams": n, "cpu_ms": round(cpu * 1000, 1), "gc_ms": round(gc_time[0] * 1000, 1),
        "streams_written": written, "views_built": views.views_built,
        "compilations": None if compilations is None else compilation.compilations - compilations,
    }))
    if profiler:
        pstats.Stats(profiler).sort_stats("tottime").print_stats(30)
    del hub


if __name__ == "__main__":
    main(sys.argv[1:])
