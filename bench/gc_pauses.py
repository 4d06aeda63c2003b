"""Full-collection pauses during hub joins and policy changes, in-process (Harness): start-up freeze only, or a re-freeze after the streams opened.

Usage: PYTHONPATH=src:. python bench/gc_pauses.py N startonly|refreeze
"""

import gc
import json
import sys
import time

from twisted.internet.task import Clock

from bench._inprocess import GROUP, group_policy, harness, open_stream, register_grouped
from headscale_tw.gc_refreeze import GcRefreezer
from headscale_tw.service import tune_gc

N = int(sys.argv[1])
mode = sys.argv[2]

pauses: list = []
collection_started = [0.0]


def on_collection(phase, info):
    """Record the CPU time of each full (generation 2) collection."""
    if info["generation"] != 2:
        return
    if phase == "start":
        collection_started[0] = time.process_time()
    else:
        pauses.append(time.process_time() - collection_started[0])


h = harness(group_policy(N // GROUP + 1, hub=True))
tune_gc()  # start-up freeze: only the empty server exists
gc.callbacks.append(on_collection)
refreezer = GcRefreezer(Clock())


def tick(index):
    """Every 250 nodes, what GcRefreezer's timer would do (mode refreeze)."""
    if mode == "refreeze" and index % 250 == 0:
        if refreezer.due():
            pauses.append("refreeze")
            refreezer.check()


def discard(data):
    pass


nodes = register_grouped(h, N, tick)
for index, node in enumerate(nodes):
    tick(index)
    open_stream(h, node, discard)
cpu = time.process_time()
# hub joins and policy changes
for k in range(6):
    hub, _ = h.register(f"hub{k}", Hostinfo={"Hostname": f"hub{k}", "OS": "linux", "RequestTags": ["tag:hub"]})
    open_stream(h, hub, discard)
for k in range(8):
    h.run(h.set_policy(group_policy(N // GROUP + 1 + k, hub=True)))
cpu = time.process_time() - cpu
gc.callbacks.remove(on_collection)
# full_collections: CPU ms of each gen-2 collection in order, "refreeze" marking a re-freeze (whose own
# collection is the number after it); the 6 hub joins and 8 policy changes come last.
print(
    json.dumps(
        {
            "n": N,
            "mode": mode,
            "full_collections": [round(1000 * p) if isinstance(p, float) else p for p in pauses],
            "refreezes": refreezer.refreezes,
            "refreeze_cpu_ms": round(1000 * refreezer.cpu_seconds),
            "changes_cpu_ms": round(cpu * 1000),
        }
    )
)
