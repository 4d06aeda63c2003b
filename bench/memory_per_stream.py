"""Control-plane memory per streaming node, in-process (Harness, tracemalloc before/after opening N streams).

Usage: PYTHONPATH=src:. python bench/memory_per_stream.py N
"""

import collections
import gc
import sys
import tracemalloc
import unittest

from headscale_tw.control.poll import parse_map_request
from tests.bench.test_work_per_change import GROUP, group_policy
from tests.control._harness import Harness

N = int(sys.argv[1]) if len(sys.argv) > 1 else 1000


class T(unittest.TestCase):
    def runTest(self):
        pass

    def successResultOf(self, d):
        r = []
        d.addBoth(r.append)
        return r[0]


tc = T()
h = Harness(tc, policy=group_policy(N // GROUP + 1))
nodes = []
for i in range(N):
    node, resp = h.register(
        f"n{i}", Hostinfo={"Hostname": f"n{i}", "OS": "linux", "RequestTags": [f"tag:g{i // GROUP}"]}
    )
    nodes.append(node)
for n in nodes:
    h.mapper.peer_entry(n.id)

sent = [0]


def write(data):
    sent[0] += len(data)


def finish():
    pass


gc.collect()
tracemalloc.start(6)
types0 = collections.Counter(type(o).__name__ for o in gc.get_objects())
s0 = tracemalloc.take_snapshot()
sessions = []
for node in nodes:
    request = parse_map_request(h.map_request(node, Stream=True))
    nd = h.poll.authenticate(node.machine_key, request)
    h.run(h.poll.apply(nd, request))
    sessions.append(h.notifier.open_stream(nd.id, write, finish, encoding=request.compress))
gc.collect()
s1 = tracemalloc.take_snapshot()
types1 = collections.Counter(type(o).__name__ for o in gc.get_objects())
diff = s1.compare_to(s0, "lineno")
total = sum(d.size_diff for d in diff)
print(f"N={N} total {total / 1024 / N:.2f} KiB/stream, bytes sent {sent[0] / N:.0f}/stream")
for d in diff[:30]:
    print(f"{d.size_diff / N:8.0f} B/stream {d.count_diff / N:6.2f} obj  {d.traceback[0]}")
print("types:")
for t, c in (types1 - types0).most_common(20):
    print(f"  {t}: {c / N:.2f}")
