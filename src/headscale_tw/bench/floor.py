# -*- test-case-name: tests.bench.test_floor -*-
"""
The machine's floor: the same work as the control benchmarks, with nothing of ours on top.

Figures from :mod:`headscale_tw.bench.scenarios` differ about twofold between
two virtual machines of the same kind, so each run also measures what this
machine does at best for the same work, and reports our figures as a ratio to
it (see docs/benchmarks.md):

- **fan-out floor**: one bare Twisted server process holding the same N TCP
  connections, each behind its own Noise IK handshake and ChaCha20-Poly1305
  transport cipher (our sans-IO codec), writes one frame of the measured
  delta's size to all of them in one reactor turn; the same load-generator
  processes read, decrypt and time it. No HTTP/2, no control plane, no
  database. Latency is from the moment the orchestrator sends the command
  until each connection holds the whole frame, like a change's latency.
- **login floor**: the Noise handshake plus one request record and one reply
  record per connection, ``concurrency`` in flight, against the same bare
  server: what a login costs when nothing but the transport runs.

:class:`FloorServer` is the server side (run in a child process by
:class:`FloorServerProcess`, commands over JSON lines like the load
generator's workers); :class:`FloorStreams` is the client side, hosted by
each :class:`~headscale_tw.bench.load.Worker` under ``floor_*`` commands.
"""

from __future__ import annotations

import struct
import sys
import time
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.interfaces import IListeningPort, ITCPTransport
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.internet.task import deferLater
from twisted.python.failure import Failure

from headscale_tw.noise._codec import (
    FrameError,
    NoiseInitiator,
    NoiseResponder,
    RecordDecoder,
    RecordEncoder,
    generate_private,
    x25519_public,
)

__all__ = [
    "FloorServer",
    "FloorServerProcess",
    "FloorStreams",
    "INITIATION_LEN",
    "measure_floor",
    "ratio",
]

#: The Noise IK initiation is always this long (5-byte header + 96-byte payload).
INITIATION_LEN = 101
#: Capability version the floor clients announce (any value: the floor checks none).
_VERSION = 130
_LE32 = struct.Struct("<I")


class _FloorConnection(Protocol):
    """Server side of one floor connection: handshake, then answer each request record."""

    transport: ITCPTransport  # makeConnection sets it before any other callback

    def __init__(self, server: FloorServer) -> None:
        self.server = server
        self._initiation = b""
        self._decoder: RecordDecoder | None = None
        self.encoder: RecordEncoder | None = None

    def dataReceived(self, data: bytes) -> None:
        if self._decoder is None:
            self._initiation += data
            if len(self._initiation) < INITIATION_LEN:
                return
            initiation, rest = self._initiation[:INITIATION_LEN], self._initiation[INITIATION_LEN:]
            self._initiation = b""
            result = self.server.responder.respond(initiation)
            self._decoder = RecordDecoder(result.ciphers.receive)
            self.encoder = RecordEncoder(result.ciphers.send)
            self.transport.write(result.response)
            self.server.established.add(self)
            if not rest:
                return
            data = rest
        assert self.encoder is not None  # set with the decoder
        try:
            requests = self._decoder.feed(data)
        except FrameError:
            self.transport.abortConnection()
            return
        for _ in requests:
            self.transport.write(self.encoder.encode(self.server.reply))

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.server.established.discard(self)


class FloorServer:
    """
    The bare server: accepts Noise connections, replies to requests, fans frames out.

    Its ``cmd_*`` methods are what :class:`FloorServerProcess` calls in the child.
    """

    def __init__(self, reactor, reply_bytes: int = 2048) -> None:
        self.reactor = reactor
        private = generate_private()
        self.public_key = x25519_public(private)
        self.responder = NoiseResponder(private)
        self.reply = b"r" * reply_bytes
        self.established: set[_FloorConnection] = set()
        self.port: IListeningPort | None = None

    async def call(self, cmd: str, **args):
        return await getattr(self, "cmd_" + cmd)(**args)

    async def cmd_listen(self) -> dict:
        """Listen on a free loopback port; the port and the server's public key (hex)."""
        factory = Factory.forProtocol(lambda: _FloorConnection(self))
        self.port = port = await TCP4ServerEndpoint(self.reactor, 0, backlog=4096, interface="127.0.0.1").listen(factory)
        return {"port": port.getHost().port, "public_key": self.public_key.hex()}

    async def cmd_fanout(self, nbytes: int) -> dict:
        """Write one ``nbytes`` frame (LE32 length + payload) to every established connection, in this turn."""
        frame = _LE32.pack(nbytes) + b"d" * nbytes
        started = time.monotonic()
        for connection in self.established:
            # Established means handshaken: the encoder is set.
            assert connection.encoder is not None
            connection.transport.write(connection.encoder.encode(frame))
        return {"connections": len(self.established), "write_s": time.monotonic() - started}

    async def cmd_stop(self) -> None:
        for connection in list(self.established):
            connection.transport.abortConnection()
        self.reactor.callLater(0.1, self.reactor.stop)


