# -*- test-case-name: tests.noise.test_protocol -*-
"""
A protocol-level fake ts2021 client: the Noise initiator plus an HTTP/2 client over it.

It speaks exactly what tailscaled puts on the wire (``/key``, the
``/ts2021`` upgrade with ``X-Tailscale-Handshake``, Noise records, optional
early payload, HTTP/2 with prior knowledge), so tests and the load generator
can drive the server without the real binary. It is a plain Twisted
``Protocol``; connect it with ``iosim`` in tests or with an endpoint for load.

Typical use::

    key = KeyClient(version=133)            # GET /key?v=133 on one connection
    ...                                     # key.result fires with MachinePublic
    client = NoiseClient(server_public, version=133)
    ...                                     # connect; client.ready fires when HTTP/2 can start
    d = client.request(b"POST", b"/machine/register", body)
    # d fires with H2Response(status, headers, body)
"""

from __future__ import annotations

import json
from base64 import b64encode
from collections.abc import Callable, Sequence

import attrs
import h2.config
import h2.connection
import h2.events
import h2.settings
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import ITCPTransport, ITransport
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure

from headscale_tw.keys import MachinePrivate, MachinePublic
from headscale_tw.noise._codec import (
    EarlyPayloadReader,
    NoiseError,
    NoiseInitiator,
    RecordDecoder,
    RecordEncoder,
)
from headscale_tw.testing.h2_data import DataFrameSplitter

__all__ = ["KeyClient", "NoiseClient", "H2Response", "UpgradeFailed", "DEFAULT_VERSION"]

DEFAULT_VERSION = 133  # tailscale 1.96


#: Like Go's HTTP/2 transport: 4 MiB stream windows, 1 GiB connection window.
_STREAM_WINDOW = 4 << 20
_CONNECTION_WINDOW = 1 << 30


class UpgradeFailed(Exception):
    """The server did not answer ``/ts2021`` with 101; ``status`` and ``body`` say what it said."""

    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(f"upgrade refused: HTTP {status}: {body[:200]!r}")
        self.status = status
        self.body = body


@attrs.define
class H2Response:
    """One HTTP/2 response collected by :meth:`NoiseClient.request`."""

    status: int = 0
    headers: dict[bytes, bytes] = attrs.Factory(dict)
    body: bytes = b""


def _split_head(buffer: bytes) -> tuple[int, dict[bytes, bytes], bytes] | None:
    """(status, lower-cased headers, rest) once an HTTP/1.1 head is complete."""
    end = buffer.find(b"\r\n\r\n")
    if end < 0:
        return None
    lines = buffer[:end].split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, buffer[end + 4 :]


class KeyClient(Protocol):
    """One ``GET /key?v=N`` over HTTP/1.1; ``result`` fires with the server's MachinePublic."""

    transport: ITransport  # makeConnection sets it before any other callback

    def __init__(self, version: int = DEFAULT_VERSION, host: bytes = b"127.0.0.1") -> None:
        self.version = version
        self.host = host
        self.result: Deferred[MachinePublic] = Deferred()
        self._buffer = b""

    def connectionMade(self) -> None:
        self.transport.write(
            b"GET /key?v=%d HTTP/1.1\r\nHost: %s\r\nUser-Agent: Go-http-client/1.1\r\n"
            b"Connection: close\r\n\r\n" % (self.version, self.host)
        )

    def dataReceived(self, data: bytes) -> None:
        self._buffer += data

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.result.called:
            return
        try:
            head = _split_head(self._buffer)
            if head is None:
                raise ValueError("connection closed before a response head")
            status, headers, body = head
            if "content-length" in {k.decode() for k in headers}:
                body = body[: int(headers[b"content-length"])]
            if status != 200:
                raise UpgradeFailed(status, body)
            key = MachinePublic.parse(json.loads(body)["publicKey"])
        except Exception:
            self.result.errback()
        else:
            self.result.callback(key)


