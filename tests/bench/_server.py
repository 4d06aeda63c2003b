"""An in-process server (control plane + /key + /ts2021) on a Clock, reached over iosim."""

from __future__ import annotations

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, succeed
from twisted.test.iosim import FakeTransport, connectedServerAndClient
from twisted.web import resource, server

from headscale_tw import secrets as keysecrets
from headscale_tw.config.model import Config, DNSConfig
from headscale_tw.control.plane import ControlPlane
from headscale_tw.keys import MachinePrivate
from headscale_tw.noise.protocol import noise_peer
from headscale_tw.noise.resource import Ts2021Resource
from headscale_tw.testing.db import ThreadlessReactor, open_test_database, resolve
from headscale_tw.web.control_api import BoundedRequest
from headscale_tw.web.key import KeyResource
from headscale_tw.web.plane_resources import machine_resource


class RecordingRequest(BoundedRequest):
    """A bounded request (as ``service.py`` serves inside Noise) that appends what the server saw to ``seen``."""

    seen: list = []

    def process(self):
        headers = {}
        for name, values in self.requestHeaders.getAllRawHeaders():
            headers[name.decode().lower()] = [v.decode() for v in values]
        self.content.seek(0)
        body = self.content.read()
        self.content.seek(0)
        self.seen.append(
            {
                "kind": "h2-in-noise" if self.clientproto == b"HTTP/2" else "http1",
                "method": self.method.decode(),
                "uri": self.uri.decode(),
                "headers": headers,
                "body": body,
            }
        )
        return super().process()


def _identity(request):
    peer = noise_peer(request)
    return None if peer is None else (peer.machine_key.text, peer.version)


class InProcessServer:
    """Everything ``service.py`` mounts for the control plane, without sockets or threads."""

    def __init__(self, testcase, config: Config | None = None):
        self.clock = ThreadlessReactor()
        self.config = config or Config(server_url="http://127.0.0.1:8080", dns=DNSConfig(base_domain="bench.test"))
        self.db = open_test_database(testcase, reactor=self.clock)
        self.plane = ControlPlane(self.config, self.db, self.clock)
        resolve(Deferred.fromCoroutine(self.plane.start()))
        testcase.addCleanup(self.plane.stop)
        self.seen: list[dict] = []
        key = MachinePrivate.generate()
        inner_root = resource.Resource()
        inner_root.putChild(b"machine", machine_resource(self.plane, identify=_identity))
        self.inner_site = server.Site(inner_root, reactor=self.clock)
        root = resource.Resource()
        root.putChild(b"key", KeyResource(key.public()))
        root.putChild(b"ts2021", Ts2021Resource(key, self.inner_site, self.clock,
                                                throttle=self.plane.throttles.noise_handshake))
        self.site = server.Site(root, reactor=self.clock)
        recording = type("Recording", (RecordingRequest,), {"seen": self.seen})
        for site in (self.site, self.inner_site):
            site.requestFactory = recording
        self.pumps: list = []
        user = resolve(Deferred.fromCoroutine(self.db.users.create("bench")))
        self.plane.state.users[user.id] = user
        text, prefix, secret = keysecrets.generate_key("auth")
        pepper = resolve(keysecrets.get_pepper(self.db.server_state))
        resolve(Deferred.fromCoroutine(self.db.preauthkeys.create(
            user.id, prefix, keysecrets.hash_secret(secret, pepper), now=self.plane.now(),
            reusable=True, ephemeral=False, tags=(), expiration=None)))
        self.auth_key = text

    def connect(self, protocol, host: str = "127.0.0.1") -> Deferred:
        """The connector interface of :class:`~headscale_tw.bench.simnode.SimNode`, over iosim, from ``host``."""
        address = IPv4Address("TCP", host, 40000 + len(self.pumps))
        _, _, pump = connectedServerAndClient(
            lambda: self.site.buildProtocol(address), lambda: protocol, clock=self.clock,
            serverTransportFactory=lambda server: FakeTransport(server, isServer=True, peerAddress=address),
        )
        self.pumps.append(pump)
        return succeed(protocol)

    def run(self, coroutine, rounds: int = 200):
        """Drive ``coroutine`` by pumping every connection until it finishes (bounded)."""
        d = Deferred.fromCoroutine(coroutine)
        result = []
        d.addBoth(result.append)
        for _ in range(rounds):
            if result:
                break
            for pump in list(self.pumps):
                pump.flush()
            # Let batched deltas (tuning.batch_change_delay) go out, as time would.
            self.clock.advance(self.plane.notifier.batch_delay)
        if not result:
            raise AssertionError(f"not finished after {rounds} rounds")
        if hasattr(result[0], "raiseException"):
            result[0].raiseException()
        return result[0]

    def settle(self, rounds: int = 20) -> None:
        for _ in range(rounds):
            for pump in list(self.pumps):
                pump.flush()
            # Let batched deltas (tuning.batch_change_delay) go out, as time would.
            self.clock.advance(self.plane.notifier.batch_delay)
