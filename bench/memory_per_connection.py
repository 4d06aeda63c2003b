"""Python memory per Noise + HTTP/2 streaming connection (tracemalloc), server side vs the in-process clients.

Usage: PYTHONPATH=src:. python bench/memory_per_connection.py N  (both sides in one process, loopback TCP)
"""

import collections
import gc
import sys
import tracemalloc

sys.path.insert(0, "bench")
from h2_send import _Hold, _Waiter
from twisted.internet import defer, reactor
from twisted.internet.protocol import ClientCreator
from twisted.web import resource
from twisted.web.server import Site

from headscale_tw.keys import MachinePrivate
from headscale_tw.noise.resource import Ts2021Resource
from headscale_tw.testing.noise_client import NoiseClient

N = int(sys.argv[1])
out = {}


def side(tb):
    for f in tb:
        if "noise_client.py" in f.filename:
            return "client"
    return "server"


@defer.inlineCallbacks
def run():
    key = MachinePrivate.generate()
    root = resource.Resource()
    site = Site(root)
    streams_open = _Waiter(N)
    hold = _Hold(streams_open.add)
    root.putChild(b"ts2021", Ts2021Resource(key, site, reactor))
    root.putChild(b"s", hold)
    port = reactor.listenTCP(0, site, interface="127.0.0.1")
    host = port.getHost()
    first = _Waiter(N)
    types0 = collections.Counter(type(o).__qualname__ for o in gc.get_objects())
    gc.collect()
    s0 = tracemalloc.take_snapshot()
    clients = []
    for i in range(N):
        c = yield ClientCreator(reactor, NoiseClient, key.public()).connectTCP(host.host, host.port)
        yield c.ready
        st = {"f": True}

        def on_data(data, st=st):
            if st["f"]:
                st["f"] = False
                first.add()

        c.request(b"GET", b"/s", on_data=on_data).addErrback(lambda _: None)
        clients.append(c)
    yield streams_open.done
    yield first.done
    for r in hold.requests:
        r.write(b"d" * 1500)
    d = defer.Deferred()
    reactor.callLater(0.5, d.callback, None)
    yield d
    gc.collect()
    s1 = tracemalloc.take_snapshot()
    tracemalloc.stop()
    types1 = collections.Counter(type(o).__qualname__ for o in gc.get_objects())
    stats = s1.compare_to(s0, "traceback")
    sides = collections.Counter()
    lines = collections.Counter()
    cnt = collections.Counter()
    for st_ in stats:
        s = side(st_.traceback)
        sides[s] += st_.size_diff
        if s == "server":
            # innermost frame outside stdlib-ish noise
            fr = next(
                (
                    f
                    for f in reversed(st_.traceback)
                    if (
                        "h2/" in f.filename
                        or "hpack" in f.filename
                        or "twisted/" in f.filename
                        or "headscale_tw" in f.filename
                        or "noise" in f.filename
                    )
                ),
                st_.traceback[0],
            )
            key_ = f"{fr.filename.split('site-packages/')[-1].split('wt-memory/')[-1]}:{fr.lineno}"
            lines[key_] += st_.size_diff
            cnt[key_] += st_.count_diff
    print(f"N={N} server {sides['server'] / N / 1024:.2f} KiB/conn, client {sides['client'] / N / 1024:.2f} KiB/conn")
    for k, v in lines.most_common(35):
        print(f"{v / N:8.0f} B {cnt[k] / N:6.2f} obj {k}")
    print("types (both sides):")
    for t, c in (types1 - types0).most_common(40):
        print(f"  {t}: {c / N:.2f}")
    for c in clients:
        c.close()
    yield port.stopListening()


tracemalloc.start(30)


def done(r):
    if hasattr(r, "printTraceback"):
        r.printTraceback()
    reactor.stop()


run().addBoth(done)
reactor.run()