class NoiseClient(Protocol):
    """
    ``/ts2021`` upgrade, Noise initiator and HTTP/2 client on one connection.

    ``ready`` fires with this client when requests can be made, or fails with
    :class:`UpgradeFailed` or a :class:`~headscale_tw.noise._codec.NoiseError`
    (``ServerError`` for an error frame). ``closed`` fires when the connection
    ends. ``early`` holds the early payload JSON, if the server sent one.
    """

    transport: ITCPTransport  # makeConnection sets it before any other callback

    def __init__(
        self,
        server_public: MachinePublic,
        machine_key: MachinePrivate | None = None,
        version: int = DEFAULT_VERSION,
        host: bytes = b"127.0.0.1:8080",
        method: bytes = b"POST",
    ) -> None:
        self.machine_key = machine_key if machine_key is not None else MachinePrivate.generate()
        self.version = version
        self.host = host
        self.method = method
        self._initiator = NoiseInitiator(self.machine_key.raw, server_public.raw, version)
        self.ready: Deferred[NoiseClient] = Deferred()
        self.closed: Deferred[None] = Deferred()
        self._state = "head"
        self._buffer = b""
        self._decoder: RecordDecoder | None = None
        self._encoder: RecordEncoder | None = None
        self._early = EarlyPayloadReader()
        self._h2: h2.connection.H2Connection | None = None
        self._streams: dict[int, tuple[H2Response, Deferred, Callable[[bytes], object] | None]] = {}
        self.error: BaseException | None = None
        self._pending: dict[int, bytes] = {}
        #: Plain DATA frames of open streams skip the ``h2`` machinery (see :mod:`~headscale_tw.testing.h2_data`).
        self._frames = DataFrameSplitter(_STREAM_WINDOW, _CONNECTION_WINDOW)
        #: Streams answered without a Content-Length (``h2`` need not count their bytes): the shortcut's.
        self._unsized: set[int] = set()

    @property
    def early(self) -> dict | None:
        return self._early.early

    # Connection set-up.
    def connectionMade(self) -> None:
        handshake = b64encode(self._initiator.initiation())
        self.transport.write(
            b"%s /ts2021 HTTP/1.1\r\nHost: %s\r\nUser-Agent: Go-http-client/1.1\r\n"
            b"Content-Length: 0\r\nConnection: upgrade\r\n"
            b"Upgrade: tailscale-control-protocol\r\nX-Tailscale-Handshake: %s\r\n\r\n"
            % (self.method, self.host, handshake)
        )

    def dataReceived(self, data: bytes) -> None:
        try:
            self._received(data)
        except Exception as e:
            self._fail(e)

    def _received(self, data: bytes) -> None:
        if self._state == "failed":
            return
        self._buffer += data
        if self._state == "head":
            head = _split_head(self._buffer)
            if head is None:
                return
            status, headers, rest = head
            if status != 101:
                self._state = "refused"
                self._refused_status = status
                self._refused_length = int(headers.get(b"content-length", b"-1"))
                self._buffer = rest
            elif headers.get(b"upgrade") != b"tailscale-control-protocol":
                raise NoiseError(f"bad Upgrade header in 101: {headers.get(b'upgrade')!r}")
            else:
                self._buffer = rest
                self._state = "reply"
        if self._state == "refused":
            if 0 <= self._refused_length <= len(self._buffer):
                body = self._buffer[: self._refused_length]
                self._fail(UpgradeFailed(self._refused_status, body))
            return
        if self._state == "reply":
            length = NoiseInitiator.reply_length(self._buffer)
            if length is None or len(self._buffer) < length:
                return
            reply, self._buffer = self._buffer[:length], self._buffer[length:]
            ciphers = self._initiator.finish(reply)
            self._decoder = RecordDecoder(ciphers.receive)
            self._encoder = RecordEncoder(ciphers.send)
            self._h2 = h2.connection.H2Connection(
                # Our own request headers are fixed lower-case bytes: checking and normalising them on
                # every request cost a quarter of h2's send path. What the server sends is still checked.
                h2.config.H2Configuration(client_side=True, header_encoding=None,
                                          validate_outbound_headers=False, normalize_outbound_headers=False)
            )
            self._h2.initiate_connection()
            # Like Go's HTTP/2 transport: 4 MiB stream windows, 1 GiB connection window.
            self._h2.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: _STREAM_WINDOW})
            self._h2.increment_flow_control_window(_CONNECTION_WINDOW - 65535)
            self._state = "open"
            self._flush()
            self.ready.callback(self)
        if self._state == "open" and self._buffer:
            assert self._decoder is not None  # set before the state became "open"
            records, self._buffer = self._buffer, b""
            early = self._early
            h2_bytes = b"".join([early.feed(chunk) for chunk in self._decoder.feed(records)])
            if h2_bytes:
                self._h2_received(h2_bytes)

    def _open_h2(self) -> h2.connection.H2Connection:
        if self._h2 is None:
            raise RuntimeError("NoiseClient is not ready")
        return self._h2

    def _h2_received(self, data: bytes) -> None:
        streams = self._streams
        for stream_id, payload in self._frames.feed(data, self._unsized.__contains__):
            if stream_id == 0:
                self._h2_frames(payload)
            elif (entry := streams.get(stream_id)) is not None:
                if entry[2] is not None:
                    entry[2](payload)
                entry[0].body += payload
        updates = self._frames.take_window_updates()
        if updates and self._encoder is not None:
            self.transport.write(self._encoder.encode(updates))
        if self._pending:
            self._send_bodies()
        self._flush()

    def _h2_frames(self, data: bytes) -> None:
        """Whole frames the shortcut left to ``h2``."""
        connection = self._open_h2()
        for event in connection.receive_data(data):
            entry = self._streams.get(getattr(event, "stream_id", -1))
            if isinstance(event, h2.events.ResponseReceived) and entry:
                for name, value in event.headers:
                    if name == b":status":
                        entry[0].status = int(value)
                    else:
                        entry[0].headers[name] = value
                if b"content-length" not in entry[0].headers:
                    self._unsized.add(event.stream_id)
            elif isinstance(event, h2.events.DataReceived) and entry:
                connection.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                if entry[2] is not None:
                    entry[2](event.data)
                entry[0].body += event.data
            elif isinstance(event, h2.events.StreamEnded) and entry:
                del self._streams[event.stream_id]
                self._forget(event.stream_id)
                entry[1].callback(entry[0])
            elif isinstance(event, h2.events.StreamReset) and entry:
                del self._streams[event.stream_id]
                self._forget(event.stream_id)
                entry[1].errback(Failure(ConnectionError(f"stream reset: {event.error_code!r}")))
            elif isinstance(event, h2.events.ConnectionTerminated):
                self.transport.loseConnection()

    def _forget(self, stream_id: int) -> None:
        self._unsized.discard(stream_id)
        self._frames.forget(stream_id)

    def _send_bodies(self) -> None:
        """Send queued request bodies as far as the server's flow-control windows allow."""
        connection = self._open_h2()
        for stream_id, body in list(self._pending.items()):
            if stream_id not in self._streams:
                del self._pending[stream_id]
                continue
            while body:
                size = min(connection.local_flow_control_window(stream_id), connection.max_outbound_frame_size)
                if size <= 0:
                    break
                chunk, body = body[:size], body[size:]
                connection.send_data(stream_id, chunk, end_stream=not body)
            if body:
                self._pending[stream_id] = body
            else:
                del self._pending[stream_id]

    def _flush(self) -> None:
        if self._h2 is None or self._encoder is None:
            return
        data = self._h2.data_to_send()
        if data:
            self.transport.write(self._encoder.encode(data))

    # API.
    def request(
        self,
        method: bytes,
        path: bytes,
        body: bytes = b"",
        headers: Sequence[tuple[bytes, bytes]] = (),
        on_data=None,
    ) -> Deferred[H2Response]:
        """
        Send one request; the Deferred fires with the whole response.

        ``on_data`` (optional) is called with each DATA chunk as it arrives,
        for streaming responses such as ``/machine/map``.
        """
        if self._state != "open":
            raise RuntimeError("NoiseClient is not ready")
        connection = self._open_h2()
        stream_id = connection.get_next_available_stream_id()
        all_headers = [
            (b":method", method),
            (b":scheme", b"https"),
            (b":authority", self.host),
            (b":path", path),
            *headers,
        ]
        if body:
            all_headers.append((b"content-length", b"%d" % len(body)))
        d: Deferred[H2Response] = Deferred()
        self._streams[stream_id] = (H2Response(), d, on_data)
        connection.send_headers(stream_id, all_headers, end_stream=not body)
        if body:
            self._pending[stream_id] = body
            self._send_bodies()
        self._flush()
        return d

    def send_raw(self, data: bytes) -> None:
        """Write raw bytes to the socket (to test how the server copes with garbage)."""
        self.transport.write(data)

    def close(self) -> None:
        self.transport.loseConnection()

    # Teardown.
    def _fail(self, error: BaseException) -> None:
        self.error = error
        self._state = "failed"
        if not self.ready.called:
            self.ready.errback(Failure(error))
        self.transport.loseConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._state == "refused" and not self.ready.called:
            self.ready.errback(Failure(UpgradeFailed(self._refused_status, self._buffer)))
        elif not self.ready.called:
            self.ready.errback(reason)
        self._state = "closed"
        streams, self._streams = self._streams, {}
        for _, d, _ in streams.values():
            d.errback(reason)
        self.closed.callback(None)
