# -*- test-case-name: tests.control.test_limits -*-
"""
Limits on node input (``headscale_tw.control.limits``), enforced at the edge.

* every field limit answers 400 naming the field and the limit, and a value
  at the limit is accepted;
* a request body over the Noise cap answers 413 and its bytes are not kept
  (checked over a real Noise connection and chunk by chunk);
* a pending registration keeps a bounded number of bytes, and a held request
  none of its body.
"""

import json

import attrs
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.test.iosim import connectedServerAndClient
from twisted.trial import unittest
from twisted.web import resource
from twisted.web.server import Site
from twisted.web.test.requesthelper import DummyChannel

from headscale_tw.control import limits
from headscale_tw.errors import InvalidInput
from headscale_tw.keys import MachinePrivate
from headscale_tw.noise.protocol import noise_peer
from headscale_tw.noise.resource import Ts2021Resource
from headscale_tw.testing.noise_client import NoiseClient
from headscale_tw.web.control_api import BoundedRequest, MachineResource
from tests.control._harness import Harness, key
from tests.control._workcount import routes
from tests.control.test_control_api import _render, _Request


def _register_body(**hostinfo):
    info = {"Hostname": "node", "OS": "linux"}
    info.update(hostinfo)
    return {
        "Version": 133,
        "NodeKey": key("nodekey"),
        "Auth": {"AuthKey": ""},
        "Expiry": "0001-01-01T00:00:00Z",
        "Hostinfo": info,
    }


def retained_bytes(value, seen=None) -> int:
    """Bytes of every string reachable from ``value`` through attrs fields, dicts, lists and tuples."""
    seen = set() if seen is None else seen
    if id(value) in seen:
        return 0
    seen.add(id(value))
    if isinstance(value, (str, bytes)):
        return len(value)
    if isinstance(value, dict):
        return sum(retained_bytes(k, seen) + retained_bytes(v, seen) for k, v in value.items())
    if isinstance(value, (list, tuple, set, frozenset)):
        return sum(retained_bytes(v, seen) for v in value)
    if attrs.has(type(value)):
        return sum(retained_bytes(getattr(value, f.name), seen) for f in attrs.fields(type(value)))
    return 0