class FloorServerProcess:
    """A :class:`FloorServer` in a child process (``python -m headscale_tw.bench.floor``)."""

    def __init__(self, reactor) -> None:
        from headscale_tw.bench.load import RemoteWorker

        self._child = RemoteWorker(reactor, argv=[sys.executable, "-m", "headscale_tw.bench.floor"])

    def call(self, cmd: str, **args) -> Deferred:
        return self._child.call(cmd, **args)


class _FloorStream(Protocol):
    """Client side of one floor connection: handshake, then frames (or one reply) with arrival times."""

    transport: ITCPTransport  # makeConnection sets it before any other callback

    def __init__(self, server_public: bytes) -> None:
        self._initiator = NoiseInitiator(generate_private(), server_public, _VERSION)
        self._reply = b""
        self._decoder: RecordDecoder | None = None
        self._encoder: RecordEncoder | None = None
        self._pending = b""
        self.ready: Deferred[None] = Deferred()
        self.replied: Deferred[None] | None = None
        #: (arrival time, payload bytes) of every whole frame.
        self.frames: list[tuple[float, int]] = []

    def connectionMade(self) -> None:
        self.transport.write(self._initiator.initiation())

    def request(self, payload: bytes) -> Deferred[None]:
        """Send one request record; fires when the reply record arrived."""
        if self._encoder is None:
            raise RuntimeError("request before the handshake finished (wait for ready)")
        self.replied = Deferred()
        self.transport.write(self._encoder.encode(payload))
        return self.replied

    def dataReceived(self, data: bytes) -> None:
        if self._decoder is None:
            self._reply += data
            length = NoiseInitiator.reply_length(self._reply)
            if length is None or len(self._reply) < length:
                return
            ciphers = self._initiator.finish(self._reply[:length])
            data, self._reply = self._reply[length:], b""
            self._decoder = RecordDecoder(ciphers.receive)
            self._encoder = RecordEncoder(ciphers.send)
            self.ready.callback(None)
            if not data:
                return
        chunks = self._decoder.feed(data)
        if self.replied is not None and chunks:
            replied, self.replied = self.replied, None
            replied.callback(None)
            return
        for chunk in chunks:
            self._pending += chunk
            while len(self._pending) >= 4:
                (size,) = _LE32.unpack_from(self._pending)
                if len(self._pending) < 4 + size:
                    break
                self._pending = self._pending[4 + size:]
                self.frames.append((time.monotonic(), size))

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        for waiting in (self.ready, self.replied):
            if waiting is not None and not waiting.called:
                waiting.errback(reason)


