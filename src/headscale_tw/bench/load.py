# -*- test-case-name: tests.bench.test_load -*-
"""
The load generator: many simulated nodes per process, several processes on request.

One command connects N nodes to a server (one you name, or one it spawns)::

    python -m headscale_tw.bench.load --nodes 1000 --spawn [--procs 2] [--policy all|groups|none]
    python -m headscale_tw.bench.load --nodes 1000 --server http://127.0.0.1:8080 --auth-key hskey-auth-...

Every node runs the official client's sequence (:mod:`headscale_tw.bench.wire`)
and keeps its streaming map open. A :class:`Worker` owns the nodes of one
process; :class:`RemoteWorker` drives a worker in a child process over JSON
lines on stdin/stdout; :class:`Cluster` spreads node indices over workers and
offers the operations the benchmarks need (connect, mark, wait for deltas,
lite update, logout, drop, reconnect). Timestamps are ``time.monotonic()``,
which is system-wide on Linux, so they compare across processes.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from urllib.parse import urlsplit

from twisted.internet.defer import Deferred, DeferredList, DeferredSemaphore, ensureDeferred
from twisted.internet.protocol import ProcessProtocol, connectionDone
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure

from headscale_tw.bench.floor import FloorStreams
from headscale_tw.bench.server import proc_stats, raise_nofile
from headscale_tw.bench.simnode import SimNode, TCPConnector
from headscale_tw.hostport import parse_hostport

__all__ = ["Worker", "RemoteWorker", "Cluster", "group_tag", "main"]


def group_tag(index: int, group_size: int) -> str:
    """The tag of node ``index`` when nodes are split into groups of ``group_size``."""
    return f"tag:g{index // group_size}"


def _sleep(reactor, seconds: float) -> Deferred:
    return deferLater(reactor, seconds, lambda: None)


class Worker:
    """The simulated nodes of this process; every ``cmd_*`` is a JSON-able operation."""

    log = Logger()

    def __init__(self, reactor, host: str, port: int, verify: int = 0) -> None:
        self.reactor = reactor
        self.connector = TCPConnector(reactor, host, port)
        self.host = f"{host}:{port}".encode()
        self.verify = verify
        self.nodes: dict[int, SimNode] = {}
        self._marks: dict[int, int] = {}
        #: The machine's-floor connections (``floor_*`` commands; see :mod:`headscale_tw.bench.floor`).
        self.floor = FloorStreams(reactor, lambda floor_port: TCPConnector(reactor, host, floor_port),
                                  bounded=self._bounded)

    async def call(self, cmd: str, **args):
        if cmd.startswith("floor_"):
            return await getattr(self.floor, "cmd_" + cmd[len("floor_"):])(**args)
        return await getattr(self, "cmd_" + cmd)(**args)

    async def _bounded(self, indices, concurrency: int, job):
        semaphore = DeferredSemaphore(max(1, concurrency))
        errors: list[str] = []

        async def one(i):
            try:
                await job(i)
            except Exception as e:  # reported, not raised: one failed node must not stop the run
                errors.append(f"node {i}: {type(e).__name__}: {e}")

        await DeferredList([semaphore.run(one, i) for i in indices])
        return errors

    async def cmd_connect(self, indices: list[int], auth_key: str, concurrency: int = 64,
                          group_size: int = 0, tag_as: int | None = None, tags: list[str] | None = None) -> dict:
        """Bring ``indices`` up (the whole login sequence), ``concurrency`` at a time.

        Each node requests its group's tag (``group_size``; ``tag_as`` names the
        index whose group to join), or ``tags`` when given.
        """
        self.build(indices, auth_key, group_size, tag_as, tags)
        errors = await self._bounded(indices, concurrency, lambda i: self.nodes[i].up())
        return self._timings(indices, errors)

    def build(self, indices, auth_key: str, group_size: int = 0, tag_as: int | None = None,
              tags: list[str] | None = None) -> None:
        """Make the nodes of ``indices`` (keys included) that do not exist yet; ``cmd_connect`` does this
        first, a benchmark may call it before timing starts."""
        for i in indices:
            wanted: list[str] | None
            if tags is not None:
                wanted = list(tags)
            else:
                wanted = [group_tag(i if tag_as is None else tag_as, group_size)] if group_size else None
            built = self.nodes.get(i)
            if built and not built.times and built.auth_key == auth_key and built.request_tags == wanted:
                continue  # built ahead and never started
            self.nodes[i] = SimNode(i, self.connector, self.host, auth_key, request_tags=wanted,
                                    verify=i < self.verify)

    def _timings(self, indices, errors) -> dict:
        nodes = [self.nodes[i] for i in indices]
        return {
            "start": [n.times.get("start") for n in nodes],
            "key": [n.times.get("key") for n in nodes],
            "noise": [n.times.get("noise") for n in nodes],
            "registered": [n.times.get("registered") for n in nodes],
            "map": [n.times.get("map") for n in nodes],
            "full_map_bytes": [n.frames[0][1] if n.frames else None for n in nodes],
            "errors": errors,
        }

    async def cmd_mark(self) -> float:
        """Remember how many frames each stream has had; deltas are counted from here."""
        self._marks = {i: len(n.frames) for i, n in self.nodes.items()}
        return time.monotonic()

    async def cmd_wait(self, indices: list[int] | None = None, timeout: float = 30.0) -> dict:
        """Wait until each of ``indices`` (default: all) got a frame after the mark; arrival times and sizes."""
        indices = list(self.nodes) if indices is None else [i for i in indices if i in self.nodes]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(len(self.nodes[i].frames) > self._marks.get(i, 0) for i in indices):
                break
            await _sleep(self.reactor, 0.005)
        arrivals, sizes, missing = [], [], 0
        for i in indices:
            new = self.nodes[i].frames[self._marks.get(i, 0):]
            if new:
                arrivals.append(new[0][0])
                sizes.append(new[0][1])
            else:
                missing += 1
        return {"arrivals": arrivals, "bytes": sizes, "missing": missing}

    async def cmd_quiet(self, seconds: float = 1.0, timeout: float = 120.0) -> float:
        """Wait until no stream got a frame for ``seconds``; returns how long that took."""
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            last = max((n.frames[-1][0] for n in self.nodes.values() if n.frames), default=0.0)
            if time.monotonic() - last >= seconds:
                break
            await _sleep(self.reactor, 0.05)
        return time.monotonic() - started

    async def cmd_lite(self, index: int, endpoints: list[str]) -> float:
        """Node ``index`` reports new endpoints (lite map request); returns when it was sent."""
        return await self.nodes[index].lite(endpoints)

    async def cmd_logout(self, index: int) -> float:
        sent = time.monotonic()
        await self.nodes[index].logout()
        self.nodes[index].drop()
        del self.nodes[index]
        return sent

    async def cmd_drop(self) -> float:
        """Every node loses its connection at once."""
        for node in self.nodes.values():
            node.drop()
        return time.monotonic()

    async def cmd_reconnect(self, concurrency: int = 256) -> dict:
        """Every node dials again and reopens its stream; the times each full map arrived."""
        indices = list(self.nodes)
        errors = await self._bounded(indices, concurrency, lambda i: self.nodes[i].reconnect())
        return self._timings(indices, errors)

    async def cmd_verify(self) -> list[dict]:
        """Peer counts seen by the verified nodes (decoded with NetmapApplier)."""
        return [{"index": i, "peers": len(n.applier.peers), "node": n.applier.node is not None}
                for i, n in self.nodes.items() if n.applier is not None]

    async def cmd_stats(self) -> dict:
        return dict(proc_stats(os.getpid()), nodes=len(self.nodes))

    async def cmd_stop(self) -> None:
        for node in self.nodes.values():
            node.drop()
        self.reactor.callLater(0.1, self.reactor.stop)


class _LineProtocol(ProcessProtocol):
    def __init__(self, owner: RemoteWorker) -> None:
        self.owner = owner
        self.buffer = b""

    def outReceived(self, data: bytes) -> None:
        self.buffer += data
        while b"\n" in self.buffer:
            line, self.buffer = self.buffer.split(b"\n", 1)
            self.owner._reply(json.loads(line))

    def errReceived(self, data: bytes) -> None:
        sys.stderr.write(data.decode(errors="replace"))

    def processEnded(self, reason) -> None:
        self.owner._ended(reason)


class RemoteWorker:
    """
    A :class:`Worker` in a child process (``--worker``), same ``call`` interface.

    With ``argv``, any child that serves :func:`serve_commands` (the floor server).
    """

    def __init__(self, reactor, host: str = "", port: int = 0, verify: int = 0,
                 argv: list[str] | None = None) -> None:
        self._calls: dict[int, Deferred] = {}
        self._next = 0
        self.protocol = _LineProtocol(self)
        env = dict(os.environ)
        if argv is None:
            argv = [sys.executable, "-m", "headscale_tw.bench.load", "--worker", f"{host}:{port}",
                    "--verify", str(verify)]
        self.process = reactor.spawnProcess(self.protocol, argv[0], argv, env=env)

    def call(self, cmd: str, **args) -> Deferred:
        self._next += 1
        d: Deferred = Deferred()
        self._calls[self._next] = d
        self.process.write(json.dumps({"id": self._next, "cmd": cmd, "args": args}).encode() + b"\n")
        return d

    def _reply(self, message: dict) -> None:
        d = self._calls.pop(message["id"])
        if "error" in message:
            d.errback(RuntimeError(message["error"]))
        else:
            d.callback(message["result"])

    def _ended(self, reason) -> None:
        calls, self._calls = self._calls, {}
        for d in calls.values():
            d.errback(RuntimeError(f"worker exited: {reason.getErrorMessage()}"))


def _serve_worker(address: str, verify: int) -> None:
    """Child side of :class:`RemoteWorker` for simulated nodes."""
    from twisted.internet import reactor

    raise_nofile()
    host, port = parse_hostport(address)
    serve_commands(reactor, Worker(reactor, host, int(port), verify=verify))


def serve_commands(reactor, worker) -> None:
    """Run ``worker.call`` for each JSON command on stdin, replies on stdout, until stdin closes."""
    from twisted.internet import stdio
    from twisted.protocols.basic import LineOnlyReceiver

    class Commands(LineOnlyReceiver):
        delimiter = b"\n"
        MAX_LENGTH = 1 << 24

        def lineReceived(self, line: bytes) -> None:
            message = json.loads(line)
            d = ensureDeferred(worker.call(message["cmd"], **message["args"]))
            d.addCallbacks(lambda r: {"id": message["id"], "result": r},
                           lambda f: {"id": message["id"], "error": f.getErrorMessage()})
            d.addCallback(lambda reply: self.sendLine(json.dumps(reply).encode()))

        def connectionLost(self, reason: Failure = connectionDone) -> None:
            if reactor.running:
                reactor.stop()

    stdio.StandardIO(Commands())
    reactor.run()


class Cluster:
    """Node indices spread round-robin over ``procs`` workers (the first one in this process)."""

    def __init__(self, reactor, host: str, port: int, procs: int = 1, verify: int = 0) -> None:
        self.reactor = reactor
        self.workers: list[Worker | RemoteWorker] = [Worker(reactor, host, port, verify=verify)]
        self.workers += [RemoteWorker(reactor, host, port, verify=verify) for _ in range(procs - 1)]
        self.indices: dict[int, int] = {}

    def _split(self, indices) -> list[list[int]]:
        parts: list[list[int]] = [[] for _ in self.workers]
        for i in indices:
            w = self.indices.setdefault(i, i % len(self.workers))
            parts[w].append(i)
        return parts

    async def broadcast(self, cmd: str, per_worker=None, **args) -> list:
        """``cmd`` on every worker (``per_worker[w]`` adds worker ``w``'s own arguments); their results."""
        calls = []
        for w, worker in enumerate(self.workers):
            extra = per_worker[w] if per_worker is not None else {}
            calls.append(ensureDeferred(_as_coro(worker.call(cmd, **args, **extra))))
        results = await DeferredList(calls, fireOnOneErrback=True, consumeErrors=True)
        return [r for _, r in results]

    @staticmethod
    def _merge(results: list[dict]) -> dict:
        merged: dict = {}
        for r in results:
            for k, v in r.items():
                if isinstance(v, list):
                    merged.setdefault(k, []).extend(v)
                else:
                    merged[k] = merged.get(k, 0) + v
        return merged

    async def connect(self, indices, auth_key: str, concurrency: int = 64, group_size: int = 0,
                      tag_as: int | None = None, tags: list[str] | None = None) -> dict:
        parts = self._split(indices)
        per = [{"indices": p, "concurrency": max(1, concurrency // len(self.workers))} for p in parts]
        return self._merge(await self.broadcast("connect", per, auth_key=auth_key, group_size=group_size,
                                           tag_as=tag_as, tags=tags))

    async def mark(self) -> float:
        return min(await self.broadcast("mark"))

    async def wait(self, indices=None, timeout: float = 30.0) -> dict:
        per = None if indices is None else [{"indices": p} for p in self._split(indices)]
        return self._merge(await self.broadcast("wait", per, timeout=timeout))

    async def quiet(self, seconds: float = 1.0, timeout: float = 120.0) -> float:
        return max(await self.broadcast("quiet", seconds=seconds, timeout=timeout))

    def worker_of(self, index: int):
        return self.workers[self.indices[index]]

    async def lite(self, index: int, endpoints: list[str]) -> float:
        return await _as_coro(self.worker_of(index).call("lite", index=index, endpoints=endpoints))

    async def logout(self, index: int) -> float:
        return await _as_coro(self.worker_of(index).call("logout", index=index))

    async def drop(self) -> float:
        return min(await self.broadcast("drop"))

    async def reconnect(self, concurrency: int = 256) -> dict:
        return self._merge(await self.broadcast("reconnect", concurrency=max(1, concurrency // len(self.workers))))

    async def verify(self) -> list[dict]:
        return [v for r in await self.broadcast("verify") for v in r]

    async def stats(self) -> list[dict]:
        return await self.broadcast("stats")

    async def stop(self) -> None:
        for worker in self.workers[1:]:
            try:
                await _as_coro(worker.call("stop"))
            except Exception:
                pass


async def _as_coro(d):
    return await d


def percentile(values: list[float], p: float) -> float | None:
    """Nearest-rank percentile (``p`` in 0..100)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * p // 100))
    return ordered[int(rank) - 1]


def connect_summary(result: dict, n: int) -> dict:
    """Registrations/s and time until every node held its full map, from a connect result."""
    starts = [t for t in result["start"] if t is not None]
    regs = [t for t in result["registered"] if t is not None]
    maps = [t for t in result["map"] if t is not None]
    t0 = min(starts) if starts else 0.0
    return {
        "nodes": n,
        "registered": len(regs),
        "errors": len(result["errors"]),
        "first_errors": result["errors"][:3],
        "registrations_per_s": round(len(regs) / (max(regs) - t0), 1) if regs else None,
        "all_maps_s": round(max(maps) - t0, 3) if len(maps) == n else None,
        "full_map_bytes_median": percentile([b for b in result["full_map_bytes"] if b], 50),
        "steps_p50_ms": _step_latencies(result),
    }


#: The steps of a login, as (name, from, to) timestamps of the connect result.
LOGIN_STEPS = (("key", "start", "key"), ("noise", "key", "noise"), ("register", "noise", "registered"),
               ("to_full_map", "registered", "map"))


def _step_latencies(result: dict) -> dict:
    """Median milliseconds of each login step (where a login's time goes, seen from the client)."""
    out: dict[str, float | None] = {}
    for name, first, last in LOGIN_STEPS:
        spans = [(b - a) * 1000 for a, b in zip(result.get(first, ()), result.get(last, ()))
                 if a is not None and b is not None]
        median = percentile(spans, 50) if spans else None
        out[name] = None if median is None else round(median, 1)
    return out


async def _cli(reactor, options) -> int:
    from headscale_tw.bench.scenarios import policy_text
    from headscale_tw.bench.server import SpawnedServer

    spawned = None
    if options.spawn:
        spawned = SpawnedServer(policy=policy_text(options.policy, options.nodes, options.group_size))
        spawned.start()
        keys = spawned.make_keys()
        auth_key, url = keys["reusable"], spawned.url
    else:
        auth_key, url = options.auth_key, options.server
    parts = urlsplit(url)
    if not parts.hostname:
        raise SystemExit(f"the server URL {url!r} names no host")
    cluster = Cluster(reactor, parts.hostname, parts.port or 80, procs=options.procs, verify=options.verify)
    try:
        group = options.group_size if options.policy == "groups" else 0
        result = await cluster.connect(range(options.nodes), auth_key, options.concurrency, group)
        summary = connect_summary(result, options.nodes)
        summary["quiet_after_s"] = round(await cluster.quiet(1.0, timeout=options.hold + 60), 2)
        if spawned is not None:
            summary["server"] = spawned.stats()
        summary["clients"] = await cluster.stats()
        summary["verified"] = await cluster.verify()
        print(json.dumps(summary, indent=1))
        if options.hold:
            await _sleep(reactor, options.hold)
        if options.json:
            with open(options.json, "w") as f:
                json.dump(summary, f, indent=1)
        return 0 if not summary["errors"] else 1
    finally:
        await cluster.stop()
        if spawned is not None:
            spawned.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m headscale_tw.bench.load", description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=100)
    target = parser.add_mutually_exclusive_group()
    target.add_argument("--server", help="http://host:port of a running server (needs --auth-key)")
    target.add_argument("--spawn", action="store_true", help="start a server as a child process (default)")
    parser.add_argument("--auth-key", help="a reusable pre-auth key (with --server)")
    parser.add_argument("--procs", type=int, default=1, help="load-generator processes")
    parser.add_argument("--concurrency", type=int, default=64, help="logins in flight")
    parser.add_argument("--policy", choices=["none", "all", "groups"], default="all")
    parser.add_argument("--group-size", type=int, default=10)
    parser.add_argument("--verify", type=int, default=0, help="decode and check the maps of the first K nodes")
    parser.add_argument("--hold", type=float, default=0.0, help="keep the streams open this many seconds")
    parser.add_argument("--json", help="also write the summary here")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    options = parser.parse_args(argv)
    if options.worker:
        _serve_worker(options.worker, options.verify)
        return 0
    if options.server and not options.auth_key:
        parser.error("--server needs --auth-key")
    options.spawn = not options.server
    raise_nofile()
    from twisted.internet.task import react

    return react(lambda r: ensureDeferred(_cli(r, options)))


if __name__ == "__main__":
    sys.exit(main())
