"""Tests for headscale_tw.web.control_api and headscale_tw.web.register_page."""

import io
import json
import os

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.python.failure import Failure
from twisted.trial import unittest
from twisted.web.resource import getChildForRequest
from twisted.web.server import NOT_DONE_YET
from twisted.web.test.requesthelper import DummyRequest

from headscale_tw.testing.netmap import NetmapApplier
from headscale_tw.turns import TurnBudget
from headscale_tw.web.control_api import MachineResource, peer_identity
from headscale_tw.web.plane_resources import register_page
from headscale_tw.web.register_page import RegisterPage
from tests.control._harness import Harness, key

DATA = os.path.join(os.path.dirname(__file__), "data")


class _Request(DummyRequest):
    def __init__(self, path, body=b"", identity=None):
        super().__init__(path.lstrip(b"/").split(b"/")[1:])
        self.method = b"POST"
        self.uri = path
        self.content = io.BytesIO(body)
        self.identity = identity

    def body(self):
        return b"".join(self.written)


def _render(resource, request):
    child = getChildForRequest(resource, request)
    result = child.render(request)
    if result is not NOT_DONE_YET:
        request.write(result)
        request.finish()
    return request


class MachineResourceTests(unittest.TestCase):
    """The /machine resources speak the protocol over any HTTP channel."""

    def setUp(self):
        self.h = Harness(self)
        self.root = MachineResource(self.h.registrar, self.h.poll, self.h.notifier, identify=lambda r: r.identity)
        self.mkey = key("mkey")

    def _post(self, path, body, mkey=None):
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        return _render(self.root, _Request(path, raw, (mkey or self.mkey, 133)))

    def _register_capture(self):
        with open(os.path.join(DATA, "register-request.json")) as f:
            body = json.load(f)["body"]
        self.h.make_key("cap")
        body["Auth"]["AuthKey"] = self.h.keys["cap"]
        return body

    def test_register_captured_request(self):
        """The captured 1.96.4 register request registers the node."""
        request = self._post(b"/machine/register", self._register_capture())
        self.assertEqual(request.responseCode, 200)
        response = json.loads(request.body())
        self.assertTrue(response["MachineAuthorized"], response)
        self.assertEqual(self.h.state.by_machine_key(self.mkey).hostname, "node1")

    def test_stream_and_lite(self):
        """A captured streaming map request streams; a captured lite one answers empty 200."""
        body = self._register_capture()
        self._post(b"/machine/register", body)
        with open(os.path.join(DATA, "map-request-stream.json")) as f:
            stream_body = json.load(f)["body"]
        with open(os.path.join(DATA, "map-request-lite-endpoints.json")) as f:
            lite_body = json.load(f)["body"]
        stream = self._post(b"/machine/map", stream_body)
        self.assertFalse(stream.finished)
        first = NetmapApplier()
        first.feed(stream.body())
        self.assertEqual(first.node["Name"], "node1.tail.example.")
        lite = self._post(b"/machine/map", lite_body)
        self.assertEqual((lite.finished, lite.body()), (1, b""))
        self.assertEqual(self.h.state.by_machine_key(self.mkey).endpoints, tuple(lite_body["Endpoints"]))
        self.assertFalse(stream.finished)
        self.h.clock.advance(55)
        applier = NetmapApplier()
        applier.feed(stream.body())
        self.assertEqual((len(applier.messages), applier.keepalives), (2, 1))
        stream.processingFailed(Failure(ConnectionDone()))
        self.assertFalse(self.h.notifier.is_connected(self.h.state.by_machine_key(self.mkey).id))

    def test_stream_waits_for_its_turn(self):
        """With a stream admission budget, the full map is written in a later turn, a budget per turn;
        a stream whose client left while it waited is never opened."""
        admission = TurnBudget(self.h.clock, per_turn=1, seconds=0)
        root = MachineResource(self.h.registrar, self.h.poll, self.h.notifier, identify=lambda r: r.identity,
                               stream_admission=admission)
        streams = []
        for name in ("a", "b", "c"):
            mkey = key("mkey")
            node, _ = self.h.register(name, machine_key=mkey)
            request = _Request(b"/machine/map", json.dumps(self.h.map_request(node, Stream=True)).encode(), (mkey, 133))
            streams.append((node, _render(root, request)))
        self.assertEqual([s.body() for _, s in streams], [b"", b"", b""])
        self.assertEqual(admission.waiting, 3)
        streams[1][1].processingFailed(Failure(ConnectionDone()))  # b leaves while queued
        self.h.clock.advance(0)  # Clock runs every due turn; each turn admitted one
        self.assertNotEqual(streams[0][1].body(), b"")
        self.assertNotEqual(streams[2][1].body(), b"")
        self.assertEqual((admission.admitted, admission.turns, admission.waiting), (2, 2, 0))
        self.assertEqual([self.h.notifier.is_connected(n.id) for n, _ in streams], [True, False, True])

    def test_map_wrong_machine(self):
        """A map request whose NodeKey belongs to another machine gets 401."""
        node, _ = self.h.register("a")
        request = self._post(b"/machine/map", self.h.map_request(node, Stream=True), mkey=key("mkey"))
        self.assertEqual(request.responseCode, 401)

    def test_map_unknown_node(self):
        """A map request for an unregistered node key gets 404."""
        body = {"Version": 133, "NodeKey": key("nodekey"), "Stream": True}
        self.assertEqual(self._post(b"/machine/map", body).responseCode, 404)

    def test_bad_bodies(self):
        """Malformed JSON or fields get 400 with a message naming the problem."""
        request = self._post(b"/machine/register", b"{nope")
        self.assertEqual(request.responseCode, 400)
        self.assertIn(b"not JSON", request.body())
        request = self._post(b"/machine/map", {"Version": 133, "NodeKey": "bad"})
        self.assertEqual(request.responseCode, 400)
        self.assertIn(b"NodeKey", request.body())

    def test_not_noise(self):
        """Without a Noise peer identity the request is refused."""
        request = _render(self.root, _Request(b"/machine/register", b"{}", None))
        self.assertEqual(request.responseCode, 401)

    def test_set_dns_unavailable_and_unknown(self):
        """Without a DNS provider set-dns is 403 saying certificates are unavailable; other paths are 404."""
        request = self._post(b"/machine/set-dns", {"Version": 133, "NodeKey": key("nodekey"), "Type": "TXT",
                                                   "Name": "_acme-challenge.a.example", "Value": "v"})
        self.assertEqual(request.responseCode, 403)
        self.assertIn(b"certificates are not available", request.body())
        self.assertEqual(self._post(b"/machine/id-token", {}).responseCode, 404)

    def test_held_followup_cancelled(self):
        """A held Followup whose client goes away leaves no timer and writes nothing."""
        nkey = key("nodekey")
        base = {"Version": 133, "NodeKey": nkey, "Hostinfo": {"Hostname": "i"}}
        url = json.loads(self._post(b"/machine/register", base).body())["AuthURL"]
        held = self._post(b"/machine/register", dict(base, Followup=url))
        self.assertEqual(held.written, [])
        held.processingFailed(Failure(ConnectionDone()))
        self.assertEqual(self.h.clock.getDelayedCalls(), [])
        self.assertEqual(held.written, [])

    def test_interactive_source_is_the_client_address(self):
        """An interactive registration is counted against the address the request came from."""
        base = {"Version": 133, "NodeKey": key("nodekey"), "Hostinfo": {"Hostname": "i"}}
        request = _Request(b"/machine/register", json.dumps(base).encode(), (self.mkey, 133))
        request.client = IPv4Address("TCP", "203.0.113.8", 41641)
        url = json.loads(_render(self.root, request).body())["AuthURL"]
        row = self.h.run(self.h.db.auth_requests.get(url.rpartition("/")[2]))
        self.assertEqual(row.source, "203.0.113.8")

    def test_peer_identity_lookup(self):
        """peer_identity finds noise_peer_identity on the HTTP/2 connection's transport."""

        class Transport:
            noise_peer_identity = ("mkey:" + "a" * 64, 133)

        class Conn:
            transport = Transport()

        class Stream:
            _conn = Conn()

        class Req:
            channel = Stream()

        self.assertEqual(peer_identity(Req()), Transport.noise_peer_identity)
        self.assertIsNone(peer_identity(DummyRequest([])))


