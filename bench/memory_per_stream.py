"""Control-plane memory per streaming node, in-process (Harness, tracemalloc before/after opening N streams).

Usage: PYTHONPATH=src:. python bench/memory_per_stream.py N
"""

import collections
import gc
import sys
import tracemalloc

from bench._inprocess import GROUP, group_policy, harness, open_stream, register_grouped

N = int(sys.argv[1]) if len(sys.argv) > 1 else 1000

h = harness(group_policy(N // GROUP + 1))
nodes = register_grouped(h, N)
for node in nodes:
    h.mapper.peer_entry(node.id)

sent = [0]


def count_sent(data):
    sent[0] += len(data)


gc.collect()
tracemalloc.start(6)
types_before = collections.Counter(type(o).__name__ for o in gc.get_objects())
before = tracemalloc.take_snapshot()
sessions = [open_stream(h, node, count_sent) for node in nodes]
gc.collect()
after = tracemalloc.take_snapshot()
types_after = collections.Counter(type(o).__name__ for o in gc.get_objects())
diff = after.compare_to(before, "lineno")
total = sum(d.size_diff for d in diff)
print(f"N={N} total {total / 1024 / N:.2f} KiB/stream, bytes sent {sent[0] / N:.0f}/stream")
for d in diff[:30]:
    print(f"{d.size_diff / N:8.0f} B/stream {d.count_diff / N:6.2f} obj  {d.traceback[0]}")
print("types:")
for name, count in (types_after - types_before).most_common(20):
    print(f"  {name}: {count / N:.2f}")
