# -*- test-case-name: tests.bench.test_wire -*-
"""
One simulated node speaking the real protocol, and the connectors it dials with.

:class:`SimNode` does what ``tailscale up --authkey`` does on the wire (see
:mod:`headscale_tw.bench.wire` for the sequence): ``GET /key``, the ``/ts2021``
upgrade and Noise handshake, HTTP/2, register, a lite map update, the
streaming map, then a lite update with endpoints. It records when each step
finished and, for the streaming map, the arrival time and size of every
frame, so the benchmarks can tell when a node holds its full map and when a
delta reached it. Frames are only split on their LE32 length (no
decompression) unless ``verify`` is on, in which case every message is
applied with :class:`~headscale_tw.testing.netmap.NetmapApplier`.
"""

from __future__ import annotations

import json
import struct
import time
from collections.abc import Callable
from datetime import datetime, timezone

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.interfaces import ITransport
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure

from headscale_tw.bench import wire
from headscale_tw.control.framing import KEEPALIVE_FRAME, encode_json
from headscale_tw.keys import MachinePrivate, MachinePublic
from headscale_tw.testing.netmap import NetmapApplier
from headscale_tw.testing.noise_client import H2Response, NoiseClient

__all__ = ["KeyFetch", "SimNode", "TCPConnector", "RegistrationFailed", "http_get"]

_LE32 = struct.Struct("<I")


class RegistrationFailed(Exception):
    """The server answered a RegisterRequest with an error or without authorizing."""