class FieldLimitTests(unittest.TestCase):
    """Each field a node sends has a limit; past it the answer is 400 naming the field and the limit."""

    def setUp(self):
        self.h = Harness(self)
        self.root = MachineResource(self.h.registrar, self.h.poll, self.h.notifier, identify=lambda r: r.identity)
        self.node, _ = self.h.register("node")
        self.mkey = self.node.machine_key

    def _post(self, path, body, mkey=None):
        raw = json.dumps(body).encode()
        return _render(self.root, _Request(path, raw, (mkey or self.mkey, 133)))

    def _map(self, **extra):
        body = self.h.map_request(self.h.state.get(self.node.id), OmitPeers=True)
        body.update(extra)
        return self._post(b"/machine/map", body)

    def _hostinfo(self, **fields):
        info = dict(self.h.state.get(self.node.id).hostinfo)
        info.update(fields)
        return info

    def assertRefused(self, request, field, limit, case=""):
        body = request.body().decode()
        self.assertEqual(request.responseCode, 400, f"{case}: {body}")
        self.assertIn(field, body, case)
        self.assertIn(str(limit), body, case)

    def test_hostinfo_fields(self):
        """Hostname, OS strings, routes, tags and services past their limits are refused by name."""
        cases = [
            ("Hostname", "h" * (limits.HOSTNAME_MAX_LENGTH + 1), limits.HOSTNAME_MAX_LENGTH),
            ("OS", "o" * (limits.HOSTINFO_STRING_MAX_LENGTH + 1), limits.HOSTINFO_STRING_MAX_LENGTH),
            ("OSVersion", "v" * (limits.HOSTINFO_STRING_MAX_LENGTH + 1), limits.HOSTINFO_STRING_MAX_LENGTH),
            ("IPNVersion", "i" * (limits.HOSTINFO_STRING_MAX_LENGTH + 1), limits.HOSTINFO_STRING_MAX_LENGTH),
            ("RoutableIPs", routes(limits.ROUTES_MAX + 1), limits.ROUTES_MAX),
            ("RoutableIPs", ["1" * (limits.PREFIX_MAX_LENGTH + 1)], limits.PREFIX_MAX_LENGTH),
            ("RequestTags", [f"tag:t{i}" for i in range(limits.REQUEST_TAGS_MAX + 1)], limits.REQUEST_TAGS_MAX),
            ("RequestTags", ["tag:" + "t" * limits.TAG_MAX_LENGTH], limits.TAG_MAX_LENGTH),
            ("Services", [{"Proto": "tcp", "Port": i} for i in range(limits.SERVICES_MAX + 1)],
             limits.SERVICES_MAX),
        ]
        for name, value, limit in cases:
            for path in (b"/machine/map", b"/machine/register"):
                if path == b"/machine/map":
                    request = self._map(Hostinfo=self._hostinfo(**{name: value}))
                else:
                    request = self._post(path, _register_body(**{name: value}), mkey=key("mkey"))
                self.assertRefused(request, f"Hostinfo.{name}", limit, f"{name} on {path.decode()}")
        self.assertEqual(self.h.state.get(self.node.id).hostinfo, self.node.hostinfo)

    def test_hostinfo_size(self):
        """A Hostinfo over its size limit is refused, whatever field makes it large."""
        request = self._map(Hostinfo=self._hostinfo(Extra="x" * limits.HOSTINFO_MAX_BYTES))
        self.assertRefused(request, "Hostinfo", limits.HOSTINFO_MAX_BYTES)

    def test_endpoints(self):
        """Too many endpoints, or one too long, are refused by name."""
        many = [f"192.0.2.1:{i}" for i in range(limits.ENDPOINTS_MAX + 1)]
        self.assertRefused(self._map(Endpoints=many), "Endpoints", limits.ENDPOINTS_MAX)
        self.assertRefused(self._map(Endpoints=["e" * (limits.ENDPOINT_MAX_LENGTH + 1)]),
                           "Endpoints", limits.ENDPOINT_MAX_LENGTH)

    def test_keys_and_register_strings(self):
        """Over-long keys, auth keys and follow-up URLs are refused by name."""
        long_key = "discokey:" + "0" * limits.KEY_MAX_LENGTH
        self.assertRefused(self._map(DiscoKey=long_key), "DiscoKey", limits.KEY_MAX_LENGTH)
        body = _register_body()
        body["Auth"]["AuthKey"] = "k" * (limits.AUTH_KEY_MAX_LENGTH + 1)
        self.assertRefused(self._post(b"/machine/register", body, key("mkey")), "Auth.AuthKey",
                           limits.AUTH_KEY_MAX_LENGTH)
        body = _register_body()
        body["Followup"] = "https://x/" + "f" * limits.FOLLOWUP_MAX_LENGTH
        self.assertRefused(self._post(b"/machine/register", body, key("mkey")), "Followup",
                           limits.FOLLOWUP_MAX_LENGTH)

    def test_at_the_limit(self):
        """Values exactly at their limits are accepted and stored."""
        info = self._hostinfo(Hostname="h" * limits.HOSTNAME_MAX_LENGTH, RoutableIPs=routes(limits.ROUTES_MAX))
        endpoints = [f"192.0.2.1:{i}" for i in range(limits.ENDPOINTS_MAX)]
        request = self._map(Hostinfo=info, Endpoints=endpoints)
        self.assertEqual(request.responseCode, 200, request.body())
        node = self.h.state.get(self.node.id)
        self.assertEqual(len(node.hostinfo["RoutableIPs"]), limits.ROUTES_MAX)
        self.assertEqual(len(node.endpoints), limits.ENDPOINTS_MAX)
        self.assertLessEqual(len(node.given_name), 63)

    def test_deep_json(self):
        """JSON nested deeper than the parser allows is a 400, not a RecursionError."""
        raw = b"[" * 100000 + b"]" * 100000
        request = _render(self.root, _Request(b"/machine/map", raw, (self.mkey, 133)))
        self.assertEqual(request.responseCode, 400)
        self.assertIn(b"nested too deeply", request.body())

    def test_approval_count(self):
        """Approving more routes than the limit at once is refused by name (NodeAdmin, the admin API's path)."""
        d = Deferred.fromCoroutine(self.h.admin.approve_routes(self.node.id, routes(limits.ROUTES_MAX + 1)))
        error = self.failureResultOf(d, InvalidInput)
        self.assertIn(str(limits.ROUTES_MAX), str(error.value))
        self.assertEqual(self.h.state.get(self.node.id).approved_routes, ())


class _Recording(BoundedRequest):
    """A bounded request that remembers every instance and the most body bytes it ever held."""

    made: list = []
    most_kept = 0

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.made.append(self)

    def handleContentChunk(self, data):
        super().handleContentChunk(data)
        self.most_kept = max(self.most_kept, self.content.tell())


def _identity(request):
    peer = noise_peer(request)
    return None if peer is None else (peer.machine_key.text, peer.version)


