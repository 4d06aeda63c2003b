# -*- test-case-name: tests.web.test_admin_early -*-
"""
Tests for :mod:`headscale_tw.web.admin.early`: the public site refuses an oversized or
unauthenticated request body from the request head, before reading the body.

The site is the service's own :class:`~headscale_tw.service.ControlSite` with the admin API
mounted, driven byte by byte through a ``StringTransport``; how much of a body was consumed is
read from the request's ``body_bytes`` and ``content``.
"""

from __future__ import annotations

import json

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial import unittest
from twisted.web.resource import Resource
from twisted.web.test.requesthelper import DummyChannel

from headscale_tw.counters import HTTPCounters
from headscale_tw.service import ControlSite
from headscale_tw.testing.keys import with_wrong_secret
from headscale_tw.web.access_log import access_logs
from headscale_tw.web.admin.early import GuardedRequest
from headscale_tw.web.admin.validate import MAX_BODY_BYTES
from headscale_tw.web.admin_api import mount
from tests.cli._harness import AdminHarness
from tests.web.test_admin_api import make_api_key

__all__ = ["EarlyRefusalTests", "StreamRefusalTests"]


class _RecordingRequest(GuardedRequest):
    """A ``GuardedRequest`` that remembers every instance, so a test can read its counters."""

    made: list[_RecordingRequest] = []

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.made.append(self)


