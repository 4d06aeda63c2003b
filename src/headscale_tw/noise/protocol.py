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

Lifecycle: *awaiting the first record* (handshake timeout, default 30 s:
the client sends its HTTP/2 preface immediately) -> *established* (idle
timeout, default 300 s, reset by every record in either direction; map
keep-alives keep healthy long-polls alive) -> *closed*. A bad record, a
timeout or the peer leaving closes this one connection; timers are
cancelled in ``connectionLost``.

Clients whose protocol version is below ``min_version`` still complete the
handshake, but their HTTP/2 requests are answered by a refusal site: the
register call gets a ``RegisterResponse`` whose ``Error`` the official client
shows as ``backend error: <text>`` (``tailscale up`` exits instead of
retrying silently). See docs/noise.md.
"""

from __future__ import annotations

import json

import attrs
from twisted.internet.interfaces import IAddress
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper, TimeoutMixin
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

    def __init__(self, factory: NoiseFactory, result: ResponderResult, client_address: str = "") -> None:
        ProtocolWrapper.__init__(self, factory, None)
        self._client_address = client_address
        self.callLater = factory.reactor.callLater
        self._result = result
        self._decoder = RecordDecoder(result.ciphers.receive)
        self._encoder = RecordEncoder(result.ciphers.send)
        self._established = False
        self._failed = False
        self._held: list[bytes] | None = None  # writes made during dataReceived, sent when it returns
        self.peer: NoisePeer | None = None
        self.refused = result.version < factory.min_version

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
        self._log.debug(
            "noise: {machine_key} (version {version}) connected{refused}",
            machine_key=self.peer.machine_key,
            version=self.peer.version,
            refused=" and refused" if self.refused else "",
        )
        if self.refused:
            self._log.debug(
                "noise: refusing client {machine_key}: version {version} < {minimum}",
                machine_key=self.peer.machine_key,
                version=self.peer.version,
                minimum=self.factory.min_version,
            )
        self.setTimeout(self.factory.handshake_timeout)
        if self.peer.challenge is not None:
            self.write(encode_early_payload(self.peer.challenge.public().raw))

    # Transport side (called by the inner HTTP/2 server).
    def getPeer(self) -> NoiseAddress:
        return NoiseAddress(self.peer)

    def write(self, data: bytes) -> None:
        if not data or self._failed:
            return
        if self._established:
            # Our own writes must not extend the wait for the client's first record.
            self.resetTimeout()
        if self._held is not None:
            self._held.append(data)
            return
        write_through(self.transport, self._encoder.encode(data))

    def writeSequence(self, data) -> None:
        self.write(b"".join(data))

    def _send_held(self) -> None:
        held, self._held = self._held, None
        if held and not self._failed:
            write_through(self.transport, self._encoder.encode(b"".join(held)))

    def loseConnection(self) -> None:
        self._send_held()  # what was written before closing still goes first
        ProtocolWrapper.loseConnection(self)

    # Protocol side (called by the network).
    def dataReceived(self, data: bytes) -> None:
        if self._failed:
            return
        try:
            chunks = self._decoder.feed(data)
        except FrameError as e:
            self._fail(str(e))
            return
        if not chunks:
            return
        if not self._established:
            self._established = True
            self.setTimeout(self.factory.idle_timeout)
        else:
            self.resetTimeout()
        self._held = []
        try:
            for chunk in chunks:
                if self.wrappedProtocol is None or self._failed:
                    return
                self.wrappedProtocol.dataReceived(chunk)
        finally:
            self._send_held()

    def _fail(self, why: str) -> None:
        """Drop this one connection after a protocol error."""
        self._log.debug(
            "noise: closing connection from {machine_key}: {why}",
            machine_key=self.peer.machine_key if self.peer else None,
            why=why,
        )
        self._failed = True
        self.setTimeout(None)
        abort = getattr(self.transport, "abortConnection", None)
        if abort is not None:
            abort()
        else:
            self.transport.loseConnection()

    def timeoutConnection(self) -> None:
        phase = "first record" if not self._established else "traffic"
        self._fail(f"timed out waiting for {phase}")

    def connectionLost(self, reason) -> None:
        self.setTimeout(None)
        if self.wrappedProtocol is not None:
            ProtocolWrapper.connectionLost(self, reason)
        else:
            self.factory.unregisterProtocol(self)
