# -*- test-case-name: tests.noise.test_protocol -*-
"""
The Noise transport as a Twisted ``ProtocolWrapper`` (modelled on ``TLSMemoryBIOProtocol``).

After ``/ts2021`` has answered the handshake, the connection belongs to a
:class:`NoiseProtocol`. It decrypts records into an inner HTTP/2 server
(``H2Connection``) that serves an ordinary ``twisted.web.server.Site``, and
encrypts everything that server writes. Inner requests find out who is on
the other end with :func:`noise_peer`.

Bytes on the wire after the 51-byte handshake response (see ``_codec``)::

    server -> client   [early payload: ff ff ff 'T' 'S', BE32 len, EarlyNoise JSON]
                       then HTTP/2 server preface (SETTINGS) and responses
    client -> server   HTTP/2 client preface + SETTINGS, then requests

all carried in type-4 records of at most 4096 bytes.

Lifecycle (an Automat ``TypeMachineBuilder`` machine, all transitions in
:func:`_build_machine`)::

    awaiting_first_record --first records--> established --records--> (itself)
            |                               |
            +--- bad record / timeout ------+--> closing
    any state --connection lost--> closed

* ``awaiting_first_record``: the handshake timeout (default 30 s) runs; the
  client sends its HTTP/2 preface at once. Our own writes (the early payload,
  the server's SETTINGS) do not extend it.
* ``established``: the idle timeout (default 300 s) runs, reset by every
  record in either direction; map keep-alives keep healthy long-polls alive.
* ``closing``: a bad record or a timeout aborted the transport; input and
  writes are dropped.
* ``closed``: the transport is gone; timers are cancelled.

The send path (:meth:`NoiseProtocol.write`, once per HTTP/2 flush) reads two
flags the machine sets on entering a state instead of going through the
machine, so a write costs what it did before (``bench/h2_send.py``).

Clients whose protocol version is below ``min_version`` still complete the
handshake, but their HTTP/2 requests are answered by a refusal site: the
register call gets a ``RegisterResponse`` whose ``Error`` the official client
shows as ``backend error: <text>`` (``tailscale up`` exits instead of
retrying silently). See docs/noise.md.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Protocol as TypingProtocol

import attrs
from automat import TypeMachineBuilder
from twisted.internet.interfaces import IAddress, IDelayedCall, ITransport
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper, TimeoutMixin
from twisted.python.failure import Failure
from twisted.web import resource
from twisted.web.server import Site
from zope.interface import implementer

from headscale_tw._twisted_private import BatchingH2Connection, stream_backlog, write_through
from headscale_tw.keys import ChallengePrivate, MachinePrivate, MachinePublic
from headscale_tw.noise._codec import (
    FrameError,
    NoiseResponder,
    RecordDecoder,
    RecordEncoder,
    ResponderResult,
    encode_early_payload,
)
from headscale_tw.web.access_log import AccessLoggedSite

__all__ = [
    "write_through",
    "NoisePeer",
    "NoiseAddress",
    "NoiseProtocol",
    "NoiseFactory",
    "noise_peer",
    "refusal_message",
    "stream_backlog",
    "DEFAULT_MIN_VERSION",
    "EARLY_NOISE_MIN_VERSION",
]

#: tailscale 1.78 (capver 109) and newer are served; Headscale's floor is 113.
DEFAULT_MIN_VERSION = 106
#: Clients understand the early payload from this version on.
EARLY_NOISE_MIN_VERSION = 49


@attrs.frozen
class NoisePeer:
    """The authenticated other end of a Noise connection."""

    machine_key: MachinePublic
    #: Noise protocol version = the client's capability version.
    version: int
    #: The underlying transport's peer address (TCP, or whatever TLS wraps).
    address: IAddress
    #: Early-noise challenge key sent to this client, if any.
    challenge: ChallengePrivate | None = None
    #: The client's address as resolved when ``/ts2021`` upgraded (honouring
    #: ``trusted_proxies``; see :mod:`headscale_tw.web.client_address`); empty
    #: when unknown, and then the transport's peer is the client.
    client_address: str = ""


@implementer(IAddress)
@attrs.frozen
class NoiseAddress:
    """
    What ``getPeer()`` returns inside a Noise connection.

    Inner requests see it as ``request.getClientAddress()``; ``host`` and
    ``port`` mirror the underlying address so logging code keeps working.
    """

    peer: NoisePeer

    @property
    def host(self) -> str | None:
        return getattr(self.peer.address, "host", None)

    @property
    def port(self) -> int | None:
        return getattr(self.peer.address, "port", None)


def noise_peer(request) -> NoisePeer | None:
    """The Noise peer of an inner (HTTP/2-over-Noise) request, or None for a plain request."""
    address = request.getClientAddress()
    if isinstance(address, NoiseAddress):
        return address.peer
    return None


def refusal_message(version: int, min_version: int) -> str:
    """The text a too-old client is shown."""
    return (
        f"unsupported client: capability version {version} is older than this server's"
        f" minimum {min_version}; please upgrade Tailscale"
    )


class _RefusalResource(resource.Resource):
    """Answers every inner request of a refused client with the refusal text."""

    isLeaf = True

    def __init__(self, message: str) -> None:
        super().__init__()
        self._message = message

    def render(self, request):
        if request.postpath == [b"machine", b"register"]:
            # RegisterResponse.Error reaches `tailscale up` as "backend error: ...".
            request.setHeader(b"content-type", b"application/json")
            return json.dumps({"Error": self._message}).encode("utf-8")
        request.setResponseCode(403)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return self._message.encode("utf-8") + b"\n"


class NoiseFactory:
    """
    Settings and bookkeeping shared by all Noise connections of one server.

    ``inner_site`` serves the HTTP/2 requests that arrive inside Noise. The
    ``reactor`` drives the timeouts and the inner ``H2Connection``.
    """

    _log = Logger()

    def __init__(
        self,
        server_key: MachinePrivate,
        inner_site: Site,
        reactor,
        *,
        min_version: int = DEFAULT_MIN_VERSION,
        handshake_timeout: float | None = 30.0,
        idle_timeout: float | None = 300.0,
        early_payload: bool = True,
    ) -> None:
        self.server_key = server_key
        self.public_key = server_key.public()
        self.responder = NoiseResponder(server_key.raw)
        self.inner_site = inner_site
        self.reactor = reactor
        self.min_version = min_version
        self.handshake_timeout = handshake_timeout
        self.idle_timeout = idle_timeout
        self.early_payload = early_payload
        self.connections: set[NoiseProtocol] = set()
        self._refusal_sites: dict[int, Site] = {}

    def accept(self, initiation: bytes, client_address: str = "") -> tuple[bytes, NoiseProtocol]:
        """
        Answer a 101-byte initiation: the 51-byte response and the protocol to switch to.

        ``client_address`` is recorded on the peer (:attr:`NoisePeer.client_address`).

        Raises :class:`~headscale_tw.noise._codec.HandshakeRefused` or
        :class:`~headscale_tw.noise._codec.HandshakeFailed`.
        """
        result = self.responder.respond(initiation)
        return result.response, NoiseProtocol(self, result, client_address)

    def site_for(self, version: int) -> Site:
        """The inner site for a client of ``version``: the real one, or a refusal."""
        if version >= self.min_version:
            return self.inner_site
        site = self._refusal_sites.get(version)
        if site is None:
            refusal = _RefusalResource(refusal_message(version, self.min_version))
            # counted and logged with the inner site's requests when that site keeps an access log
            access_log = getattr(self.inner_site, "access_log", None)
            if access_log is None:
                site = Site(refusal, reactor=self.reactor)
            else:
                site = AccessLoggedSite(refusal, access_log, reactor=self.reactor)
            self._refusal_sites[version] = site
        return site

    def build_inner(self, site: Site) -> BatchingH2Connection:
        """
        An HTTP/2 server connection for ``site`` driven by our reactor.

        Twisted's own path (``_GenericHTTPChannelProtocol`` seeing
        ``negotiatedProtocol == b"h2"``) builds ``H2Connection()`` on the
        global reactor, whose send loop would then escape our clock; so we
        build it here with the same attributes ``Site.buildProtocol`` sets.
        """
        h2 = BatchingH2Connection(self.reactor)
        h2.site = site
        h2.factory = site
        h2.requestFactory = site.requestFactory
        # The Noise layer owns the idle timeout: Site's default (60 s) would cut
        # healthy map long-polls whose keep-alives come every ~55 s.
        h2.timeOut = None
        h2.callLater = self.reactor.callLater
        return h2

    # The ProtocolWrapper contract.
    def registerProtocol(self, protocol: NoiseProtocol) -> None:
        self.connections.add(protocol)

    def unregisterProtocol(self, protocol: NoiseProtocol) -> None:
        self.connections.discard(protocol)


class _Lifecycle(TypingProtocol):
    def data_received(self, data: bytes) -> None:
        "Bytes arrived from the network."

    def first_records(self, chunks: list[bytes]) -> None:
        "The first whole records arrived and were decrypted into these plaintext chunks."

    def failed(self, why: str) -> None:
        "A record was malformed or failed authentication."

    def timed_out(self) -> None:
        "The handshake or idle timeout ran out."

    def connection_lost(self, reason: object) -> None:
        "The transport is gone."


class NoiseProtocol(ProtocolWrapper, TimeoutMixin):
    """
    One established ts2021 connection: records in and out, HTTP/2 inside.

    ``peer`` is set once the connection is made. ``negotiatedProtocol`` tells
    HTTP code looking at this transport that it carries HTTP/2.

    What the inner protocol writes while it handles received data (HTTP/2
    acknowledgements, window updates, responses ready at once) is held and sent
    as one write when :meth:`dataReceived` returns: a login's requests used to
    cost a record and a ``send()`` for each frame. Writes at any other time
    (map deltas, responses after a database answer) go out at once.
    """

    negotiatedProtocol = b"h2"
    _log = Logger()
    transport: ITransport  # makeConnection sets it before any other callback
    callLater: Callable[..., IDelayedCall]  # the factory's reactor, not TimeoutMixin's global one

    def __init__(self, factory: NoiseFactory, result: ResponderResult, client_address: str = "") -> None:
        # NoiseFactory keeps ProtocolWrapper's factory contract (registerProtocol and
        # unregisterProtocol) without being a WrappingFactory; makeConnection sets the inner protocol.
        ProtocolWrapper.__init__(self, factory, None)  # type: ignore[arg-type]
        self._client_address = client_address
        self.callLater = factory.reactor.callLater
        self._result = result
        self._decoder = RecordDecoder(result.ciphers.receive)
        self._encoder = RecordEncoder(result.ciphers.send)
        #: Set by the machine: writes reset the idle timeout (``established`` only).
        self._writes_reset_timeout = False
        #: Set by the machine: cleared on ``closing``, after which writes are dropped.
        self._open = True
        self._held: list[bytes] | None = None  # writes made while records are delivered, sent after
        self.peer: NoisePeer | None = None
        self.refused = result.version < factory.min_version
        self._machine = _machine_factory(self)

    def makeConnection(self, transport) -> None:
        factory = self.factory
        challenge = None
        if factory.early_payload and self._result.version >= EARLY_NOISE_MIN_VERSION:
            challenge = ChallengePrivate.generate()
        self.peer = NoisePeer(
            MachinePublic(self._result.machine_key),
            self._result.version,
            transport.getPeer(),
            challenge,
            self._client_address,
        )
        self.wrappedProtocol = factory.build_inner(factory.site_for(self._result.version))
        # connectionMade (early payload) runs before the inner protocol starts.
        ProtocolWrapper.makeConnection(self, transport)
        transport.registerProducer(self.wrappedProtocol, True)

    def connectionMade(self) -> None:
        peer = self.peer
        assert peer is not None  # makeConnection sets it first
        self._log.debug(
            "noise: {machine_key} (version {version}) connected{refused}",
            machine_key=peer.machine_key,
            version=peer.version,
            refused=" and refused" if self.refused else "",
        )
        if self.refused:
            self._log.debug(
                "noise: refusing client {machine_key}: version {version} < {minimum}",
                machine_key=peer.machine_key,
                version=peer.version,
                minimum=self.factory.min_version,
            )
        self.setTimeout(self.factory.handshake_timeout)
        if peer.challenge is not None:
            self.write(encode_early_payload(peer.challenge.public().raw))

    # Transport side (called by the inner HTTP/2 server).
    def getPeer(self) -> NoiseAddress:
        assert self.peer is not None  # makeConnection sets it first
        return NoiseAddress(self.peer)

    def write(self, data: bytes) -> None:
        if not data or not self._open:
            return
        if self._writes_reset_timeout:
            self.resetTimeout()
        if self._held is not None:
            self._held.append(data)
            return
        write_through(self.transport, self._encoder.encode(data))

    def writeSequence(self, data) -> None:
        self.write(b"".join(data))

    def _send_held(self) -> None:
        held, self._held = self._held, None
        if held and self._open:
            write_through(self.transport, self._encoder.encode(b"".join(held)))

    def loseConnection(self) -> None:
        self._send_held()  # what was written before closing still goes first
        ProtocolWrapper.loseConnection(self)

    # Protocol side (called by the network).
    def dataReceived(self, data: bytes) -> None:
        self._machine.data_received(data)

    def timeoutConnection(self) -> None:
        self._machine.timed_out()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._machine.connection_lost(reason)

    # -- what the machine runs ------------------------------------------------------

    def _decode(self, data: bytes) -> list[bytes]:
        """The plaintext of the whole records in ``data``; a bad record feeds ``failed`` and gives none."""
        try:
            return self._decoder.feed(data)
        except FrameError as e:
            self._machine.failed(str(e))
            return []

    def _first_records(self, data: bytes) -> None:
        chunks = self._decode(data)
        if chunks:
            self._machine.first_records(chunks)

    def _records(self, data: bytes) -> None:
        # One machine input per read once established: this is every read of a busy connection.
        chunks = self._decode(data)
        if chunks:
            self.resetTimeout()
            self._deliver(chunks)

    def _establish(self) -> None:
        self._writes_reset_timeout = True
        self.setTimeout(self.factory.idle_timeout)

    def _deliver(self, chunks: list[bytes]) -> None:
        # What HTTP/2 writes while handling these records goes out as one record.
        self._held = []
        try:
            for chunk in chunks:
                if self.wrappedProtocol is None or not self._open:
                    return
                self.wrappedProtocol.dataReceived(chunk)
        finally:
            self._send_held()

    def _close(self, why: str) -> None:
        """Drop this one connection after a protocol error or a timeout."""
        self._log.debug(
            "noise: closing connection from {machine_key}: {why}",
            machine_key=self.peer.machine_key if self.peer else None,
            why=why,
        )
        self._open = False
        self._writes_reset_timeout = False
        self.setTimeout(None)
        abort = getattr(self.transport, "abortConnection", None)
        if abort is not None:
            abort()
        else:
            self.transport.loseConnection()

    def _cleanup(self, reason: object) -> None:
        self._writes_reset_timeout = False
        self.setTimeout(None)
        if self.wrappedProtocol is not None:
            ProtocolWrapper.connectionLost(self, reason)
        else:
            self.factory.unregisterProtocol(self)


def _build_machine():
    builder = TypeMachineBuilder(_Lifecycle, NoiseProtocol)
    awaiting = builder.state("awaiting_first_record")
    established = builder.state("established")
    closing = builder.state("closing")
    closed = builder.state("closed")

    @awaiting.upon(_Lifecycle.data_received).loop()
    def _(m: _Lifecycle, core: NoiseProtocol, data: bytes) -> None:
        core._first_records(data)

    @awaiting.upon(_Lifecycle.first_records).to(established)
    def _(m: _Lifecycle, core: NoiseProtocol, chunks: list[bytes]) -> None:
        core._establish()
        core._deliver(chunks)

    @established.upon(_Lifecycle.data_received).loop()
    def _(m: _Lifecycle, core: NoiseProtocol, data: bytes) -> None:
        core._records(data)

    for state in (awaiting, established):

        @state.upon(_Lifecycle.failed).to(closing)
        def _(m: _Lifecycle, core: NoiseProtocol, why: str) -> None:
            core._close(why)

    @awaiting.upon(_Lifecycle.timed_out).to(closing)
    def _(m: _Lifecycle, core: NoiseProtocol) -> None:
        core._close("timed out waiting for first record")

    @established.upon(_Lifecycle.timed_out).to(closing)
    def _(m: _Lifecycle, core: NoiseProtocol) -> None:
        core._close("timed out waiting for traffic")

    for state in (awaiting, established, closing):

        @state.upon(_Lifecycle.connection_lost).to(closed)
        def _(m: _Lifecycle, core: NoiseProtocol, reason: object) -> None:
            core._cleanup(reason)

    # Inputs that mean nothing in a state are ignored there.
    ignored = {
        established: (_Lifecycle.first_records,),
        closing: (_Lifecycle.data_received, _Lifecycle.first_records, _Lifecycle.failed, _Lifecycle.timed_out),
        closed: (_Lifecycle.data_received, _Lifecycle.first_records, _Lifecycle.failed, _Lifecycle.timed_out,
                 _Lifecycle.connection_lost),
    }
    for state, inputs in ignored.items():
        for inp in inputs:
            state.upon(inp).loop().returns(None)
    return builder.build()


_machine_factory = _build_machine()
