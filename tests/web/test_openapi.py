# -*- test-case-name: tests.web.test_openapi -*-
"""Tests for the ``/api/v1`` OpenAPI document and the ``/swagger`` resources that serve it."""

from __future__ import annotations

import json
import os
import re
from html.parser import HTMLParser

import schemathesis
from treq.testing import StubTreq
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial import unittest
from twisted.web.resource import Resource

from headscale_tw.config.model import Config, DerpConfig, NoiseConfig
from headscale_tw.keys import MachinePrivate
from headscale_tw.service import _build_on_database
from headscale_tw.testing.db import open_test_database
from headscale_tw.web.admin_api import AdminAPI
from headscale_tw.web.openapi import document, document_bytes, operations
from headscale_tw.web.swagger import DOCUMENT_PATH, swagger_resource

__all__ = ["DocumentTests", "SwaggerResourceTests", "ServiceMountTests"]


def _klein_routes() -> set[tuple[str, str]]:
    """``(METHOD, path)`` of every route of the admin API, with ``{}`` for each variable part."""
    routes = set()
    for rule in AdminAPI.app.url_map.iter_rules():
        if rule.rule in ("/", "/<path:__rest__>"):
            continue  # the catch-all 404
        path = "/api" + re.sub(r"<[^>]+>", "{}", rule.rule)
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            routes.add((method, path))
    return routes


class DocumentTests(unittest.TestCase):
    """The document is Swagger 2.0, as Headscale's, and describes exactly the routes we serve."""

    def test_swagger_2_and_valid(self):
        """The document says ``swagger: "2.0"`` and validates against the Swagger 2.0 schema."""
        doc = document()
        self.assertEqual(doc["swagger"], "2.0")
        self.assertNotIn("openapi", doc)
        schemathesis.openapi.from_dict(doc).validate()

    def test_every_route_documented(self):
        """Each route of ``AdminAPI`` has an operation, and each operation a route."""
        documented = {(method, re.sub(r"\{[^}]+\}", "{}", path)) for method, path, _ in operations()}
        self.assertEqual(documented, _klein_routes())

    def test_headscale_conventions(self):
        """Paths start at ``/api/v1``; operation ids are ``HeadscaleService_*`` and unique; each answers
        ``200`` and an ``rpcStatus`` by ``default``."""
        doc = document()
        ids = []
        for path, ops in doc["paths"].items():
            self.assertTrue(path.startswith("/api/v1/"), path)
            for op in ops.values():
                ids.append(op["operationId"])
                self.assertTrue(op["operationId"].startswith("HeadscaleService_"))
                self.assertEqual(op["responses"]["default"]["schema"], {"$ref": "#/definitions/rpcStatus"})
                self.assertIn("200", op["responses"])
        self.assertEqual(len(ids), len(set(ids)))

    def test_ids_are_strings_and_times_rfc3339(self):
        """Every id field is a ``uint64`` string and every time a nullable ``date-time`` string."""
        definitions = document()["definitions"]
        for name in ("v1User", "v1Node", "v1PreAuthKey", "v1ApiKey"):
            props = definitions[name]["properties"]
            self.assertEqual(props["id"], {"type": "string", "format": "uint64"}, name)
            for field in ("createdAt",):
                self.assertEqual(props[field], {"type": "string", "format": "date-time", "x-nullable": True})
        self.assertEqual(set(definitions["rpcStatus"]["properties"]), {"code", "message", "details"})

    def test_document_is_a_fresh_copy(self):
        """Changing a returned document changes neither later copies nor the served bytes."""
        served = document_bytes()
        doc = document()
        doc["paths"].clear()
        self.assertTrue(document()["paths"])
        self.assertEqual(json.loads(served), document())


class _Links(HTMLParser):
    """Collects every URL-bearing attribute and tag name of a page."""

    def __init__(self):
        super().__init__()
        self.urls, self.tags = [], set()

    def handle_starttag(self, tag, attrs):
        self.tags.add(tag)
        self.urls.extend(value for name, value in attrs if name in ("href", "src", "action"))


class SwaggerResourceTests(unittest.TestCase):
    """``/swagger`` and ``/swagger/v1/openapiv2.json`` as Headscale serves them, without authentication."""

    def setUp(self):
        root = Resource()
        root.putChild(b"swagger", swagger_resource())
        self.treq = StubTreq(root)

    def get(self, path, method="GET"):
        """``(status, headers, body)`` of one request."""
        response = self.successResultOf(self.treq.request(method, "http://headscale.test" + path))
        return response.code, response.headers, self.successResultOf(self.treq.content(response))

    def test_document(self):
        """The JSON document is served at Headscale's path with Headscale's content type."""
        status, headers, body = self.get(DOCUMENT_PATH)
        self.assertEqual(status, 200)
        self.assertEqual(headers.getRawHeaders(b"content-type"), [b"application/json; charset=utf-8"])
        self.assertEqual(json.loads(body), document())

    def test_page_lists_operations_and_links_document(self):
        """The page names every operation and links the document, and fetches nothing from elsewhere."""
        for path in ("/swagger", "/swagger/"):
            status, headers, body = self.get(path)
            self.assertEqual(status, 200)
            self.assertEqual(headers.getRawHeaders(b"content-type"), [b"text/html; charset=utf-8"])
            page = body.decode("utf-8")
            for method, api_path, _ in operations():
                self.assertIn(api_path, page)
            links = _Links()
            links.feed(page)
            self.assertEqual(links.urls, [DOCUMENT_PATH])
            self.assertNotIn("script", links.tags)
            self.assertNotIn("//", page.replace(DOCUMENT_PATH, ""))

    def test_head_and_other_methods(self):
        """``HEAD`` gets the headers without a body; ``POST`` gets 405."""
        status, headers, body = self.get(DOCUMENT_PATH, "HEAD")
        self.assertEqual((status, body), (200, b""))
        self.assertEqual(headers.getRawHeaders(b"content-length"), [b"%d" % len(document_bytes())])
        self.assertEqual(self.get(DOCUMENT_PATH, "POST")[0], 405)
        self.assertEqual(self.get("/swagger", "DELETE")[0], 405)

    def test_unknown_paths(self):
        """Anything else below ``/swagger`` is a 404."""
        for path in ("/swagger/v2/openapiv2.json", "/swagger/v1", "/swagger/v1/openapiv2.json/x", "/swagger/x"):
            self.assertEqual(self.get(path)[0], 404, path)


class ServiceMountTests(unittest.TestCase):
    """The service's root serves ``/swagger`` next to ``/api``."""

    def test_root_serves_document(self):
        """The root built by the service answers the document at Headscale's path, without an API key."""
        tmp = self.mktemp()
        os.makedirs(tmp)
        config = Config(server_url="http://headscale.test", unix_socket="", metrics_listen_addr="",
                        noise=NoiseConfig(private_key_path=os.path.join(tmp, "noise.key")),
                        derp=DerpConfig(urls=(), paths=()))
        clock = Clock()
        components = self.successResultOf(Deferred.fromCoroutine(
            _build_on_database(config, clock, open_test_database(self), MachinePrivate.generate(), None)))
        self.addCleanup(components.plane.stop)
        treq = StubTreq(components.root)
        response = self.successResultOf(treq.get("http://headscale.test" + DOCUMENT_PATH))
        self.assertEqual(response.code, 200)
        self.assertEqual(self.successResultOf(treq.content(response)), document_bytes())
