"""Tests for headscale_tw.web.key (GET /key)."""

import json

from treq.testing import StubTreq
from twisted.trial import unittest
from twisted.web import resource

from headscale_tw.keys import MachinePrivate
from headscale_tw.web.key import KeyResource


class KeyResourceTests(unittest.TestCase):
    """GET /key?v=N answers the Noise public key as JSON."""

    def setUp(self):
        self.key = MachinePrivate.generate()
        root = resource.Resource()
        root.putChild(b"key", KeyResource(self.key.public()))
        self.treq = StubTreq(root)

    def _get(self, url):
        response = self.successResultOf(self.treq.get(url))
        body = self.successResultOf(response.content())
        return response, body

    def test_json(self):
        """v=133 gets exactly the two keys, the legacy one zero, as application/json."""
        response, body = self._get("http://a/key?v=133")
        self.assertEqual(response.code, 200)
        self.assertEqual(response.headers.getRawHeaders(b"content-type"), [b"application/json"])
        self.assertEqual(
            body,
            b'{"legacyPublicKey":"mkey:' + b"0" * 64 + b'","publicKey":"'
            + self.key.public().text.encode() + b'"}',
        )
        self.assertEqual(json.loads(body)["publicKey"], self.key.public().text)

    def test_threshold(self):
        """v=39 is the first version answered with JSON; v=38 gets a 400 explaining why."""
        self.assertEqual(self._get("http://a/key?v=39")[0].code, 200)
        response, body = self._get("http://a/key?v=38")
        self.assertEqual(response.code, 400)
        self.assertIn(b"predates the Noise protocol", body)

    def test_bad_version(self):
        """A missing or non-numeric v is a 400 naming the problem."""
        response, body = self._get("http://a/key")
        self.assertEqual(response.code, 400)
        self.assertIn(b"must be set", body)
        response, body = self._get("http://a/key?v=abc")
        self.assertEqual(response.code, 400)
        self.assertIn(b"invalid capability version", body)