class NoiseBodyLimitTests(unittest.TestCase):
    """Over a real Noise connection, bodies past the cap get 413 and are not kept."""

    def setUp(self):
        self.h = Harness(self)
        self.clock = Clock()
        _Recording.made = []
        inner_root = resource.Resource()
        inner_root.putChild(b"machine", MachineResource(self.h.registrar, self.h.poll, self.h.notifier,
                                                        identify=_identity))
        inner = Site(inner_root, requestFactory=_Recording, reactor=self.clock)
        self.key = MachinePrivate.generate()
        root = resource.Resource()
        root.putChild(b"ts2021", Ts2021Resource(self.key, inner, self.clock))
        self.site = Site(root, reactor=self.clock)

    def _client(self):
        client = NoiseClient(self.key.public(), version=133)
        _, _, pump = connectedServerAndClient(
            lambda: self.site.buildProtocol(IPv4Address("TCP", "192.0.2.7", 41641)), lambda: client, clock=self.clock
        )
        pump.flush()
        self.assertIs(self.successResultOf(client.ready), client)
        return client, pump

    def _post(self, client, pump, body: bytes):
        d = client.request(b"POST", b"/machine/register", body)
        for _ in range(50):
            pump.flush()
            if d.called:
                break
        return self.successResultOf(d)

    def test_declared_too_large(self):
        """A register body declared over the cap is answered 413 naming the limit; nothing of it is kept."""
        client, pump = self._client()
        body = json.dumps(_register_body(OS="x" * limits.NOISE_BODY_MAX_BYTES)).encode()
        response = self._post(client, pump, body)
        self.assertEqual(response.status, 413)
        self.assertIn(str(limits.NOISE_BODY_MAX_BYTES).encode(), response.body)
        request = _Recording.made[-1]
        self.assertEqual(request.body_received, len(body))
        self.assertEqual(request.most_kept, 0)
        self.assertEqual(self.h.run(self.h.db.auth_requests.count_pending()), 0)

    def test_at_cap_and_after(self):
        """A body of exactly the cap is served, and the connection that sent an oversized body still is."""
        client, pump = self._client()
        self.assertEqual(self._post(client, pump, b" " * (limits.NOISE_BODY_MAX_BYTES + 1)).status, 413)
        raw = json.dumps(_register_body()).encode()
        padded = raw + b" " * (limits.NOISE_BODY_MAX_BYTES - len(raw))
        response = self._post(client, pump, padded)
        self.assertEqual(response.status, 200, response.body)
        self.assertIn("AuthURL", json.loads(response.body))

    def test_chunks_past_cap_are_dropped(self):
        """A body of undeclared length is dropped when it passes the cap; later chunks are only counted."""
        request = BoundedRequest(DummyChannel(), False)
        request.gotLength(None)
        chunk = b"x" * 65536
        for _ in range(limits.NOISE_BODY_MAX_BYTES // len(chunk)):
            request.handleContentChunk(chunk)
        self.assertFalse(request.body_too_large)
        self.assertEqual(request.content.tell(), limits.NOISE_BODY_MAX_BYTES)
        for _ in range(20):
            request.handleContentChunk(chunk)
            self.assertTrue(request.body_too_large)
            self.assertEqual(len(request.content.getvalue()), 0)
        self.assertEqual(request.body_received, limits.NOISE_BODY_MAX_BYTES + 20 * len(chunk))


class PendingRegistrationSizeTests(unittest.TestCase):
    """Register requests without a key keep a bounded number of bytes each."""

    def setUp(self):
        self.h = Harness(self)
        self.root = MachineResource(self.h.registrar, self.h.poll, self.h.notifier, identify=lambda r: r.identity)

    def _post(self, body):
        raw = json.dumps(body).encode()
        return _render(self.root, _Request(b"/machine/register", raw, (key("mkey"), 133)))

    def test_largest_accepted_hostinfo(self):
        """A pending registration made with the largest Hostinfo accepted keeps only its small details."""
        from headscale_tw.control.registration import MAX_DETAILS_BYTES

        body = _register_body()
        pad = limits.HOSTINFO_MAX_BYTES - limits.json_size(body["Hostinfo"]) - len(',"Extra":""')
        body["Hostinfo"]["Extra"] = "x" * pad
        self.assertEqual(limits.json_size(body["Hostinfo"]), limits.HOSTINFO_MAX_BYTES)
        request = self._post(body)
        self.assertEqual(request.responseCode, 200, request.body())
        auth_id = json.loads(request.body())["AuthURL"].rpartition("/")[2]
        row = self.h.run(self.h.db.auth_requests.get(auth_id))
        self.assertLessEqual(retained_bytes(row), MAX_DETAILS_BYTES + 1024)

    def test_oversized_hostinfo_not_pending(self):
        """Three hundred requests each with a Hostinfo over the limit leave no pending registration."""
        body = _register_body(OS="linux", Extra="x" * (limits.HOSTINFO_MAX_BYTES + 1))
        for _ in range(300):
            request = self._post(body)
            self.assertEqual(request.responseCode, 400)
        self.assertEqual(self.h.run(self.h.db.auth_requests.count_pending()), 0)

    def test_held_followup_keeps_no_body(self):
        """A Followup request held until an admin acts keeps no copy of its body."""
        mkey = key("mkey")
        body = _register_body(Extra="x" * 30000)
        first = _render(self.root, _Request(b"/machine/register", json.dumps(body).encode(), (mkey, 133)))
        body["Followup"] = json.loads(first.body())["AuthURL"]
        held = _render(self.root, _Request(b"/machine/register", json.dumps(body).encode(), (mkey, 133)))
        self.assertFalse(held.finished)
        self.assertEqual(held.content.getvalue(), b"")
        self.h.registrar.stop()