class FloorStreams:
    """The floor's client connections of one load-generator process (``floor_*`` worker commands)."""

    def __init__(self, reactor, connector_for, bounded) -> None:
        self.reactor = reactor
        #: ``connector_for(port)``: something with ``connect(protocol)`` dialling that loopback port.
        self._connector_for = connector_for
        #: ``bounded(items, concurrency, job)``: runs ``job`` per item, that many at once; error texts.
        self._bounded = bounded
        self.streams: dict[int, _FloorStream] = {}
        self._marks: dict[int, int] = {}

    async def _dial(self, port: int, public_key: str) -> _FloorStream:
        stream = _FloorStream(bytes.fromhex(public_key))
        await self._connector_for(port).connect(stream)
        await stream.ready
        return stream

    async def cmd_connect(self, indices: list[int], port: int, public_key: str, concurrency: int = 64) -> list[str]:
        """Open (and keep) one handshaken connection per index; errors as text."""

        async def one(i: int) -> None:
            self.streams[i] = await self._dial(port, public_key)

        return await self._bounded(indices, concurrency, one)

    async def cmd_mark(self) -> float:
        self._marks = {i: len(s.frames) for i, s in self.streams.items()}
        return time.monotonic()

    async def cmd_wait(self, timeout: float = 30.0) -> dict:
        """Arrival times of the first frame after the mark on every stream."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(len(s.frames) > self._marks.get(i, 0) for i, s in self.streams.items()):
                break
            await deferLater(self.reactor, 0.005, lambda: None)
        arrivals, missing = [], 0
        for i, stream in self.streams.items():
            new = stream.frames[self._marks.get(i, 0):]
            if new:
                arrivals.append(new[0][0])
            else:
                missing += 1
        return {"arrivals": arrivals, "missing": missing}

    async def cmd_logins(self, count: int, port: int, public_key: str, concurrency: int = 64,
                         request_bytes: int = 1024) -> dict:
        """``count`` short connections (handshake, one request, one reply, close); their times."""
        payload = b"q" * request_bytes
        done: list[float] = []

        async def one(_: int) -> None:
            stream = await self._dial(port, public_key)
            await stream.request(payload)
            done.append(time.monotonic())
            stream.transport.loseConnection()

        started = time.monotonic()
        errors = await self._bounded(range(count), concurrency, one)
        return {"started": started, "done": done, "errors": errors}

    async def cmd_drop(self) -> None:
        for stream in self.streams.values():
            stream.transport.abortConnection()
        self.streams.clear()


def ratio(measured, floor, *, rate: bool = False):
    """``measured`` as a multiple of ``floor`` (for rates, ``floor / measured``: how many times slower)."""
    if not measured or not floor:
        return None
    return round(floor / measured if rate else measured / floor, 2)


async def measure_floor(reactor, cluster, n: int, frame_sizes: list[int], *, rounds: int = 5,
                        logins: int = 2000, concurrency: int = 64, timeout: float = 120.0) -> dict:
    """
    Both floors for ``n`` connections through ``cluster``'s load-generator processes.

    For each size in ``frame_sizes`` (deduplicated), ``rounds`` fan-outs; the
    latency percentiles over every arrival of every round. Then ``logins``
    short connections, ``concurrency`` in flight. A fresh floor server process
    is started and stopped here.
    """
    from headscale_tw.bench.load import percentile

    server = FloorServerProcess(reactor)
    try:
        address = await server.call("listen")
        workers = len(cluster.workers)
        per: list[dict[str, Any]] = [{"indices": list(range(w, n, workers))} for w in range(workers)]
        errors = await cluster.broadcast("floor_connect", per, port=address["port"],
                                         public_key=address["public_key"],
                                         concurrency=max(1, concurrency // workers))
        fanout: dict[str, dict] = {}
        for size in sorted({s for s in frame_sizes if s}):
            latencies: list[float] = []
            missing = 0
            write_s: list[float] = []
            for _ in range(rounds):
                await cluster.broadcast("floor_mark")
                sent = time.monotonic()
                written = await server.call("fanout", nbytes=size)
                write_s.append(written["write_s"])
                for result in await cluster.broadcast("floor_wait", timeout=timeout):
                    latencies += [a - sent for a in result["arrivals"]]
                    missing += result["missing"]
                await deferLater(reactor, 0.2, lambda: None)
            fanout[str(size)] = {
                "streams": n, "rounds": rounds, "missing": missing,
                "p50_ms": _ms(percentile(latencies, 50)), "p99_ms": _ms(percentile(latencies, 99)),
                "server_write_ms_p50": _ms(percentile(write_s, 50)),
            }
        await cluster.broadcast("floor_drop")
        per = [{"count": logins // workers + (1 if w < logins % workers else 0)} for w in range(workers)]
        results = await cluster.broadcast("floor_logins", per, port=address["port"],
                                          public_key=address["public_key"],
                                          concurrency=max(1, concurrency // workers))
        started = min(r["started"] for r in results)
        done = [t for r in results for t in r["done"]]
        login_errors = [e for r in results for e in r["errors"]]
        return {
            "connections": n,
            "connect_errors": [e for r in errors for e in r][:3],
            "fanout": fanout,
            "logins": {
                "count": len(done), "errors": len(login_errors), "concurrency": concurrency,
                "per_s": round(len(done) / (max(done) - started), 1) if done else None,
            },
        }
    finally:
        try:
            await server.call("stop")
        except Exception:
            pass


def _ms(seconds):
    return None if seconds is None else round(seconds * 1000, 2)


def main() -> int:
    """Child side of :class:`FloorServerProcess`."""
    from twisted.internet import reactor

    from headscale_tw.bench.load import serve_commands
    from headscale_tw.bench.server import raise_nofile

    raise_nofile()
    serve_commands(reactor, FloorServer(reactor))
    return 0


if __name__ == "__main__":
    sys.exit(main())
