# -*- test-case-name: tests.web.test_public_pages -*-
"""Tests for Headscale's small public routes: /version, /robots.txt, /apple, /windows, /verify."""

import json
import plistlib
import uuid

from treq.testing import StubTreq
from twisted.trial import unittest
from twisted.web.resource import Resource

from headscale_tw.version import HEADSCALE_VERSION, version_info
from headscale_tw.web.public_pages import APPLE_PAYLOAD_TYPES, VERIFY_BODY_LIMIT, mount_public_pages

__all__ = ["VersionTests", "PagesTests", "AppleProfileTests", "VerifyTests"]

URL = "https://hs.example.com"
KNOWN = "nodekey:" + "ab" * 32
UNKNOWN = "nodekey:" + "cd" * 32


class _Client:
    """A root with the public pages mounted, reached through StubTreq."""

    def __init__(self, testcase):
        self.testcase = testcase
        self.asked = []
        root = Resource()
        mount_public_pages(root, URL, self._is_registered)
        self.treq = StubTreq(root)

    def _is_registered(self, node_key):
        self.asked.append(node_key)
        return node_key == KNOWN

    def request(self, method, path, body=None):
        """``(status, headers, body bytes)`` of one request."""
        response = self.testcase.successResultOf(
            self.treq.request(method, "http://hs.example.com" + path, data=body)
        )
        content = self.testcase.successResultOf(response.content())
        return response.code, response.headers, content


class VersionTests(unittest.TestCase):
    """``GET /version`` answers as Headscale 0.29 does."""

    def test_shape(self):
        """The JSON has Headscale's keys and reports the Headscale version whose API we match."""
        status, headers, body = _Client(self).request("GET", "/version")
        self.assertEqual(status, 200)
        self.assertEqual(headers.getRawHeaders("content-type"), ["application/json"])
        value = json.loads(body)
        self.assertEqual(set(value), {"version", "commit", "buildTime", "go", "dirty"})
        self.assertEqual(set(value["go"]), {"version", "os", "arch"})
        self.assertEqual(value["version"], HEADSCALE_VERSION)
        self.assertIs(value["dirty"], False)

    def test_headplane_reads_modern_shapes(self):
        """The version parses as Headplane's semver and is at least 0.28, so Headplane uses current shapes."""
        raw = version_info()["version"]
        self.assertRegex(raw, r"^v\d+\.\d+\.\d+$")
        major, minor, _patch = (int(p) for p in raw[1:].split("."))
        self.assertGreaterEqual((major, minor), (0, 28))


class PagesTests(unittest.TestCase):
    """``/robots.txt``, ``/apple`` and ``/windows`` are served like Headscale's."""

    def test_robots(self):
        """robots.txt disallows everything, as plain text."""
        status, headers, body = _Client(self).request("GET", "/robots.txt")
        self.assertEqual((status, body), (200, b"User-agent: *\nDisallow: /"))
        self.assertEqual(headers.getRawHeaders("content-type"), ["text/plain"])

    def test_apple_and_windows_pages(self):
        """The Apple and Windows pages are HTML naming this server's URL; Apple's links every profile."""
        client = _Client(self)
        status, headers, body = client.request("GET", "/apple")
        self.assertEqual(status, 200)
        self.assertEqual(headers.getRawHeaders("content-type"), ["text/html; charset=utf-8"])
        self.assertIn(URL.encode(), body)
        for platform in APPLE_PAYLOAD_TYPES:
            self.assertIn(f'href="/apple/{platform}"'.encode(), body)
        status, headers, body = client.request("GET", "/windows")
        self.assertEqual(status, 200)
        self.assertIn(b"tailscale login --login-server " + URL.encode(), body)

    def test_url_escaped(self):
        """A server URL with markup in it is escaped in the pages."""
        root = Resource()
        mount_public_pages(root, "https://x/<b>", lambda key: False)
        response = self.successResultOf(StubTreq(root).get("http://x/windows"))
        body = self.successResultOf(response.content())
        self.assertNotIn(b"<b>", body)
        self.assertIn(b"&lt;b&gt;", body)


class AppleProfileTests(unittest.TestCase):
    """``GET /apple/<platform>`` serves a configuration profile for that platform's app."""

    def test_each_platform(self):
        """Each platform's profile is a plist whose payload sets the app's ControlURL to this server."""
        client = _Client(self)
        for platform, payload_type in APPLE_PAYLOAD_TYPES.items():
            status, headers, body = client.request("GET", f"/apple/{platform}")
            self.assertEqual(status, 200, platform)
            self.assertEqual(headers.getRawHeaders("content-type"),
                             ["application/x-apple-aspen-config; charset=utf-8"])
            profile = plistlib.loads(body)
            self.assertEqual(profile["PayloadType"], "Configuration")
            (content,) = profile["PayloadContent"]
            self.assertEqual((content["PayloadType"], content["ControlURL"]), (payload_type, URL))
            self.assertNotEqual(profile["PayloadUUID"], content["PayloadUUID"])
            uuid.UUID(profile["PayloadUUID"])

    def test_unknown_platform(self):
        """An unknown platform is a 400 listing the platforms there are."""
        status, _headers, body = _Client(self).request("GET", "/apple/android")
        self.assertEqual(status, 400)
        self.assertIn(b"macos-standalone", body)


class VerifyTests(unittest.TestCase):
    """``POST /verify`` admits exactly the node keys of registered nodes."""

    def _verify(self, client, value):
        body = value if isinstance(value, bytes) else json.dumps(value).encode()
        return client.request("POST", "/verify", body)

    def test_registered_allowed(self):
        """A registered node's key is allowed; the key is looked up in its canonical lower-case form."""
        client = _Client(self)
        status, headers, body = self._verify(client, {"NodePublic": KNOWN.upper().replace("NODEKEY", "nodekey"),
                                                      "Source": "192.0.2.1"})
        self.assertEqual((status, json.loads(body)), (200, {"Allow": True}))
        self.assertEqual(headers.getRawHeaders("content-type"), ["application/json"])
        self.assertEqual(client.asked, [KNOWN])

    def test_unknown_refused(self):
        """An unknown node key, or none at all, is answered ``Allow: false``."""
        client = _Client(self)
        for value in ({"NodePublic": UNKNOWN}, {}, {"NodePublic": ""}):
            status, _headers, body = self._verify(client, value)
            self.assertEqual((status, json.loads(body)), (200, {"Allow": False}), value)

    def test_bad_bodies(self):
        """Bodies that are not JSON objects, or a NodePublic that is not a node key, get 400 naming the problem."""
        client = _Client(self)
        for value, words in [(b"{nope", b"not JSON"), ([1], b"JSON object"),
                             ({"NodePublic": 7}, b"NodePublic"), ({"NodePublic": "mkey:" + "0" * 64}, b"NodePublic")]:
            status, _headers, body = self._verify(client, value)
            self.assertEqual(status, 400, value)
            self.assertIn(words, body)
        self.assertEqual(client.asked, [])

    def test_too_large(self):
        """A body over the limit is refused with 413 before any lookup."""
        client = _Client(self)
        status, _headers, body = self._verify(client, b" " * (VERIFY_BODY_LIMIT + 1))
        self.assertEqual(status, 413)
        self.assertIn(str(VERIFY_BODY_LIMIT).encode(), body)
        self.assertEqual(client.asked, [])

    def test_get_not_allowed(self):
        """GET /verify is not a verification: 405."""
        status, _headers, _body = _Client(self).request("GET", "/verify")
        self.assertEqual(status, 405)