class EarlyRefusalTests(unittest.TestCase):
    """Oversized and unauthenticated bodies are refused before they are read."""

    def setUp(self):
        self.h = AdminHarness(self, trust_all=False)
        root = Resource()
        mount(root, self.h.api)
        _RecordingRequest.made = []
        self.site = ControlSite(root, access_logs(HTTPCounters(), Clock().seconds)["control"],
                                requestFactory=_RecordingRequest)
        self.transport = StringTransport()
        self.channel = self.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        self.channel.makeConnection(self.transport)
        self.addCleanup(self.channel.connectionLost, None)

    def head(self, method="POST", path="/api/v1/user", headers=()):
        """A request head (request line and headers, then the blank line)."""
        lines = [f"{method} {path} HTTP/1.1", "Host: headscale.test", *headers]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")

    def response(self):
        """``(status, JSON body)`` of what the server wrote."""
        raw = self.transport.value()
        head, _, body = raw.partition(b"\r\n\r\n")
        if b"transfer-encoding: chunked" in head.lower():
            chunks = []
            while True:
                size, _, rest = body.partition(b"\r\n")
                if int(size, 16) == 0:
                    break
                chunks.append(rest[:int(size, 16)])
                body = rest[int(size, 16) + 2:]
            body = b"".join(chunks)
        return int(head.split(b" ", 2)[1]), json.loads(body)

    def test_content_length_over_limit(self):
        """A 500 MiB Content-Length is a 413 at once: no body byte is kept and the connection closes."""
        self.channel.dataReceived(self.head(headers=["Content-Length: 524288000"]) + b"x" * 65536)
        status, body = self.response()
        self.assertEqual((status, body["code"]), (413, 3))
        self.assertIn(str(MAX_BODY_BYTES), body["message"])
        self.assertTrue(self.transport.disconnecting)
        request = _RecordingRequest.made[0]
        self.assertEqual((request.body_bytes, request.content.tell()), (0, 0))

    def test_no_authorization(self):
        """A body over 4 KiB without an Authorization header is a 401 before any body byte is kept."""
        self.channel.dataReceived(self.head(headers=["Content-Length: 5000"]) + b"{" * 5000)
        status, body = self.response()
        self.assertEqual((status, body["code"]), (401, 16))
        self.assertIn("Authorization", body["message"])
        self.assertIn(b'WWW-Authenticate: Bearer realm="headscale"', self.transport.value())
        self.assertTrue(self.transport.disconnecting)
        self.assertEqual(_RecordingRequest.made[0].body_bytes, 0)

    def test_not_an_api_key(self):
        """A body over 4 KiB with a bearer token that is not an API key (a pre-auth key) is a 401 before it is read."""
        token = "hskey-auth-abcdefghijkl-" + "A" * 43
        self.channel.dataReceived(self.head(headers=["Content-Length: 5000", f"Authorization: Bearer {token}"]))
        self.assertEqual(self.response()[0], 401)
        self.assertEqual(_RecordingRequest.made[0].body_bytes, 0)

    def test_small_body_without_key_reaches_the_resource(self):
        """A body of at most 4 KiB without a key is read (``POST /verify`` needs none); the API itself says 401."""
        self.channel.dataReceived(self.head(headers=["Content-Length: 100"]) + b"{" * 100)
        status, body = self.response()
        self.assertEqual((status, body["code"]), (401, 16))
        self.assertEqual(_RecordingRequest.made[0].body_bytes, 100)

    def test_unauthenticated_chunked(self):
        """A chunked body without an API key is refused from the head too."""
        self.channel.dataReceived(self.head(headers=["Transfer-Encoding: chunked"]) + b"10\r\n" + b"y" * 16)
        self.assertEqual(self.response()[0], 401)
        self.assertEqual(_RecordingRequest.made[0].body_bytes, 0)

    def test_expect_continue_not_answered(self):
        """A refused request asking ``Expect: 100-continue`` is not told to continue."""
        self.channel.dataReceived(self.head(headers=["Content-Length: 524288000", "Expect: 100-continue"]))
        self.assertNotIn(b"100 Continue", self.transport.value())
        self.assertEqual(self.response()[0], 413)

    def test_chunked_over_limit(self):
        """A chunked body is counted while it arrives: past the limit it is a 413 and nothing more is kept."""
        key = make_api_key(self.h)
        self.channel.dataReceived(self.head(headers=["Transfer-Encoding: chunked", f"Authorization: Bearer {key}"]))
        chunk = b"z" * 65536
        sent = 0
        while not self.transport.disconnecting and sent < 4 * MAX_BODY_BYTES:
            self.channel.dataReceived(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
            sent += len(chunk)
        status, body = self.response()
        self.assertEqual(status, 413)
        request = _RecordingRequest.made[0]
        self.assertLessEqual(request.body_bytes, MAX_BODY_BYTES)
        self.assertEqual(request.content.tell(), request.body_bytes)
        self.assertEqual(sent, MAX_BODY_BYTES + len(chunk))  # refused in the chunk that crossed the limit

    def test_authorized_body_served(self):
        """A body with an API key within the limit reaches the API, which checks the key and answers."""
        key = make_api_key(self.h)
        data = json.dumps({"name": "alice"}).encode()
        self.channel.dataReceived(self.head(headers=[f"Content-Length: {len(data)}", f"Authorization: Bearer {key}",
                                                     "Content-Type: application/json"]) + data)
        status, body = self.response()
        self.assertEqual((status, body["user"]["name"]), (200, "alice"))
        self.assertFalse(self.transport.disconnecting)
        self.assertEqual(_RecordingRequest.made[0].body_bytes, len(data))

    def test_wrong_key_still_checked_by_the_api(self):
        """A well-formed but unknown API key passes the head check and is refused by the API (401)."""
        key = make_api_key(self.h)
        forged = with_wrong_secret(key)
        self.channel.dataReceived(self.head(headers=["Content-Length: 2", f"Authorization: Bearer {forged}"]) + b"{}")
        status, body = self.response()
        self.assertEqual((status, body["message"]), (401, "invalid API key"))

    def test_no_body_unaffected(self):
        """A request without a body is answered by its resource as before (here the API's own 401)."""
        self.channel.dataReceived(self.head(method="GET", path="/api/v1/health"))
        status, body = self.response()
        self.assertEqual((status, body["code"]), (401, 16))
        self.assertFalse(self.transport.disconnecting)


class StreamRefusalTests(unittest.TestCase):
    """On a channel that is not HTTP/1.1 (an HTTP/2 stream) a refused body is dropped and the stream answered."""

    def request(self, headers):
        """A ``GuardedRequest`` on a non-HTTP/1.1 channel with these request headers."""
        request = GuardedRequest(DummyChannel())
        for name, value in headers.items():
            request.requestHeaders.addRawHeader(name, value)
        return request

    def test_unauthenticated_body_dropped(self):
        """Without an API key the first chunk refuses the body: nothing is kept and the answer is a 401."""
        request = self.request({})
        request.gotLength(5000)
        for _ in range(100):
            request.handleContentChunk(b"x" * 10)
        self.assertEqual((request.body_bytes, request.content.tell()), (0, 0))
        request.requestReceived(b"POST", b"/api/v1/user", b"HTTP/2")
        self.assertEqual(request.code, 401)
        self.assertTrue(request.finished)

    def test_oversized_body_dropped(self):
        """A Content-Length over the limit is refused at once: no chunk is kept and the answer is a 413."""
        request = self.request({b"authorization": b"Bearer hskey-api-abcdefghijkl-" + b"A" * 43})
        request.gotLength(MAX_BODY_BYTES + 1)
        request.handleContentChunk(b"x" * 1000)
        self.assertEqual(request.body_bytes, 0)
        request.requestReceived(b"POST", b"/api/v1/user", b"HTTP/2")
        self.assertEqual(request.code, 413)
