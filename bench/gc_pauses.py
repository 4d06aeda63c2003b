"""Full-collection pauses during hub joins and policy changes, in-process (Harness): start-up freeze only, or a re-freeze after the streams opened.

Usage: PYTHONPATH=src:. python bench/gc_pauses.py N startonly|refreeze
"""

import gc
import json
import sys
import time
import unittest

from twisted.internet.task import Clock

from headscale_tw.control.poll import parse_map_request
from headscale_tw.gc_refreeze import GcRefreezer
from headscale_tw.service import tune_gc
from tests.bench.test_work_per_change import GROUP, group_policy
from tests.control._harness import Harness

N = int(sys.argv[1])
mode = sys.argv[2]


class T(unittest.TestCase):
    def runTest(self):
        pass

    def successResultOf(self, d):
        r = []
        d.addBoth(r.append)
        return r[0]


tc = T()
pauses = []
t0 = [0.0]


def cb(phase, info):
    if info["generation"] != 2:
        return
    if phase == "start":
        t0[0] = time.process_time()
    else:
        pauses.append(time.process_time() - t0[0])


h = Harness(tc, policy=group_policy(N // GROUP + 1, hub=True))
tune_gc()  # start-up freeze: only the empty server exists
gc.callbacks.append(cb)
refreezer = GcRefreezer(Clock())
def tick(i):
    """Every 250 nodes, what GcRefreezer's timer would do (mode refreeze)."""
    if mode == "refreeze" and i % 250 == 0:
        if refreezer.due():
            pauses.append("refreeze")
            refreezer.check()


nodes = []
for i in range(N):
    node, resp = h.register(
        f"n{i}", Hostinfo={"Hostname": f"n{i}", "OS": "linux", "RequestTags": [f"tag:g{i // GROUP}"]}
    )
    nodes.append(node)
    tick(i)


def w(d):
    pass


for i, node in enumerate(nodes):
    tick(i)
    request = parse_map_request(h.map_request(node, Stream=True))
    nd = h.poll.authenticate(node.machine_key, request)
    h.run(h.poll.apply(nd, request))
    h.notifier.open_stream(nd.id, w, lambda: None, encoding=request.compress)
cpu = time.process_time()
# hub joins and policy changes
for k in range(6):
    node, resp = h.register(f"hub{k}", Hostinfo={"Hostname": f"hub{k}", "OS": "linux", "RequestTags": ["tag:hub"]})
    request = parse_map_request(h.map_request(node, Stream=True))
    nd = h.poll.authenticate(node.machine_key, request)
    h.run(h.poll.apply(nd, request))
    h.notifier.open_stream(nd.id, w, lambda: None, encoding=request.compress)
for k in range(8):
    h.run(h.set_policy(group_policy(N // GROUP + 1 + k, hub=True)))
cpu = time.process_time() - cpu
gc.callbacks.remove(cb)
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