class RegisterPageTests(unittest.TestCase):
    """GET /register/<id> shows the admin command."""

    def test_page(self):
        """The page shows the exact CLI command with the id."""
        request = DummyRequest([b"abc_DEF-1"])
        body = RegisterPage().render_GET(request)
        self.assertIn(b"headscale auth register --auth-id abc_DEF-1 --user USERNAME", body)

    def test_unknown_or_bad(self):
        """Bad or unknown ids get 404 and are never echoed."""
        request = DummyRequest([b"<script>"])
        body = RegisterPage().render_GET(request)
        self.assertEqual(request.responseCode, 404)
        self.assertNotIn(b"<script>", body)
        request = DummyRequest([b"abc"])
        RegisterPage(exists=lambda auth_id: False).render_GET(request)
        self.assertEqual(request.responseCode, 404)

    def test_looked_up_later(self):
        """A lookup that answers later (the database) completes the page then."""
        from twisted.internet.defer import Deferred

        found = Deferred()
        request = DummyRequest([b"abc"])
        self.assertEqual(RegisterPage(exists=lambda auth_id: found).render_GET(request), NOT_DONE_YET)
        found.callback(True)
        self.assertIn(b"--auth-id abc", b"".join(request.written))
        self.assertEqual(request.finished, 1)

    def test_lookup_failure(self):
        """A failed lookup is a 503 asking to try again, and is logged."""
        from twisted.internet.defer import fail

        request = DummyRequest([b"abc"])
        body = RegisterPage(exists=lambda auth_id: fail(RuntimeError("database down"))).render_GET(request)
        self.assertEqual((request.responseCode, body), (503, b"the registration could not be looked up; try again\n"))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_plane_page_reads_the_database(self):
        """The control plane's page finds a pending registration in the database, and 404s it once rejected."""
        from tests.nodesapi._harness import PlaneHarness

        h = PlaneHarness(self)
        _, auth_id = h.start_interactive("laptop")
        page = register_page(h.plane.registrar)
        request = DummyRequest([auth_id.encode()])
        self.assertIn(b"headscale auth register", page.render_GET(request))
        h.run(h.plane.registrar.reject(auth_id))
        request = DummyRequest([auth_id.encode()])
        page.render_GET(request)
        self.assertEqual(request.responseCode, 404)