class KeyFetch(Protocol):
    """One plain HTTP/1.1 request (``GET /key`` as Go sends it); ``result`` fires with (status, body)."""

    transport: ITransport  # makeConnection sets it before any other callback

    def __init__(self, request: bytes) -> None:
        self.request = request
        self.result: Deferred[tuple[int, bytes]] = Deferred()
        self._buffer = b""

    def connectionMade(self) -> None:
        self.transport.write(self.request)

    def dataReceived(self, data: bytes) -> None:
        self._buffer += data
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0 or self.result.called:
            return
        head = self._buffer[:end].split(b"\r\n")
        length = None
        for line in head[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        body = self._buffer[end + 4 :]
        if length is not None and len(body) >= length:
            self.result.callback((int(head[0].split(b" ")[1]), body[:length]))
            self.transport.loseConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.result.called:
            return
        end = self._buffer.find(b"\r\n\r\n")
        if end >= 0:  # no Content-Length (chunked or close-delimited): the body is what came
            self.result.callback((int(self._buffer.split(b" ", 2)[1]), self._buffer[end + 4 :]))
        else:
            self.result.errback(reason)


class TCPConnector:
    """Dials ``host:port`` on loopback with a real reactor."""

    def __init__(self, reactor, host: str, port: int, timeout: float = 30.0) -> None:
        self.reactor = reactor
        self.host = host
        self.port = port
        self.timeout = timeout

    def connect(self, protocol: Protocol) -> Deferred:
        endpoint = TCP4ClientEndpoint(self.reactor, self.host, self.port, timeout=self.timeout)
        return connectProtocol(endpoint, protocol)


async def http_get(connector, host: bytes, path: bytes) -> tuple[int, bytes]:
    """A one-off plain ``GET`` (``/health`` during the reconnect storm)."""
    fetch = KeyFetch(b"GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" % (path, host))
    await connector.connect(fetch)
    return await fetch.result


class SimNode:
    """One simulated tailscaled; ``await node.up()`` runs the whole login + stream sequence."""

    def __init__(
        self,
        index: int,
        connector,
        host: bytes,
        auth_key: str,
        *,
        now: Callable[[], float] = time.monotonic,
        request_tags: list[str] | None = None,
        verify: bool = False,
        log: Callable[[str, str, dict, bytes], None] | None = None,
    ) -> None:
        self.index = index
        self.connector = connector
        self.host = host
        self.auth_key = auth_key
        self.now = now
        self.verify = verify
        self.log = log
        self.machine_key = MachinePrivate.generate()
        self.node_key = wire.random_key("nodekey")
        self.disco_key = wire.random_key("discokey")
        self.nl_key = wire.random_key("nlpub")
        self.hostname = f"bench-{index}"
        self.request_tags = request_tags
        self.backend_log_id = wire.random_key("x")[2:]
        self.server_public: MachinePublic | None = None
        self.client: NoiseClient | None = None
        self.stream_done: Deferred | None = None
        self.times: dict[str, float] = {}
        self.errors: list[str] = []
        self.node_id: int | None = None
        self._reset_stream()

    def _reset_stream(self) -> None:
        self._buffer = bytearray()
        self._response: H2Response | None = None
        self.first_frame: Deferred[float] = Deferred()
        self.frames: list[tuple[float, int]] = []  # (arrival, framed size) of non-keep-alive frames
        self.keepalives = 0
        self.stream_bytes = 0
        self.applier = NetmapApplier() if self.verify else None

    # -- the login sequence ----------------------------------------------------

    async def up(self, endpoints: list[str] | None = None) -> None:
        """GET /key, /ts2021, register, lite map, stream, lite map with endpoints."""
        self.times["start"] = self.now()
        await self.fetch_key()
        await self.dial()
        await self.register()
        await self.lite()
        await self.stream()
        await self.lite(endpoints or [f"127.0.0.1:{41641 + self.index % 20000}", "192.0.2.1:41641"])

    async def fetch_key(self) -> MachinePublic:
        fetch = KeyFetch(wire.key_request(self.host))
        await self.connector.connect(fetch)
        status, body = await fetch.result
        if self.log:
            self.log("http1", "GET", {}, b"")
        if status != 200:
            raise RegistrationFailed(f"/key answered {status}: {body[:200]!r}")
        self.server_public = MachinePublic.parse(json.loads(body)["publicKey"])
        self.times["key"] = self.now()
        return self.server_public

    async def dial(self) -> None:
        """A fresh Noise connection (used again after a drop)."""
        if self.server_public is None:
            raise RuntimeError("dial before fetch_key: the server's public key is unknown")
        client = NoiseClient(self.server_public, self.machine_key, version=wire.CAPVER, host=self.host)
        self.client = client
        await self.connector.connect(client)
        await client.ready
        self.times["noise"] = self.now()

    def _post(self, path: bytes, body: dict, on_data=None) -> Deferred:
        data = encode_json(body)
        headers = wire.request_headers(self.node_key)
        if self.log:
            self.log("h2", path.decode(), dict(headers), data)
        if self.client is None:
            raise RuntimeError("a request before dial")
        return self.client.request(b"POST", path, data, headers, on_data=on_data)

    def _hostinfo(self, netinfo: bool = False) -> dict:
        return wire.hostinfo(self.hostname, self.backend_log_id, self.request_tags, netinfo=netinfo)

    async def register(self, expiry: str | None = None) -> dict:
        body = wire.register_body(self.node_key, self.auth_key, self._hostinfo(), self.nl_key)
        if expiry is not None:  # logout: Expiry in the past
            body["Expiry"] = expiry
        response = await self._post(b"/machine/register", body)
        try:
            answer = json.loads(response.body)
        except ValueError:
            answer = {}
        if response.status != 200 or answer.get("Error") or (expiry is None and not answer.get("MachineAuthorized")):
            raise RegistrationFailed(f"register: HTTP {response.status}: {response.body[:200]!r}")
        self.times["registered"] = self.now()
        return answer

    async def logout(self) -> None:
        """``tailscale logout``: register with an expiry in the past (an ephemeral node is deleted)."""
        past = datetime(2001, 1, 1, tzinfo=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        await self.register(expiry=past)

    async def lite(self, endpoints: list[str] | None = None) -> float:
        """A lite map update (``OmitPeers``); returns when it was sent."""
        sent = self.now()
        body = wire.map_body(self.node_key, self.disco_key, self._hostinfo(netinfo=endpoints is not None),
                             stream=False, endpoints=endpoints)
        response = await self._post(b"/machine/map", body)
        if response.status != 200:
            raise RegistrationFailed(f"lite map: HTTP {response.status}: {response.body[:200]!r}")
        return sent

    async def stream(self) -> float:
        """Open the streaming map; returns once the full map has arrived."""
        self._reset_stream()
        body = wire.map_body(self.node_key, self.disco_key, self._hostinfo(), stream=True)
        self.stream_done = self._post(b"/machine/map", body, on_data=self._on_data)
        self.stream_done.addErrback(lambda f: None)  # a dropped stream is expected in the storm
        assert self.client is not None  # _post checked it
        for entry in self.client._streams.values():  # keep the stream's body from accumulating
            if entry[2] == self._on_data:
                self._response = entry[0]
        arrived = await self.first_frame
        self.times["map"] = arrived
        return arrived

    def _on_data(self, data: bytes) -> None:
        if self._response is not None:
            self._response.body = b""
        self.stream_bytes += len(data)
        buffer = self._buffer
        buffer += data
        at = None
        while len(buffer) >= 4:
            (size,) = _LE32.unpack_from(buffer)
            if len(buffer) < 4 + size:
                break
            framed = bytes(buffer[: 4 + size])
            del buffer[: 4 + size]
            if self.applier is not None:
                self.applier.feed(framed)
            if framed == KEEPALIVE_FRAME:
                self.keepalives += 1
                continue
            at = at or self.now()
            self.frames.append((at, len(framed)))
            if not self.first_frame.called:
                self.first_frame.callback(at)

    def drop(self) -> None:
        """Close the Noise connection abruptly, as a network change would."""
        if self.client is not None and self.client.transport is not None:
            self.client.transport.abortConnection()

    async def reconnect(self) -> float:
        """What tailscaled does after a lost connection: new Noise channel, then the stream."""
        await self.dial()
        return await self.stream()
