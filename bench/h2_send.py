"""
HTTP/2-inside-Noise send loop micro-benchmark: Twisted's loop against the batching one.

Method
------
* One process, one reactor, loopback TCP: a ``Site`` with ``/ts2021`` and a
  streaming resource that holds every request open (like ``/machine/map``),
  and ``--nodes`` fake Noise clients (:class:`NoiseClient`), each with one
  long-poll stream.
* After every stream has received its headers and a first byte, the server
  writes ``--deltas`` chunks of ``--size`` bytes to every stream in one go
  (a burst of map updates) and the script measures wall and process CPU time
  until every client has received all of them.
* ``--loop twisted`` puts Twisted's ``H2Connection._sendPrioritisedData``
  back on ``BatchingH2Connection``; ``--loop batched`` (default) keeps ours.
  Both client and server run in this process, so the times include the
  clients' work, which is the same in both modes.

Run each mode in its own process, e.g.::

    python bench/h2_send.py --loop twisted --nodes 500 --deltas 1
    python bench/h2_send.py --loop batched --nodes 500 --deltas 1
"""

from __future__ import annotations

import argparse
import json
import time

from twisted.internet import defer, reactor
from twisted.internet.protocol import ClientCreator
from twisted.web import resource
from twisted.web._http2 import H2Connection
from twisted.web.server import NOT_DONE_YET, Site

from headscale_tw import _twisted_private
from headscale_tw.keys import MachinePrivate
from headscale_tw.noise.resource import Ts2021Resource
from headscale_tw.testing.noise_client import NoiseClient


class _Hold(resource.Resource):
    isLeaf = True

    def __init__(self, on_request):
        super().__init__()
        self.requests = []
        self._on_request = on_request

    def render_GET(self, request):
        self.requests.append(request)
        request.write(b"!")
        self._on_request()
        return NOT_DONE_YET


class _Waiter:
    """A Deferred that fires when ``count`` reaches ``target``."""

    def __init__(self, target):
        self.target = target
        self.count = 0
        self.done = defer.Deferred()

    def add(self, n=1):
        self.count += n
        if self.count >= self.target and not self.done.called:
            self.done.callback(None)


@defer.inlineCallbacks
def run(args):
    if args.loop == "twisted":
        _twisted_private.BatchingH2Connection._sendPrioritisedData = H2Connection._sendPrioritisedData
    key = MachinePrivate.generate()
    root = resource.Resource()
    site = Site(root)
    streams_open = _Waiter(args.nodes)
    hold = _Hold(streams_open.add)
    root.putChild(b"ts2021", Ts2021Resource(key, site, reactor))
    root.putChild(b"s", hold)
    port = reactor.listenTCP(0, site, interface="127.0.0.1")
    host = port.getHost()

    first_bytes = _Waiter(args.nodes)
    total = args.nodes * args.deltas * args.size
    received = _Waiter(total)
    clients = []
    for i in range(args.nodes):
        client = yield ClientCreator(reactor, NoiseClient, key.public()).connectTCP(host.host, host.port)
        yield client.ready
        state = {"first": True}

        def on_data(data, state=state):
            if state["first"]:
                state["first"] = False
                first_bytes.add()
                data = data[1:]
            if data:
                received.add(len(data))

        # Closing the clients at the end fails these; that is expected.
        client.request(b"GET", b"/s", on_data=on_data).addErrback(lambda _: None)
        clients.append(client)
    yield streams_open.done
    yield first_bytes.done

    delta = b"d" * args.size
    wall, cpu = time.perf_counter(), time.process_time()
    for request in hold.requests:
        for _ in range(args.deltas):
            request.write(delta)
    yield received.done
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    result = {
        "loop": args.loop,
        "nodes": args.nodes,
        "deltas": args.deltas,
        "size": args.size,
        "wall_s": round(wall, 4),
        "cpu_s": round(cpu, 4),
    }
    print(json.dumps(result))
    for client in clients:
        client.close()
    yield port.stopListening()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--loop", choices=("twisted", "batched"), default="batched")
    parser.add_argument("--nodes", type=int, default=500)
    parser.add_argument("--deltas", type=int, default=1, help="chunks written to every stream")
    parser.add_argument("--size", type=int, default=100, help="bytes per chunk")
    args = parser.parse_args()

    def done(result):
        if isinstance(result, Exception) or hasattr(result, "printTraceback"):
            result.printTraceback()
        reactor.stop()

    reactor.callWhenRunning(lambda: run(args).addBoth(done))
    reactor.run()


if __name__ == "__main__":
    main()
